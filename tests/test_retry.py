"""Which storage errors are retried, and how: the parts of `hpo.storage.retry` a restart test
cannot pin down (the end-to-end behaviour is in test_faults.py, against a real restarted
server)."""

from __future__ import annotations

import logging
import time

import optuna
import pytest
import sqlalchemy
from optuna.storages._heartbeat import is_heartbeat_enabled
from sqlalchemy.exc import IntegrityError, OperationalError

from hpo.storage.retry import (
    Backoff,
    Outages,
    RetryingStorage,
    StorageUnreachable,
    call_with_retry,
    is_transient,
)


def _operational(message: str = "server closed the connection unexpectedly") -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception(message))


def _wrapped(error: Exception) -> optuna.exceptions.StorageInternalError:
    """As Optuna raises it: `raise StorageInternalError(...) from error`."""
    try:
        raise optuna.exceptions.StorageInternalError("during the commit") from error
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_operational(), True),
        (_wrapped(_operational()), True),
        (_wrapped(IntegrityError("INSERT", {}, Exception("duplicate key"))), False),
        (optuna.exceptions.UpdateFinishedTrialError("finished"), False),
        (ValueError("bad"), False),
    ],
)
def test_only_connection_errors_are_transient(error, transient):
    assert is_transient(error) is transient


def test_a_transient_error_is_retried_until_the_call_succeeds(caplog):
    failures = [_wrapped(_operational()), _operational()]

    def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="hpo.storage.retry"):
        assert call_with_retry(flaky, what="the test database") == "done"
    assert 1.5 <= time.monotonic() - started < 5  # waited 0.5 s, then 1 s
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # one line when it starts, one when it ends
    assert "the test database is unreachable (server closed the connection" in messages[0]
    assert "the test database is reachable again after" in messages[1]


def test_other_errors_pass_through_at_once():
    calls = []

    def broken() -> None:
        calls.append(1)
        raise _wrapped(IntegrityError("INSERT", {}, Exception("duplicate key")))

    with pytest.raises(optuna.exceptions.StorageInternalError):
        call_with_retry(broken)
    assert calls == [1]


def test_patience_runs_out_with_one_error_that_says_how_long_and_what_to_do():
    backoff = Backoff(patience=1.0, what="the storage sqlite:///x.db")
    error = _operational()
    backoff.wait(error)  # 0.5 s
    with pytest.raises(StorageUnreachable) as raised:
        backoff.wait(error)  # another 1 s would pass the patience
    assert raised.value.__cause__ is error
    assert not is_transient(raised.value)  # nothing retries it again
    assert str(raised.value).startswith("the storage sqlite:///x.db was unreachable for 1 s")
    assert "run the same command to resume" in str(raised.value)


def test_sweeps_wait_a_grace_period_after_an_outage():
    outages = Outages()
    assert outages.settled(grace_period=60)  # never down
    outages.unreachable()
    assert outages.down
    assert not outages.settled(grace_period=0)
    outages.reachable()
    assert not outages.settled(grace_period=60)
    assert outages.settled(grace_period=0)


def test_the_retrying_storage_is_a_full_optuna_storage(tmp_path):
    """Optuna drives it as any storage: create, ask, tell, heartbeat, stale-trial checks."""
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        rdb = optuna.storages.RDBStorage(
            f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=2
        )
    storage = RetryingStorage(optuna.storages._cached_storage._CachedStorage(rdb))
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert is_heartbeat_enabled(storage)
    assert storage.get_heartbeat_interval() == 1
    with storage.suspended():
        assert storage._get_stale_trial_ids(study._study_id) == []
    rdb.engine.dispose()


def test_a_retried_finish_that_had_committed_counts_as_done(tmp_path):
    """The try that lost its connection may have committed; the retry then finds the trial
    finished, which is the outcome that was asked for."""
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    storage = RetryingStorage(rdb)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    lost = {"once": True}
    original = rdb.set_trial_state_values

    def commit_then_lose_the_connection(trial_id, state, values=None):
        result = original(trial_id, state, values)
        if lost.pop("once", False):
            raise _wrapped(_operational())
        return result

    rdb.set_trial_state_values = commit_then_lose_the_connection
    assert storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.COMPLETE, [1])
    assert storage.get_trial(trial._trial_id).state.name == "COMPLETE"
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # not retried: a real error
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    rdb.engine.dispose()


def test_sqlite_errors_are_transient_only_when_the_database_is_locked(tmp_path):
    path = tmp_path / "s.db"
    holder = sqlalchemy.create_engine(f"sqlite:///{path}")
    waiter = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    with holder.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        connection.commit()
        connection.exec_driver_sql("BEGIN EXCLUSIVE")
        with pytest.raises(OperationalError) as locked, waiter.connect() as other:
            other.exec_driver_sql("INSERT INTO t VALUES (1)")
        connection.rollback()
    assert "database is locked" in str(locked.value)
    assert is_transient(locked.value)
    with pytest.raises(OperationalError) as missing, waiter.connect() as other:
        other.exec_driver_sql("SELECT * FROM no_such_table")
    assert not is_transient(missing.value)
    holder.dispose()
    waiter.dispose()


def test_postgres_errors_are_transient_by_their_sqlstate(fresh_postgres_url):
    engine = sqlalchemy.create_engine(fresh_postgres_url)
    with pytest.raises(sqlalchemy.exc.DBAPIError) as missing, engine.connect() as connection:
        connection.exec_driver_sql("SELECT * FROM no_such_table")
    assert not is_transient(missing.value)  # 42P01: undefined table
    with pytest.raises(OperationalError) as killed, engine.connect() as connection:
        connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
    assert is_transient(killed.value)  # the server closed this very connection
    engine.dispose()
