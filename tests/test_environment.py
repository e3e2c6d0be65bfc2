"""The services the suite needs are really there (so a storage test can never skip in CI)."""

from __future__ import annotations

import sqlalchemy


def test_postgres_found_or_started_answers(postgres_admin_url):
    """`HPO_TEST_POSTGRES_URL`, else a throwaway cluster; in CI the fixture fails, never
    skips, when there is neither."""
    engine = sqlalchemy.create_engine(postgres_admin_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("select 1")).scalar() == 1
    finally:
        engine.dispose()
