"""Studies in real storages: a SQLite file and the PostgreSQL server, through one suite."""

from __future__ import annotations

import dataclasses
import time

import optuna
import pytest
from optuna.trial import TrialState

from hpo.engine.launch import run_in_process
from hpo.engine.objective import Objective
from hpo.engine.worker import Worker
from hpo.errors import ConfigError
from hpo.spec.data import load_splits
from hpo.spec.study_file import load_study_file
from hpo.storage.database import (
    StorageSettings,
    StorageUnavailable,
    open_storage,
    resolve_storage,
)
from hpo.storage.optuna_adapter.queries import count_trials
from hpo.storage.studies import join_study, load_existing_study, prepare_study, stored_spec


@pytest.fixture
def spec(tiny_study_file):
    return load_study_file(tiny_study_file(n_trials=5, epochs=3))


def _settings(url: str) -> StorageSettings:
    return resolve_storage(url, environ={"HPO_HEARTBEAT_INTERVAL": "1", "HPO_GRACE_PERIOD": "3"})


def _worker(settings, spec, **kwargs) -> Worker:
    joined = join_study(settings, spec)
    objective = Objective(spec, load_splits(spec.data, seed=spec.study.seed))
    return Worker(joined, settings, objective, n_trials=spec.study.n_trials, **kwargs)


def test_a_study_is_created_once_and_resumed(storage_url, spec):
    settings = _settings(storage_url)
    assert prepare_study(settings, spec) is True
    assert prepare_study(settings, spec) is False
    result = _worker(settings, spec).run()
    assert (result.complete, result.failed, result.stopped_by) == (5, 0, "budget")
    # A second run of the finished study starts nothing.
    assert _worker(settings, spec).run().trials == 0
    study = load_existing_study(settings, "tiny")
    assert sorted(t.number for t in study.trials) == list(range(5))


def test_the_budget_counts_across_runs_and_more_trials_extend_it(storage_url, spec):
    settings = _settings(storage_url)
    prepare_study(settings, spec)
    first = _worker(settings, dataclasses.replace(spec), timeout=None)
    first.n_trials = 2
    assert first.run().complete == 2
    assert _worker(settings, spec).run().complete == 3  # 5 in all
    more = spec.with_overrides(n_trials=7)
    assert _worker(settings, more).run().complete == 2
    assert count_trials(open_storage(settings), _study_id(settings)) == {"COMPLETE": 7}


def _study_id(settings: StorageSettings, name: str = "tiny") -> int:
    return open_storage(settings, heartbeat=False).get_study_id_from_name(name)


def test_a_changed_search_space_is_refused_naming_the_difference(storage_url, spec):
    settings = _settings(storage_url)
    prepare_study(settings, spec)
    text = spec.source_text.replace("low = 1e-4", "low = 1e-5")
    changed = dataclasses.replace(spec, space=load_study_file(_write(spec.path, text)).space)
    with pytest.raises(ConfigError) as error:
        prepare_study(settings, changed)
    message = str(error.value)
    assert "space.lr.attributes.low: the study has 0.0001, the file has 1e-05" in message
    assert "--study-name" in message


def _write(path, text):
    path.write_text(text)
    return path


def test_a_changed_seed_is_refused_because_it_changes_the_split(storage_url, spec):
    settings = _settings(storage_url)
    prepare_study(settings, spec)
    with pytest.raises(ConfigError, match="seed: the study has 1, the file has 2"):
        prepare_study(settings, spec.with_overrides(seed=2))


def test_the_stored_definition_survives_flag_overrides(storage_url, spec):
    settings = _settings(storage_url)
    renamed = spec.with_overrides(study_name="renamed", seed=9)
    prepare_study(settings, renamed)
    stored = stored_spec(load_existing_study(settings, "renamed"))
    assert (stored.study.name, stored.study.seed) == ("renamed", 9)
    assert stored.space == spec.space
    assert stored.base == spec.base


def test_a_missing_study_is_named_with_the_ones_there_are(storage_url, spec):
    settings = _settings(storage_url)
    prepare_study(settings, spec)
    with pytest.raises(ConfigError, match=r"no study named 'nope' .*studies there: tiny"):
        load_existing_study(settings, "nope")


def test_failed_trials_do_not_count_and_a_broken_objective_stops(storage_url, spec):
    settings = _settings(storage_url)
    prepare_study(settings, spec)
    joined = join_study(settings, spec)
    calls = []

    def flaky(trial):
        calls.append(trial.number)
        if len(calls) % 2:
            raise ValueError("odd call")
        return 0.5

    result = Worker(joined, settings, flaky, n_trials=3).run()
    assert (result.complete, result.failed) == (3, 3)
    assert result.errors[0] == "trial 0 failed: ValueError: odd call"

    def broken(trial):
        raise ValueError("always")

    more = Worker(joined, settings, broken, n_trials=10, max_consecutive_failures=4)
    assert (more.run().failed, more.run().stopped_by) == (4, "failures")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")
def test_a_dead_workers_trial_is_failed_and_retried_once_with_its_seed(storage_url, spec):
    settings = _settings(storage_url)
    prepare_study(settings, spec)
    joined = join_study(settings, spec)
    # A worker that claims a trial, starts it, beats once and dies: nothing more is written.
    dead = joined.study.ask()
    dead.suggest_float("lr", 1e-4, 1e-1, log=True)
    dead.set_user_attr("seed", 4242)
    joined.retrying.flush_trial(dead._trial_id)  # as the objective's FlushAtStart does
    joined.storage.record_heartbeat(dead._trial_id)
    time.sleep(settings.grace_period + 1.5)

    seen = []
    worker = _worker(settings, spec, on_trial_end=seen.append)
    worker.run()
    by_number = {t.number: t for t in load_existing_study(settings, "tiny").trials}
    assert by_number[dead.number].state == TrialState.FAIL
    retries = [t for t in seen if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1
    assert retries[0].params == by_number[dead.number].params
    assert retries[0].user_attrs["seed"] == 4242
    counts = count_trials(joined.storage, joined.study_id)
    assert counts == {"COMPLETE": 5, "FAIL": 1}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")
def test_a_trial_that_never_beat_is_recovered_too(storage_url, spec):
    settings = _settings(storage_url)
    prepare_study(settings, spec)
    joined = join_study(settings, spec)
    orphan = joined.study.ask()  # killed between creating the trial and its first heartbeat
    orphan.suggest_float("lr", 1e-4, 1e-1, log=True)
    time.sleep(settings.grace_period + 1.5)
    _worker(settings, spec).run()
    counts = count_trials(joined.storage, joined.study_id)
    assert counts == {"COMPLETE": 5, "FAIL": 1}


def test_an_unreachable_postgres_fails_fast_with_one_line():
    settings = resolve_storage("postgresql+psycopg://nobody@127.0.0.1:1/none")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as error:
        open_storage(settings)
    assert time.monotonic() - started < 10
    assert "cannot open postgresql+psycopg://nobody@127.0.0.1:1/none" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/x", "the backend must be one of ['sqlite', 'postgresql']"),
        ("not a url", "is not a database URL"),
    ],
)
def test_unsupported_storage_urls_are_refused(url, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve_storage(url)


def test_passwords_never_reach_messages():
    settings = resolve_storage("postgresql+psycopg://alice:s3cret@127.0.0.1:1/none")
    assert "s3cret" not in settings.redacted()
    with pytest.raises(StorageUnavailable) as error:
        open_storage(settings)
    assert "s3cret" not in str(error.value)


def test_optuna_sees_the_same_trials_hpo_counts(storage_url, spec):
    settings = _settings(storage_url)
    prepare_study(settings, spec)
    _worker(settings, spec).run()
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    assert all(len(t.user_attrs["history"]["val_acc"]) == 3 for t in study.trials)


def test_every_epoch_is_stored_as_an_intermediate_value_and_the_metric_is_named(
    storage_url, tiny_study_file
):
    """What optuna-dashboard draws: a learning curve per trial (pruned ones to their last
    epoch), and the objective under its own name instead of "Objective 0"."""
    spec = load_study_file(tiny_study_file(
        n_trials=8, epochs=6, pruner="median", extra="n_startup_trials = 2\nn_warmup_steps = 2\n"
    ))  # fmt: skip
    settings = _settings(storage_url)
    prepare_study(settings, spec)
    run_in_process(spec, settings)
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert study.metric_names == ["val_acc"]
    for trial in study.trials:
        history = trial.user_attrs["history"]["val_acc"]
        assert trial.intermediate_values == dict(enumerate(history, start=1)), trial.number
    assert {t.state.name for t in study.trials} == {"COMPLETE", "PRUNED"}


def test_a_lock_whose_connection_dies_under_it_lets_the_first_error_through(fresh_postgres_url):
    """A query on the lock's connection that the server kills (a restart) leaves the
    connection in a failed transaction; releasing the lock must not replace that error, which
    the claim retries as an outage, with one that is not transient (seen in a CI run: a worker
    ended with PendingRollbackError during a PostgreSQL restart)."""
    import sqlalchemy

    from hpo.storage.locks import StorageLock

    settings = resolve_storage(fresh_postgres_url)
    lock = StorageLock(settings, "claim:test", timeout=10, reuse=True)
    admin = sqlalchemy.create_engine(fresh_postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with lock:
            assert lock.connection is not None
            pid = lock.connection.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
            with admin.connect() as connection:
                connection.execute(
                    sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
                )
            with pytest.raises(sqlalchemy.exc.OperationalError):
                lock.connection.execute(sqlalchemy.text("SELECT 1"))
        with lock:  # taken again, on a new connection
            assert lock.connection is not None
            assert lock.connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    finally:
        lock.close()
        admin.dispose()
