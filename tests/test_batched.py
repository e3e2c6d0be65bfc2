"""A running trial's writes in two transactions (hpo.storage.batched), on SQLite and PostgreSQL.

What is stored must be what Optuna's own writes store, the parameters and seed must be in the
database before training starts (a dead worker's retry needs them), and a flush must neither
overwrite a trial that another worker ended nor write twice.
"""

from __future__ import annotations

import os
import socket

import optuna
import pytest
import sqlalchemy
from _stored import stored_trials, tpe_study, trial_record
from optuna.trial import TrialState

from hpo.engine.launch import build_objective
from hpo.engine.worker import Worker
from hpo.spec.data import load_splits
from hpo.spec.study_file import load_study_file
from hpo.storage.database import open_storage, resolve_storage
from hpo.storage.optuna_adapter.batched import _Pending
from hpo.storage.studies import join_study, prepare_study


@pytest.fixture
def spec(tiny_study_file):
    # Some trials are pruned, so reported values are stored too.
    extra = "n_warmup_steps = 1\nn_startup_trials = 1\n"
    return load_study_file(tiny_study_file(n_trials=6, epochs=4, pruner="median", extra=extra))


@pytest.fixture
def tpe_spec(tiny_study_file):
    return tpe_study(tiny_study_file, n_trials=5, epochs=2)


def _run(url: str, spec, *, batched: bool = True, observers=()) -> Worker:
    settings = resolve_storage(url)
    prepare_study(settings, spec)
    joined = join_study(settings, spec, worker_index=0)
    joined.batched.enabled = batched
    splits = load_splits(spec.data, seed=spec.study.seed)
    objective = build_objective(joined, spec, splits, observers=observers)
    worker = Worker(joined, settings, objective, n_trials=spec.study.n_trials)
    worker.run()
    return worker


def test_batched_trials_are_stored_as_optuna_stores_them(storage_url, spec, tmp_path):
    _run(storage_url, spec)
    plain = f"sqlite:///{tmp_path / 'plain.db'}"
    _run(plain, spec, batched=False)
    batched, unbatched = stored_trials(storage_url, "tiny"), stored_trials(plain, "tiny")
    assert [trial_record(t) for t in batched] == [trial_record(t) for t in unbatched]
    assert len(batched) == 6
    assert {t.state for t in batched} == {TrialState.COMPLETE, TrialState.PRUNED}
    assert all(t.user_attrs["history"]["val_acc"] and "seed" in t.user_attrs for t in batched)


def test_tpe_samples_the_same_trials_batched(storage_url, tpe_spec, tmp_path):
    """TPE's reads while a trial is sampled are answered from one read of the study: it
    must sample what it samples from Optuna's own storage, and its notes must be kept."""
    _run(storage_url, tpe_spec)
    plain = f"sqlite:///{tmp_path / 'plain.db'}"
    _run(plain, tpe_spec, batched=False)
    batched, unbatched = stored_trials(storage_url, "tiny"), stored_trials(plain, "tiny")
    assert [trial_record(t) for t in batched] == [trial_record(t) for t in unbatched]
    relative = [t.number for t in batched if any(k.startswith("tpe:") for k in t.system_attrs)]
    assert relative == [2, 3, 4]


def test_parameters_seed_and_worker_are_in_the_database_when_training_starts(storage_url, spec):
    seen = {}

    class Peek:
        """An observer after FlushAtStart: what would a retry find if the worker died now?"""

        def trial_started(self, trial, seed):
            stored = stored_trials(storage_url, "tiny")[trial.number]
            attrs = stored.user_attrs
            seen[trial.number] = (
                stored.state,
                stored.params,
                attrs.get("seed"),
                attrs.get("worker"),
            )

        def epoch_ended(self, trial, epoch, metrics):
            pass

        def trial_ending(self, trial):
            pass

    worker = _run(storage_url, spec, observers=(Peek(),))
    finished = worker.study.get_trials()
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert seen == {
        t.number: (TrialState.RUNNING, t.params, t.user_attrs["seed"], here) for t in finished
    }
    assert all(params for _, params, _, _ in seen.values())


def test_a_samplers_notes_are_in_the_database_when_training_starts(storage_url, tpe_spec):
    """System attributes set while sampling are written with the parameters: a retry of
    the trial copies them."""
    seen = {}

    class Peek:
        def trial_started(self, trial, seed):
            seen[trial.number] = stored_trials(storage_url, "tiny")[trial.number].system_attrs

        def epoch_ended(self, trial, epoch, metrics):
            pass

        def trial_ending(self, trial):
            pass

    worker = _run(storage_url, tpe_spec, observers=(Peek(),))
    finished = {t.number: t.system_attrs for t in worker.study.get_trials()}
    assert seen == finished
    assert all(any(k.startswith("tpe:") for k in seen[n]) for n in (2, 3, 4))


def test_a_tpe_trial_reads_the_study_once_while_sampled(tmp_path, tpe_spec):
    """TPE reads the study's trials twice per trial (its search space, then its model); one
    read of the storage answers both."""
    url = f"sqlite:///{tmp_path / 'reads.db'}"
    settings = resolve_storage(url)
    prepare_study(settings, tpe_spec)
    joined = join_study(settings, tpe_spec, worker_index=0)
    splits = load_splits(tpe_spec.data, seed=tpe_spec.study.seed)
    objective = build_objective(joined, tpe_spec, splits)
    worker = Worker(joined, settings, objective, n_trials=3)
    worker.run()
    reads = []
    sqlalchemy.event.listen(
        joined.storage.engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: (
            reads.append(statement)
            if statement.lstrip().startswith("SELECT") and "FROM trial_params" in statement
            else None
        ),
    )
    worker.n_trials = 4
    worker.run()
    assert len(reads) == 1, "\n".join(reads)


def _asked(storage_url, spec):
    settings = resolve_storage(storage_url)
    prepare_study(settings, spec)
    joined = join_study(settings, spec, worker_index=0)
    trial = joined.study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr("seed", 7)
    return joined, trial


def test_a_flush_repeated_after_its_commit_writes_nothing_twice(storage_url, spec):
    joined, trial = _asked(storage_url, spec)
    pending = joined.batched._pending[trial._trial_id]
    again = _Pending(dict(pending.params), dict(pending.user_attrs))
    joined.retrying.flush_trial(trial._trial_id)
    joined.batched._write(trial._trial_id, again)  # as a retry whose lost try had committed
    engine = joined.storage.engine
    with engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text("SELECT COUNT(*) FROM trial_params WHERE trial_id = :id"),
            {"id": trial._trial_id},
        ).scalar()
    assert rows == 1
    assert stored_trials(storage_url, "tiny")[0].params == trial.params


def test_a_trial_ended_elsewhere_is_not_overwritten(storage_url, spec):
    joined, trial = _asked(storage_url, spec)
    other = open_storage(resolve_storage(storage_url), heartbeat=False)
    other.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # failed as stale
    other.engine.dispose()
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        joined.study.tell(trial, 0.5)
    stored = stored_trials(storage_url, "tiny")[0]
    assert (stored.state, stored.values) == (TrialState.FAIL, None)
    assert joined.retrying.get_trial(trial._trial_id).state == TrialState.FAIL


def test_a_waiting_trial_is_taken_before_new_ones(storage_url, spec):
    settings = resolve_storage(storage_url)
    prepare_study(settings, spec)
    study = optuna.load_study(study_name="tiny", storage=open_storage(settings, heartbeat=False))
    study.enqueue_trial({"lr": 0.0123})
    worker = _run(storage_url, spec)
    trials = worker.study.get_trials()
    assert trials[0].params == {"lr": 0.0123}
    assert len(trials) == 6
    assert len({t.params["lr"] for t in trials}) == 6


def test_a_trial_takes_few_statements(tmp_path, spec):
    """The batching is in force: an Optuna upgrade that bypassed it would show here. Counted
    by SQLite itself, so statements sent past SQLAlchemy count too."""
    url = f"sqlite:///{tmp_path / 'count.db'}"
    settings = resolve_storage(url)
    prepare_study(settings, spec)
    joined = join_study(settings, spec, worker_index=0)
    splits = load_splits(spec.data, seed=spec.study.seed)
    worker = Worker(joined, settings, build_objective(joined, spec, splits), n_trials=1)
    worker.run()  # the first claim also sweeps for dead workers' trials
    statements = []
    joined.storage.engine.dispose()
    sqlalchemy.event.listen(
        joined.storage.engine,
        "connect",
        lambda connection, _record: connection.set_trace_callback(statements.append),
    )
    worker.n_trials = 2
    worker.run()
    statements = [s for s in statements if not s.startswith("PRAGMA")]  # new connections
    # One trial, BEGIN and COMMIT included, and the count that ends the run: 17 (one of them
    # stores every epoch's value, which optuna-dashboard draws as the learning curve). Unbatched,
    # Optuna's ask, two writes, tell and their read-backs took about 45 without those.
    assert len(statements) <= 17, "\n".join(statements)


def test_a_running_trials_values_are_read_back_before_they_are_written(storage_url, spec):
    """Samplers read back what they set while sampling (GridSampler: its grid id), before the
    start flush writes it."""
    joined, trial = _asked(storage_url, spec)
    storage, trial_id = joined.retrying, trial._trial_id
    storage.set_trial_system_attr(trial_id, "grid_id", 3)
    assert storage.get_trial_system_attrs(trial_id) == {"grid_id": 3}
    assert storage.get_trial_user_attrs(trial_id) == {"seed": 7}
    assert storage.get_trial_params(trial_id) == trial.params
    assert stored_trials(storage_url, "tiny")[0].system_attrs == {}  # not yet in the database
    storage.flush_trial(trial_id)
    assert stored_trials(storage_url, "tiny")[0].system_attrs == {"grid_id": 3}


def _joined_worker(url: str, spec) -> tuple[Worker, object]:
    settings = resolve_storage(url)
    prepare_study(settings, spec)
    joined = join_study(settings, spec, worker_index=0)
    splits = load_splits(spec.data, seed=spec.study.seed)
    objective = build_objective(joined, spec, splits)
    return Worker(joined, settings, objective, n_trials=spec.study.n_trials), joined


@pytest.mark.parametrize("where", ["sampled", "told"])
def test_a_stop_outside_training_leaves_no_trial_running(tmp_path, spec, where):
    """A signal (here its KeyboardInterrupt, raised where the signal would land) can arrive
    after a trial was created but before its worker trains it, or while its end is written:
    the worker still fails the trial on its way out, as it does when training is stopped."""
    url = f"sqlite:///{tmp_path / 'stop.db'}"
    worker, joined = _joined_worker(url, spec)
    calls = {"n": 0}
    if where == "sampled":
        sampler = joined.study.sampler
        infer = sampler.infer_relative_search_space

        def stopped_on_the_second(study, trial):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return infer(study, trial)

        sampler.infer_relative_search_space = stopped_on_the_second
    else:
        write = joined.batched._write

        def stopped_before_the_second_end(trial_id, pending, **ends):
            if ends.get("state") is not None and ends["state"].is_finished():
                calls["n"] += 1
                if calls["n"] == 2:
                    raise KeyboardInterrupt
            return write(trial_id, pending, **ends)

        joined.batched._write = stopped_before_the_second_end
    with pytest.raises(KeyboardInterrupt):
        worker.run()
    states = [t.state for t in stored_trials(url, spec.study.name)]
    assert len(states) == 2, states
    assert states[1] == TrialState.FAIL, states
    assert TrialState.RUNNING not in states
