"""The services CI provides are really there (so a storage test can never skip in CI)."""

from __future__ import annotations

import os

import pytest
import sqlalchemy


def test_postgres_from_the_documented_variable_answers():
    url = os.environ.get("HPO_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must export HPO_TEST_POSTGRES_URL (see .ci/run)")
        pytest.skip("HPO_TEST_POSTGRES_URL is not set")
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("select 1")).scalar() == 1
    finally:
        engine.dispose()
