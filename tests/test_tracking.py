"""MLflow mirrors studies: against a local sqlite:/// store and a real `mlflow server`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter

import optuna
import pytest
from _checks import mlflow_runs
from mlflow import MlflowClient

from hpo._data import load_splits
from hpo._mirror import Mirror, TrialMirror
from hpo._objective import Objective
from hpo._run import pruning_mirror
from hpo._runner import Worker
from hpo._storage import resolve_storage
from hpo._studies import join_study, prepare_study
from hpo._studyfile import load_study_file
from hpo._tracking import RUN_ID_ATTR, TrackingSettings

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
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
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
    diverged_runs = {
        int(r.data.tags["hpo.trial_number"])
        for r in children
        if r.data.tags.get("hpo.diverged") == "true"
    }
    assert 2 in diverged_runs  # the enqueued lr = 1e20
    assert diverged_runs == {n for n, t in trials.items() if t.user_attrs.get("diverged")}
    best = client.get_metric_history(parents[0].info.run_id, "best_val_acc")
    assert max(m.value for m in best) == study.best_value


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
