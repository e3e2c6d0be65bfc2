"""Questions a worker asks of a study several times a trial, each one query on Optuna's tables.

Optuna's public storage answers them by loading every trial (`get_all_trials`); a claim asks
"how many trials per state" once per trial. Both answers are given here, the adapter's query
and, with the adapter off, Optuna's public way.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy

from hpo.storage.optuna_adapter import adapter_active


def count_trials(
    storage: optuna.storages.RDBStorage,
    study_id: int,
    connection: sqlalchemy.Connection | None = None,
    *,
    adapter: bool | None = None,
) -> dict[str, int]:
    """Trials per state name ("COMPLETE", "RUNNING", ...).

    One query, on `connection` if given (a claim counts on the connection that holds its
    lock, saving a checkout and its health check); with the adapter off (`adapter`, else the
    process's setting), Optuna's own `get_all_trials`.
    """
    if not (adapter_active() if adapter is None else adapter):
        trials = storage.get_all_trials(study_id, deepcopy=False)
        return dict(Counter(trial.state.name for trial in trials))
    statement = sqlalchemy.text(
        "SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id GROUP BY state"
    )
    if connection is not None:
        rows = connection.execute(statement, {"study_id": study_id}).all()
    else:
        with storage.engine.connect() as connection:
            rows = connection.execute(statement, {"study_id": study_id}).all()
    return {str(getattr(state, "name", state)): int(n) for state, n in rows}


def orphaned_trial_ids(
    storage: optuna.storages.RDBStorage,
    study_id: int,
    grace_period: int,
    *,
    adapter: bool | None = None,
) -> list[int]:
    """RUNNING trials that never sent a heartbeat and started over `grace_period` s ago.

    Optuna only declares a trial stale from its last heartbeat, so a worker killed between
    creating a trial and its first heartbeat would leave it RUNNING forever. Start times are
    the creating worker's local `datetime.now()`, as Optuna writes them. Optuna's public API
    does not show heartbeats: with the adapter off, no trial is found (Optuna's behaviour).
    """
    if not (adapter_active() if adapter is None else adapter):
        return []
    statement = sqlalchemy.text(
        "SELECT t.trial_id, t.datetime_start FROM trials t "
        "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL"
    )
    with storage.engine.connect() as connection:
        rows = connection.execute(statement, {"study_id": study_id}).all()
    now = datetime.now()
    return [
        trial_id
        for trial_id, started in rows
        if started is not None and (now - _as_datetime(started)).total_seconds() > grace_period
    ]


def _as_datetime(value: Any) -> datetime:
    """Raw SQL returns SQLite's DATETIME columns as text, PostgreSQL's as datetimes."""
    value = datetime.fromisoformat(value) if isinstance(value, str) else value
    return value.replace(tzinfo=None)
