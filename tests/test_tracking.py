"""MLflow mirrors studies: against a local sqlite:/// store and a real `mlflow server`."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import optuna
import pytest
from _checks import mlflow_runs
from mlflow import MlflowClient

from hpo.engine.launch import pruning_mirror
from hpo.engine.objective import Objective
from hpo.engine.worker import Worker
from hpo.spec.data import load_splits
from hpo.spec.study_file import load_study_file
from hpo.storage.database import resolve_storage
from hpo.storage.studies import join_study, prepare_study
from hpo.tracking.mirror import Mirror, TrialMirror
from hpo.tracking.runs import RUN_ID_ATTR, TrackingSettings

pytestmark = pytest.mark.slow  # the fast tier: pytest -m 'not slow'

HPO = [sys.executable, "-m", "hpo.cli"]


def _experiment() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


class Saboteur:
    """Makes trial 3 fail in its second epoch, the way a real failure would: mid-training."""

    def trial_started(self, trial, seed):
        pass

    def epoch_ended(self, trial, epoch, metrics):
        if trial.number == 3 and epoch == 2:
            raise RuntimeError("the disk is full")

    def trial_ending(self, trial):
        pass


@pytest.fixture
def study_setup(tiny_study_file, tmp_path, monkeypatch):
    """A digits study with a pruner, run in-process with a tracker, one trial made to fail."""

    monkeypatch.chdir(tmp_path)  # a local store keeps artifacts in ./mlruns

    def run(tracking_uri: str, experiment: str) -> optuna.Study:
        path = tiny_study_file(
            n_trials=8, epochs=6, pruner="median",
            extra="n_startup_trials = 2\nn_warmup_steps = 2\n",
        )  # fmt: skip
        path.write_text(path.read_text().replace("high = 1e-1", "high = 1e20"))
        spec = load_study_file(path)
        settings = resolve_storage(f"sqlite:///{tmp_path / 'study.db'}")
        prepare_study(settings, spec)
        joined = join_study(settings, spec)
        joined.study.enqueue_trial({"lr": 0.01})
        joined.study.enqueue_trial({"lr": 0.02})
        joined.study.enqueue_trial({"lr": 1e20})  # diverges: pruned, with the reason
        joined.study.enqueue_trial({"lr": 0.015})  # made to fail below
        tracking = TrackingSettings(enabled=True, uri=tracking_uri, experiment=experiment)
        mirror = Mirror(tracking, settings, spec)
        mirror.study_ready()
        tracker = TrialMirror(mirror.worker_end(0), run_id_wait=30.0)
        assert tracker.wait_ready(60)  # then every trial waits for its run id
        splits = load_splits(spec.data, seed=spec.study.seed)
        objective = Objective(
            spec, splits, mirror=pruning_mirror(joined, spec), observers=(tracker, Saboteur())
        )
        worker = Worker(
            joined, settings, objective, n_trials=7, on_trial_end=tracker.trial_finished
        )
        worker.run()
        summary = mirror.close(interrupted=False)
        assert summary is not None
        assert "0 runs created, 0 completed, 8 already complete" in summary  # 7 + a failure
        return joined.study

    return run


def test_runs_mirror_trials_state_by_state(study_setup, tracking_uri):
    experiment = _experiment()
    study = study_setup(tracking_uri, experiment)
    parents, children = mlflow_runs(tracking_uri, experiment)
    assert len(parents) == 1
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert sorted(int(r.data.tags["hpo.trial_number"]) for r in children) == sorted(trials)
    # A pruned trial ended as meant: FINISHED, its name and description say it was pruned.
    status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
    assert Counter(r.info.status for r in children) == Counter(
        status[t.state.name] for t in trials.values()
    )
    assert {t.state.name for t in trials.values()} == {"COMPLETE", "PRUNED", "FAIL"}
    client = MlflowClient(tracking_uri=tracking_uri)
    for run in children:
        trial = trials[int(run.data.tags["hpo.trial_number"])]
        # Either side finds the other.
        assert trial.user_attrs.get(RUN_ID_ATTR) == run.info.run_id
        assert run.data.tags["hpo.study"] == study.study_name
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params["trial_number"] == str(trial.number)
        epochs = len((trial.user_attrs.get("history") or {}).get("val_acc", []))
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        if trial.state.name == "PRUNED":
            diverged = trial.user_attrs.get("diverged")
            assert run.data.tags["hpo.diverged"] == ("true" if diverged else "false")
            assert run.data.tags["hpo.pruned_epoch"] == str(
                diverged["epoch"] if diverged else epochs
            )
        if trial.state.name == "FAIL":
            assert run.data.tags["hpo.error"] == "RuntimeError: the disk is full"
        outcome = run.data.tags["hpo.outcome"]
        assert (
            run.info.run_name
            == {
                "complete": f"trial {trial.number}",
                "pruned": f"trial {trial.number} (pruned at epoch {epochs})",
                "diverged": f"trial {trial.number} (diverged at epoch "
                f"{(trial.user_attrs.get('diverged') or {}).get('epoch')})",
                "failed": f"trial {trial.number} (failed)",
            }[outcome]
        )
        expected = {"COMPLETE": {"complete"}, "PRUNED": {"pruned", "diverged"},
                    "FAIL": {"failed"}}[trial.state.name]  # fmt: skip
        assert outcome in expected
        assert run.data.tags["mlflow.note.content"].startswith(
            {"complete": "Trained all", "pruned": "Pruned after epoch", "diverged": "Diverged at",
             "failed": "Failed: RuntimeError"}[outcome]
        )  # fmt: skip
    experiment = client.get_experiment(parents[0].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "Mirror of the hpo study 'tiny' from" in experiment.tags["mlflow.note.content"]
    diverged_runs = {
        int(r.data.tags["hpo.trial_number"])
        for r in children
        if r.data.tags.get("hpo.diverged") == "true"
    }
    assert 2 in diverged_runs  # the enqueued lr = 1e20
    assert diverged_runs == {n for n, t in trials.items() if t.user_attrs.get("diverged")}
    best = client.get_metric_history(parents[0].info.run_id, "best_val_acc")
    assert max(m.value for m in best) == study.best_value


class SlowStart:
    """Holds each trial back after its run is asked for, so that the mirror's periodic flush
    finds the run's params before any of its values."""

    def trial_started(self, trial, seed):
        time.sleep(0.5)

    def epoch_ended(self, trial, epoch, metrics):
        pass

    def trial_ending(self, trial):
        pass


def test_params_reach_the_run_when_a_flush_comes_before_the_first_epoch(
    tiny_study_file, tmp_path, monkeypatch, tracking_uri
):
    monkeypatch.chdir(tmp_path)
    spec = load_study_file(tiny_study_file(n_trials=2, epochs=2))
    settings = resolve_storage(f"sqlite:///{tmp_path / 'study.db'}")
    prepare_study(settings, spec)
    joined = join_study(settings, spec)
    experiment = _experiment()
    mirror = Mirror(
        TrackingSettings(enabled=True, uri=tracking_uri, experiment=experiment),
        settings, spec, flush_interval=0.05,
    )  # fmt: skip
    mirror.study_ready()
    tracker = TrialMirror(mirror.worker_end(0), run_id_wait=30.0)
    assert tracker.wait_ready(60)
    objective = Objective(
        spec, load_splits(spec.data, seed=spec.study.seed), observers=(tracker, SlowStart())
    )
    Worker(joined, settings, objective, n_trials=2, on_trial_end=tracker.trial_finished).run()
    assert mirror.close(interrupted=False) is not None
    _, children = mlflow_runs(tracking_uri, experiment)
    assert len(children) == 2
    for run in children:
        assert set(run.data.params) == {"lr", "trial_number", "seed"}, run.data.params
        assert run.data.params["trial_number"] == run.data.tags["hpo.trial_number"]


def _hpo_run(study_file, storage_url, tracking_uri, experiment, *extra, cwd):
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*HPO, "run", str(study_file), "--storage", storage_url, "--tracking-uri", tracking_uri,
         "--experiment", experiment, "--no-progress", *extra],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_one_parent_run_after_four_workers_start_at_once_and_a_resume(
    mlflow_server, fresh_postgres_url, tiny_study_file, tmp_path
):
    experiment = _experiment()
    study_file = tiny_study_file(n_trials=12, epochs=3)
    workers = [
        _hpo_run(study_file, fresh_postgres_url, mlflow_server.uri, experiment, cwd=tmp_path)
        for _ in range(4)
    ]
    for worker in workers:
        _out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    more = _hpo_run(study_file, fresh_postgres_url, mlflow_server.uri, experiment,
                    "--n-trials", "14", cwd=tmp_path)  # fmt: skip
    _out, err = more.communicate(timeout=300)
    assert more.returncode == 0, err
    parents, children = mlflow_runs(mlflow_server.uri, experiment)
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    numbers = [int(r.data.tags["hpo.trial_number"]) for r in children]
    assert sorted(numbers) == list(range(14))  # one run per trial, none twice
    assert {r.data.tags["hpo.complete"] for r in children} == {"true"}


def test_mlflow_down_mid_study_then_sync_fills_exactly_the_gap(
    tiny_study_file, tmp_path, new_mlflow_server
):
    server = new_mlflow_server()
    server.start()
    experiment = _experiment()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = tiny_study_file(n_trials=14, epochs=40, hidden=128)
    try:
        run = _hpo_run(study_file, storage, server.uri, experiment, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until a few trials are mirrored
            try:
                if len(mlflow_runs(server.uri, experiment)[1]) >= 3:
                    break
            except AssertionError:
                pass
            time.sleep(0.2)
        server.stop()
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert "tiny: 14/14 trials finished" in out
        warnings = [line for line in err.splitlines() if "MLflow" in line]
        assert 1 <= len(warnings) <= 2, err  # not one per trial
        assert "Traceback" not in err, err

        server.start()
        before = {
            int(r.data.tags["hpo.trial_number"]) for r in mlflow_runs(server.uri, experiment)[1]
        }
        sync = subprocess.run(
            [*HPO, "sync-mlflow", "tiny", "--storage", storage, "--tracking-uri", server.uri],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert sync.returncode == 0, sync.stderr
        parents, children = mlflow_runs(server.uri, experiment)
        numbers = sorted(int(r.data.tags["hpo.trial_number"]) for r in children)
        assert numbers == list(range(14))
        assert f"{14 - len(before)} runs created" in sync.stdout
        assert {r.data.tags.get("hpo.complete") for r in children} == {"true"}
        study = optuna.load_study(study_name="tiny", storage=storage)
        client = MlflowClient(tracking_uri=server.uri)
        for run_ in children:
            trial = study.trials[int(run_.data.tags["hpo.trial_number"])]
            steps = [m.step for m in client.get_metric_history(run_.info.run_id, "val_acc")]
            assert sorted(steps) == list(range(1, len(trial.user_attrs["history"]["val_acc"]) + 1))
        again = subprocess.run(
            [*HPO, "sync-mlflow", "tiny", "--storage", storage, "--tracking-uri", server.uri],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert "0 runs created, 0 completed, 14 already complete" in again.stdout
        assert len(mlflow_runs(server.uri, experiment)[1]) == 14
        assert len(parents) == 1
    finally:
        server.stop()


def test_an_unreachable_server_from_the_start_costs_one_warning(tiny_study_file, tmp_path):
    experiment = _experiment()
    study_file = tiny_study_file(n_trials=6, epochs=3)
    run = _hpo_run(study_file, f"sqlite:///{tmp_path / 's.db'}", "http://127.0.0.1:9",
                   experiment, cwd=tmp_path)  # fmt: skip
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "tiny: 6/6 trials finished" in out
    warnings = [line for line in err.splitlines() if "MLflow" in line]
    assert 1 <= len(warnings) <= 2, err
    assert "hpo sync-mlflow tiny" in err
    assert "Traceback" not in err


# -- the mirror under concurrency, and a tracking server that never answers -------------------


def _run_in(cwd, *args, env=None, timeout=300):
    return subprocess.run(
        [*HPO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
        env=(env or os.environ) | {"OPENBLAS_NUM_THREADS": "1"},
    )  # fmt: skip


def _without_tracking_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HPO_STORAGE")}


def test_workers_and_runs_started_together_share_the_default_store(tiny_study_file, tmp_path):
    """`--workers 3` and two more `hpo run`s at once, in a fresh directory with MLflow's default
    ./mlflow.db: the store is created once (no migration race), one parent run, every trial
    mirrored exactly once, no warning."""
    from _checks import assert_mirrored_once

    study_file = tiny_study_file(n_trials=18, epochs=4)
    env = _without_tracking_env()
    command = [*HPO, "run", str(study_file), "--no-progress"]
    processes = [
        subprocess.Popen([*command, *extra], cwd=tmp_path, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for extra in (["--workers", "3"], [], [])
    ]  # fmt: skip
    for process in processes:
        _out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert "WARNING" not in err, err
        assert "Traceback" not in err, err
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert_mirrored_once(f"sqlite:///{tmp_path / 'hpo.db'}", store, "tiny")
    synced = _run_in(tmp_path, "sync-mlflow", "tiny", env=env)
    assert synced.returncode == 0, synced.stderr
    assert "0 runs created, 0 completed, 18 already complete" in synced.stdout


def test_concurrent_syncs_create_each_missing_run_once_and_duplicates_are_repaired(
    tiny_study_file, tmp_path
):
    from _checks import assert_mirrored_once, mlflow_runs

    study_file = tiny_study_file(n_trials=6, epochs=3)
    storage, store = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = ["--storage", storage, "--tracking-uri", store]
    run = _run_in(tmp_path, "run", str(study_file), "--no-progress", "--no-mlflow", *flags[:2])
    assert run.returncode == 0, run.stderr
    syncs = [
        subprocess.Popen([*HPO, "sync-mlflow", "tiny", *flags], cwd=tmp_path, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]  # fmt: skip
    outputs = [sync.communicate(timeout=300) for sync in syncs]
    assert all(sync.returncode == 0 for sync in syncs), outputs
    created = sorted(int(out.split(" runs created")[0].split()[-1]) for out, _ in outputs)
    assert created == [0, 0, 6], outputs  # the first under the lock made them all
    assert_mirrored_once(storage, store, "tiny")

    # Duplicates as an older version left them: a second, incomplete run for two trials.
    client = MlflowClient(tracking_uri=store)
    _parents, children = mlflow_runs(store, "tiny")
    for run_ in children[:2]:
        client.create_run(run_.info.experiment_id, tags=dict(run_.data.tags) | {
            "hpo.complete": "false"
        })  # fmt: skip
    assert len(mlflow_runs(store, "tiny")[1]) == 8
    repair = _run_in(tmp_path, "sync-mlflow", "tiny", *flags)
    assert repair.returncode == 0, repair.stderr
    assert "2 duplicate runs deleted" in repair.stdout
    assert_mirrored_once(storage, store, "tiny")
    kept = {r.info.run_id for r in mlflow_runs(store, "tiny")[1]}
    assert {r.info.run_id for r in children} == kept  # the complete ones stayed


def test_a_half_migrated_store_is_named_in_one_line(tiny_study_file, tmp_path):
    """The state concurrent migrations used to leave: an old schema version and alembic's
    temporary table. Commands that need MLflow say what to do; hpo run trains on."""
    import sqlite3

    store_path = tmp_path / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{store_path}").search_experiments()  # a whole store
    with sqlite3.connect(store_path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")
        db.execute("CREATE TABLE _alembic_tmp_latest_metrics (x INTEGER)")
    study_file = tiny_study_file(n_trials=3, epochs=2)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    flags = ["--storage", storage, "--tracking-uri", f"sqlite:///{store_path}"]
    run = _run_in(tmp_path, "run", str(study_file), "--no-progress", *flags)
    assert run.returncode == 0, run.stderr
    assert "tiny: 3/3 trials finished" in run.stdout
    assert "is half-migrated" in run.stderr
    assert "Traceback" not in run.stderr
    sync = _run_in(tmp_path, "sync-mlflow", "tiny", *flags)
    assert sync.returncode == 2, sync.stderr
    assert sync.stderr.count("\n") == 1, sync.stderr
    assert f"mv {store_path} {store_path}.broken" in sync.stderr
    assert "hpo sync-mlflow" in sync.stderr


class Silent(threading.Thread):
    """A TCP server that accepts connections and never answers: a hung tracking server."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.held: list[socket.socket] = []

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.socket.accept()[0])

    def close(self) -> None:
        self.socket.close()
        for connection in self.held:
            connection.close()


def test_a_tracking_server_that_never_answers_costs_a_bounded_wait_at_the_end(
    tiny_study_file, tmp_path
):
    study_file = tiny_study_file(n_trials=10, epochs=5)
    silent = Silent()
    silent.start()
    try:
        timings = {}
        for label, extra in (("off", ["--no-mlflow"]), ("hung", ["--tracking-uri", silent.uri])):
            storage = f"sqlite:///{tmp_path / f'{label}.db'}"
            began = time.monotonic()
            run = _run_in(tmp_path, "run", str(study_file), "--no-progress", "--storage",
                          storage, *extra, timeout=600)  # fmt: skip
            timings[label] = time.monotonic() - began
            assert run.returncode == 0, run.stderr
            assert "tiny: 10/10 trials finished" in run.stdout
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'hung.db'}")
        first_trial = min(t.datetime_start for t in study.trials)
        assert "Traceback" not in run.stderr
        assert "could not finish mirroring the study to MLflow" in run.stderr
        assert "no answer within 20 s" in run.stderr
        assert "hpo sync-mlflow tiny" in run.stderr
        # Training never waited: the end waited up to the 20 s bound, and little else (before
        # the bound, this study took 174 s; under a loaded CI machine the difference reached
        # 33 s, so the bound checked is 60 s and the figures are printed).
        assert timings["hung"] - timings["off"] < 60, timings
        print(f"\nhung tracking server: {timings['hung']:.1f} s, without MLflow "
              f"{timings['off']:.1f} s; first trial {first_trial.time()}")  # fmt: skip
    finally:
        silent.close()


FORKED_MIRROR = """
import os, sys
from pathlib import Path
from hpo.spec.study_file import load_study_file
from hpo.storage.database import resolve_storage
from hpo.tracking.mirror import Mirror
from hpo.tracking.runs import TrackingSettings

spec = load_study_file(Path(sys.argv[1]))
mirror = Mirror(TrackingSettings(enabled=True, uri=sys.argv[2]), resolve_storage(sys.argv[3]),
                spec, channels=2)
def sockets(pid):
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return found
ours = {f"socket:[{os.fstat(c.fileno()).st_ino}]"
        for c in [mirror.worker_end(0), mirror.worker_end(1), mirror._control]}
import time
deadline = time.monotonic() + 60  # until the mirror has started and closed what it should
while ours & sockets(mirror._process.pid) and time.monotonic() < deadline:
    time.sleep(0.05)
print(type(mirror._process).__name__, len(ours & sockets(mirror._process.pid)))
mirror.abandon()
"""


def test_a_forked_mirror_holds_none_of_hpo_runs_ends_of_the_pipes(tiny_study_file, tmp_path):
    """Forked (hpo run's process has no other thread), the mirror closes its copies of the
    ends it does not use: holding a worker's end, it would never see that worker's channel
    close, and would wait out its deadline at the end of every run."""
    done = subprocess.run(
        [sys.executable, "-c", FORKED_MIRROR, str(tiny_study_file()),
         f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'study.db'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ForkProcess", "0"]
