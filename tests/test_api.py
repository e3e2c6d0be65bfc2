"""hpo's public API (`hpo.__all__`): light to import, documented, and doing what the commands
do, against a real SQLite file; the README's "From Python" script runs as written."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import hpo
from hpo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_importing_hpo_loads_neither_numpy_nor_optuna_nor_mlflow():
    code = (
        "import json, sys, hpo; names = hpo.__all__, dir(hpo); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not {"numpy", "optuna", "mlflow", "sqlalchemy", "matplotlib"} & set(loaded)


def test_every_public_name_resolves_and_has_a_docstring():
    names = [name for name in hpo.__all__ if name != "__version__"]
    assert set(names) == set(hpo._PUBLIC)  # one list, one map: the same names
    for name in names:
        value = getattr(hpo, name)
        assert (value.__doc__ or "").strip(), f"hpo.{name} has no docstring"
        assert name in dir(hpo)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        hpo.nothing_here  # noqa: B018


class Recorder(hpo.RunListener):
    """What a run tells its listener, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def phase(self, what: str) -> None:
        self.events.append(("phase", what))

    def ready(self, created: bool, spec: hpo.StudySpec, storage: object) -> None:
        self.events.append(("ready", created, spec.study.name))

    def progress(self, finished: int, best: float | None) -> None:
        self.events.append(("progress", finished))

    def stopped(self) -> None:
        self.events.append(("stopped",))


def test_a_study_runs_in_process_then_best_replay_and_report_agree(tiny_study_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    heard = Recorder()
    result = hpo.run_study(
        tiny_study_file(n_trials=4, epochs=3), storage=url, tracking=False, listener=heard
    )

    steps = [event for event in heard.events if event[0] != "progress"]
    assert steps == [
        ("phase", "loading data"),
        ("phase", "preparing the study"),
        ("ready", True, "tiny"),
        ("phase", "running"),
        ("stopped",),
    ]
    counts = [event[1] for event in heard.events if event[0] == "progress"]
    assert (counts[0], counts[-1]) == (0, 4)  # from the first look to the last trial
    assert counts == sorted(counts)

    assert (result.finished, result.n_trials, result.complete) == (4, 4, True)
    assert result.created
    assert not result.interrupted
    assert result.mirrored is None
    assert result.best_trial is not None
    assert result.best_value == max(t.value for t in result.study.trials)
    best = hpo.best("tiny", storage=url)
    assert (best.number, best.value, best.params) == (
        result.best_trial.number,
        result.best_value,
        result.best_params,
    )
    replay = hpo.replay("tiny", storage=url)  # the best trial by default
    assert replay.trial.number == best.number
    assert replay.identical
    assert replay.reproduced_value == best.value

    report = hpo.report("tiny", storage=url, out=tmp_path / "report")
    assert report.directory == tmp_path / "report"
    assert {p.name for p in report.written} >= {"best.txt", "figure_6_24.png"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in report.written)
    assert (tmp_path / "report" / "best.txt").read_text().count("Best-") == 4

    again = hpo.run_study(result.spec, storage=url, tracking=False)  # resumes: nothing to do
    assert not again.created
    assert again.finished == 4
    assert again.outcome.trials == ()


@pytest.mark.slow  # worker processes and an MLflow mirror
def test_a_study_runs_with_two_worker_processes_and_mirrors_to_mlflow(tiny_study_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = hpo.load_study(tiny_study_file(n_trials=4, epochs=3), n_trials=6, sampler="tpe")
    result = hpo.run_study(
        spec, storage=url, workers=2, tracking=f"sqlite:///{tmp_path / 'mlflow.db'}"
    )

    # The file says 4 trials: the workers read it again, and got the override of 6 too.
    assert (result.finished, result.complete, result.interrupted) == (6, True, False)
    assert result.outcome.worker_lines == ()
    assert result.outcome.worker_failures == 0
    assert "experiment 'tiny'" in (result.mirrored or "")
    # The trials ran in worker processes, not this one (how many trials each worker took
    # depends on the machine's load: one may take them all while the other starts).
    workers = {t.user_attrs["worker"] for t in result.study.trials}
    assert 1 <= len(workers) <= 2
    assert f"{socket.gethostname()}:{os.getpid()}" not in workers
    assert hpo.replay("tiny", storage=url).identical


@pytest.mark.slow  # a study per arm and seed, each an `hpo run` process
def test_a_comparison_runs_from_python_and_writes_its_report(tiny_study_file, tmp_path):
    done = hpo.compare(
        tiny_study_file(n_trials=2, epochs=3), samplers=["random"], pruners=["none"], seeds=1,
        storage=f"sqlite:///{tmp_path / 'compare.db'}", out=tmp_path / "compare",
        noise_trainings=1, audit=0, tracking=False,
    )  # fmt: skip

    assert (done.failed, done.interrupted) == ((), None)
    assert done.summary is not None
    assert list(done.summary.arms) == ["random+none"]
    assert done.report_path.read_text() == done.report_text
    assert "by `hpo.compare(" in done.report_text  # says how it was made
    for name in ("results.csv", *done.figures):
        assert (tmp_path / "compare" / name).stat().st_size > 0


def test_a_bad_study_file_raises_the_error_hpo_run_prints(tiny_study_file, tmp_path, capsys):
    path = tiny_study_file()
    path.write_text(path.read_text().replace("epochs = 5", "epochs = -3"))
    with pytest.raises(hpo.ConfigError) as raised:
        hpo.load_study(path)
    error = raised.value
    assert error.source == str(path)
    assert error.key == "train.epochs"
    assert str(error).startswith(f"{path}: train.epochs: ")
    assert "-3" in str(error)
    with pytest.raises(hpo.ConfigError):
        hpo.run_study(path, storage=f"sqlite:///{tmp_path / 'x.db'}", tracking=False)
    assert not (tmp_path / "x.db").exists()  # refused before anything was created

    assert main(["run", str(path), "--no-mlflow"]) == 2
    assert capsys.readouterr().err == f"hpo run: error: {error}\n"


def test_run_study_refuses_what_it_cannot_run(tiny_study_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(hpo.ConfigError, match="cannot read the study file"):
        hpo.load_study(tmp_path / "missing.toml")
    with pytest.raises(hpo.ConfigError, match=r"workers: must be from 1 to 256, but got 0"):
        hpo.run_study(tiny_study_file(), storage=url, workers=0)
    spec = dataclasses.replace(hpo.load_study(tiny_study_file()), path=None)
    with pytest.raises(hpo.ConfigError, match="worker processes read the study from its file"):
        hpo.run_study(spec, storage=url, workers=2, tracking=False)
    with pytest.raises(hpo.ConfigError, match="no database at"):
        hpo.best("tiny", storage=url)  # reading creates no database
    assert not (tmp_path / "x.db").exists()


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test:from-python -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no 'From Python' script"
    return match.group(1)


@pytest.mark.slow  # the script runs two worker processes and the MLflow mirror
def test_the_readme_script_runs_as_written(tiny_study_file, tmp_path):
    tiny = tiny_study_file(n_trials=3, epochs=3).read_text().replace('name = "tiny"\n', "")
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "quickstart.toml").write_text(tiny)  # named as in the script
    (tmp_path / "script.py").write_text(_readme_snippet())
    run = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("RunResult('quickstart', 12/12 finished, complete, best trial ")
    assert re.fullmatch(r"best trial \d+: val_acc 0\.\d{3} with \{'lr': .*\}", lines[1])
    assert lines[2] == "replayed bit for bit"
    assert (tmp_path / "hpo.db").is_file()
    assert (tmp_path / "mlflow.db").is_file()
