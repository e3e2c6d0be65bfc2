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

from hpo._errors import ConfigError
from hpo._studyfile import load_study_file, parse_study

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
