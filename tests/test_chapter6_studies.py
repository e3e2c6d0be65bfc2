"""The chapter's comparisons as grid studies: each file runs, in a reduced form, to its figure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from itertools import product
from pathlib import Path

import optuna
import pytest

from hpo.errors import ConfigError
from hpo.spec.study_file import load_study_file, parse_study

pytestmark = pytest.mark.slow  # the fast tier: pytest -m 'not slow'

STUDIES = Path(__file__).resolve().parent.parent / "studies"
HPO = [sys.executable, "-m", "hpo.cli"]


def _reduced(path: Path, mnist_dir: Path, tmp_path: Path) -> Path:
    """The study with 3 epochs on at most 500 images, reading MNIST from `mnist_dir`."""
    text = path.read_text()
    text = re.sub(r"(?m)^epochs = \d+", "epochs = 3", text)
    text = re.sub(r"(?m)^n_samples = (\d+)", lambda m: f"n_samples = {min(500, int(m[1]))}", text)
    text = text.replace('dataset = "mnist"', f'dataset = "mnist"\ndata_dir = "{mnist_dir}"')
    reduced = tmp_path / path.name
    reduced.write_text(text)
    return reduced


@pytest.mark.parametrize(
    ("name", "panels"),
    [
        ("ch6-1-8-optimizers", True),
        ("ch6-2-4-weight-init", False),
        ("ch6-3-2-batch-norm", True),
        ("ch6-4-overfitting", False),
    ],
)
def test_each_chapter_study_runs_every_setting_once_and_draws_its_figure(
    name, panels, mnist_dir, tmp_path
):
    study_file = _reduced(STUDIES / f"{name}.toml", mnist_dir, tmp_path)
    spec = load_study_file(study_file, environ={})
    grid = spec.space.grid()
    env = {k: v for k, v in os.environ.items() if k != "HPO_DATA_DIR"} | {
        "OPENBLAS_NUM_THREADS": "1"
    }
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    run = subprocess.run(
        [*HPO, "run", str(study_file), "--storage", storage, "--no-mlflow", "--no-progress"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    study = optuna.load_study(study_name=name, storage=storage)
    settings = Counter(tuple(t.params[k] for k in grid) for t in study.trials)
    assert settings == Counter(product(*grid.values()))  # each setting exactly once
    assert spec.study.n_trials == len(list(product(*grid.values())))  # the file's budget
    report = subprocess.run(
        [*HPO, "report", name, "--storage", storage, "--no-mlflow", "--out", "report"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    figure = tmp_path / "report" / "settings.png"
    assert figure.stat().st_size > 10_000
    # Figure 6-19's layout, a panel per value, for grids of two settings, one with 4 values+.
    assert (tmp_path / "report" / "settings_grid.png").is_file() == panels


def _grid_study(search: str) -> str:
    return (
        f'[study]\nn_trials = 2\n[data]\ndataset = "digits"\n{search}\n[sampler]\nname = "grid"\n'
    )


@pytest.mark.parametrize(
    ("search", "key", "message"),
    [
        (
            '[search.lr]\ntype = "float"\nlow = 0.001\nhigh = 0.1',
            "search.lr",
            "a float range; give it choices",
        ),
        (
            '[search.optimizer]\nchoices = ["sgd", "momentum"]\n'
            '[search.momentum]\nchoices = [0.5, 0.9]\nwhen = { optimizer = ["momentum"] }',
            "search.momentum.when",
            "takes no conditional settings",
        ),
        ("", "sampler.name", "needs at least one [search.<setting>] with choices"),
    ],
)
def test_a_grid_over_what_cannot_be_enumerated_is_refused(search, key, message):
    import tomllib

    text = _grid_study(search)
    with pytest.raises(ConfigError) as error:
        parse_study(tomllib.loads(text), source="mine.toml", source_text=text)
    assert error.value.key == key
    assert message in str(error.value)


def test_grid_chosen_by_flag_on_a_range_study_fails_in_one_line(tmp_path):
    result = subprocess.run(
        [*HPO, "run", str(STUDIES / "quickstart.toml"), "--sampler", "grid", "--no-mlflow",
         "--storage", f"sqlite:///{tmp_path / 's.db'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "sampler 'grid' enumerates choices" in result.stderr
    assert not (tmp_path / "s.db").exists() or "quickstart" not in str(
        optuna.get_all_study_names(f"sqlite:///{tmp_path / 's.db'}")
    )


# -- the two that train nothing: optimizer paths (6.1.3 to 6.1.7), activations (6.2.2) ------


def _hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([*HPO, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "figure"),
    [("ch6-1-optimizer-paths", "optimizer_paths.png"), ("ch6-2-2-activations", "activations.png")],
)
def test_each_probe_study_runs_every_setting_once_and_draws_its_figure(name, figure, tmp_path):
    spec = load_study_file(STUDIES / f"{name}.toml", environ={})
    grid = spec.space.grid()
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    run = _hpo("run", str(STUDIES / f"{name}.toml"), "--storage", storage, "--no-mlflow",
               "--no-progress", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "network:" not in run.stdout  # nothing is trained
    study = optuna.load_study(study_name=name, storage=storage)
    assert Counter(tuple(t.params[k] for k in grid) for t in study.trials) == Counter(
        product(*grid.values())
    )
    assert spec.study.n_trials == len(study.trials)
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    report = _hpo("report", name, "--storage", storage, "--no-mlflow", "--out", "report",
                  cwd=tmp_path)  # fmt: skip
    assert report.returncode == 0, report.stderr
    png = tmp_path / "report" / figure
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 50_000
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"best.txt", figure}
    again = _hpo("run", str(STUDIES / f"{name}.toml"), "--storage", storage, "--no-mlflow",
                 "--no-progress", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == len(study.trials)


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        (["replay", "ch6-1-optimizer-paths", "0"], "hpo replay works on studies that train"),
        (["best", "ch6-1-optimizer-paths", "--retrain", "--no-mlflow"], "hpo best --retrain"),
        (["narrow", "ch6-1-optimizer-paths"], "no range to narrow"),
    ],
)
def test_commands_that_train_refuse_a_probe_study_in_one_line(command, fragment, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study_file = str(STUDIES / "ch6-1-optimizer-paths.toml")
    assert _hpo("run", study_file, "--storage", storage, "--no-mlflow", "--no-progress",
                cwd=tmp_path).returncode == 0  # fmt: skip
    result = _hpo(*command, "--storage", storage, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr


@pytest.mark.parametrize("name", ["ch6-1-optimizer-paths", "ch6-2-2-activations"])
def test_a_probe_trial_is_mirrored_to_mlflow_without_epochs(name, tmp_path):
    from _checks import mlflow_runs

    storage, uri = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = _hpo("run", str(STUDIES / f"{name}.toml"), "--storage", storage, "--tracking-uri",
               uri, "--n-trials", "2", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert "WARNING" not in run.stderr, run.stderr  # the mirror mirrored, and said nothing
    parents, children = mlflow_runs(uri, name)
    spec = load_study_file(STUDIES / f"{name}.toml", environ={})
    metric = spec.study.metric
    assert len(parents) == 1
    assert parents[0].data.tags["hpo.kind"] == spec.study.kind
    own = {"optimizer_paths": "paths.steps", "activations": "activations.n_inputs"}
    assert own[spec.study.kind] in parents[0].data.params  # the kind's settings, not training's
    assert not any(k.startswith(("data.", "train.")) for k in parents[0].data.params)
    study = optuna.load_study(study_name=name, storage=storage)
    assert sorted(int(r.data.tags["hpo.trial_number"]) for r in children) == [0, 1]
    for run in children:
        trial = study.trials[int(run.data.tags["hpo.trial_number"])]
        assert run.info.status == "FINISHED"
        assert run.data.metrics[f"final_{metric}"] == trial.value
        assert run.data.metrics["epochs_trained"] == 0
        assert {k: run.data.params[k] for k in trial.params} == {
            k: str(v) for k, v in trial.params.items()
        }
        # Recorded on the trial when the mirror had it by the trial's end (it never waits).
        assert trial.user_attrs.get("mlflow_run_id", run.info.run_id) == run.info.run_id


def test_a_probe_study_refuses_a_file_whose_own_settings_changed(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    original = STUDIES / "ch6-1-optimizer-paths.toml"
    assert _hpo("run", str(original), "--storage", storage, "--no-mlflow", "--no-progress",
                cwd=tmp_path).returncode == 0  # fmt: skip
    changed = tmp_path / original.name
    changed.write_text(original.read_text().replace("steps = 30", "steps = 10"))
    result = _hpo("run", str(changed), "--storage", storage, "--no-mlflow", "--no-progress",
                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "probe.steps: the study has 30, the file has 10" in result.stderr, result.stderr
    assert len(optuna.load_study(study_name=original.stem, storage=storage).trials) == 5
