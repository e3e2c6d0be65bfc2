"""`hpo run` as users run it: real processes, interrupted, killed, resumed, run side by side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from _checks import assert_study_is_whole

from hpo.storage.database import open_storage, resolve_storage
from hpo.storage.optuna_adapter.queries import count_trials
from hpo.storage.studies import records

pytestmark = pytest.mark.slow  # the fast tier: pytest -m 'not slow'

HPO = [sys.executable, "-m", "hpo.cli"]
FAST_STALENESS = {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_GRACE_PERIOD": "3"}


def _env(storage_url: str) -> dict[str, str]:
    return os.environ | FAST_STALENESS | {"HPO_STORAGE": storage_url, "OPENBLAS_NUM_THREADS": "1"}


def _run(args, storage_url, cwd, timeout=300):
    if args and args[0] == "run":
        args = [*args, "--no-mlflow"]  # tracking has its own tests (test_tracking.py)
    return subprocess.run(
        [*HPO, *args],
        env=_env(storage_url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _counts(storage_url: str, name: str = "tiny") -> Counter:
    storage = open_storage(resolve_storage(storage_url), heartbeat=False)
    try:
        return Counter(count_trials(storage, storage.get_study_id_from_name(name)))
    finally:
        storage.engine.dispose()


def _wait_for_running_trial(storage_url: str, process: subprocess.Popen, after: int) -> None:
    """Until `after` trials have finished and another one is training (its seed recorded)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            study = optuna.load_study(study_name="tiny", storage=storage_url)
        except KeyError:  # the study does not exist yet
            time.sleep(0.05)
            continue
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state.name == "COMPLETE" for t in trials)
        training = [t for t in trials if t.state.name == "RUNNING" and "seed" in t.user_attrs]
        if finished >= after and training:
            return
        time.sleep(0.05)
    pytest.fail("no trial started in time")


@pytest.fixture
def slow_study(tiny_study_file):
    """Trials of about 1.5 s: a signal sent as one starts lands in its middle."""
    return tiny_study_file(n_trials=5, epochs=150, hidden=256)


def test_ctrl_c_marks_the_running_trial_failed_and_the_same_command_resumes(
    storage_url, slow_study, tmp_path
):
    process = subprocess.Popen(
        [*HPO, "run", str(slow_study), "--no-progress", "--no-mlflow"],
        env=_env(storage_url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_running_trial(storage_url, process, after=2)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted: the running trials were marked failed" in err
    assert "run the same command again to resume (2/5 finished)" in err
    assert "Traceback" not in err
    counts = _counts(storage_url)
    assert counts["RUNNING"] == 0
    assert counts["FAIL"] == 1  # the trial that was running
    done = _run(["run", str(slow_study), "--no-progress"], storage_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resuming study 'tiny'" in done.stdout
    assert "tiny: 5/5 trials finished" in done.stdout
    assert_study_is_whole(storage_url, 5)


def test_a_killed_run_leaves_a_stale_trial_that_the_next_run_retries(
    storage_url, slow_study, tmp_path
):
    process = subprocess.Popen(
        [*HPO, "run", str(slow_study), "--no-progress", "--no-mlflow"],
        env=_env(storage_url),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_running_trial(storage_url, process, after=2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert _counts(storage_url)["RUNNING"] == 1  # nobody could mark it
    done = _run(["run", str(slow_study), "--no-progress"], storage_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert_study_is_whole(storage_url, 5)
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1
    assert retries[0].params == failed[0].params
    assert retries[0].user_attrs["seed"] == failed[0].user_attrs["seed"]


def test_workers_started_together_on_an_empty_database_share_one_study(
    storage_url, tiny_study_file, tmp_path
):
    study_file = tiny_study_file(n_trials=24, epochs=4)
    processes = [
        subprocess.Popen(
            [*HPO, "run", str(study_file), "--no-progress", "--no-mlflow"],
            env=_env(storage_url),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=300) for p in processes]
    for process, (_out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
        assert "Traceback" not in err
    assert_study_is_whole(storage_url, 24)
    assert _counts(storage_url)["FAIL"] == 0
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert records(study)["hpo:workers_joined"] == 4
    # Each worker drew from its own sampler seed: no two trials share their parameters.
    assert len({t.params["lr"] for t in study.trials}) == 24


def test_hpo_run_workers_flag_starts_processes_and_keeps_the_budget(
    storage_url, tiny_study_file, tmp_path
):
    study_file = tiny_study_file(n_trials=16, epochs=4)
    done = _run(["run", str(study_file), "--workers", "4", "--no-progress"], storage_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "tiny: 16/16 trials finished" in done.stdout
    assert done.stdout.count("Best-") == 5
    assert_study_is_whole(storage_url, 16)
    assert _counts(storage_url)["FAIL"] == 0


def test_status_export_and_replay_after_a_run(storage_url, tiny_study_file, tmp_path):
    study_file = tiny_study_file(n_trials=4, epochs=3)
    assert _run(["run", str(study_file), "--no-progress"], storage_url, tmp_path).returncode == 0
    status = _run(["status"], storage_url, tmp_path)
    assert status.returncode == 0
    assert status.stdout.startswith("tiny: 4 finished, 4 complete, 0 pruned, 0 failed")
    one = _run(["status", "tiny"], storage_url, tmp_path)
    assert one.stdout.count("Best-") == 4
    exported = _run(["export", "tiny", "--format", "json"], storage_url, tmp_path)
    import json

    rows = json.loads(exported.stdout)
    assert [row["number"] for row in rows] == [0, 1, 2, 3]
    assert all(row["epochs_trained"] == 3 and row["seed"] is not None for row in rows)
    csv_out = tmp_path / "trials.csv"
    assert _run(["export", "tiny", "-o", str(csv_out)], storage_url, tmp_path).returncode == 0
    assert csv_out.read_text().splitlines()[0].startswith("number,state,value,param_lr")
    replay = _run(["replay", "tiny", "2"], storage_url, tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert "identical at every recorded epoch" in replay.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "nope"], "no study named 'nope'"),
        (["export", "nope"], "no study named 'nope'"),
        (["replay", "tiny", "99"], "has no trial 99"),
        (["run", "missing.toml"], "missing.toml"),
        (["run", "{study}", "--sampler", "bogus"], "sampler"),
        (["run", "{study}", "--workers", "0"], "--workers: must be at least 1"),
        (["run", "{study}", "--storage", "mysql://x@y/z"], "backend must be one of"),
        (["run", "{study}", "--storage", "sqlite:////no/such/dir/x.db"], "does not exist"),
        (
            ["run", "{study}", "--storage", "postgresql+psycopg://nobody@127.0.0.1:1/x"],
            "cannot open postgresql+psycopg://nobody@127.0.0.1:1/x",
        ),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, message, tmp_path, tiny_study_file):
    study_file = tiny_study_file(n_trials=2, epochs=2)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert _run(["run", str(study_file), "--no-progress"], url, tmp_path).returncode == 0
    args = [a.replace("{study}", str(study_file)) for a in args]
    started = time.monotonic()
    done = _run(args, url, tmp_path)
    assert time.monotonic() - started < 30  # at once: no retries, no waiting out a patience
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_a_study_file_error_names_file_key_and_value(tmp_path, tiny_study_file):
    study_file = tiny_study_file()
    study_file.write_text(study_file.read_text().replace("low = 1e-4", "low = 0.5"))
    done = _run(["run", str(study_file)], f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
    assert done.returncode == 2
    assert str(study_file) in done.stderr
    assert "search.lr" in done.stderr
    assert not Path(tmp_path / "x.db").exists()  # nothing was created for a bad file
