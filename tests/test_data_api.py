"""The public surface of trainer.data, and what importing it drags in."""

from __future__ import annotations

import json
import subprocess
import sys

import trainer.data
from trainer.data import DATASETS

EXPECTED = {
    "DATASETS",
    "DataSplits",
    "Dataset",
    "DatasetError",
    "check_split",
    "download_dataset",
    "load_dataset",
    "split_dataset",
}


def test_all_lists_exactly_the_public_api():
    assert set(trainer.data.__all__) == EXPECTED
    assert len(trainer.data.__all__) == len(EXPECTED)
    public = {name for name in vars(trainer.data) if not name.startswith("_")}
    assert public == EXPECTED  # the private modules are not re-exported under public names
    for name in EXPECTED - {"DATASETS"}:
        assert getattr(trainer.data, name).__module__.startswith("trainer.data._")


def test_dataset_names():
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "kmnist", "npz")


def test_import_loads_neither_hpo_tools_nor_sklearn():
    # optuna/mlflow must never be imported by the trainer; scikit-learn is imported
    # lazily, on first load or split, so `import trainer` stays fast for the CLI.
    code = "import sys, json, trainer.data; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    roots = {name.split(".")[0] for name in json.loads(out)}
    assert not roots & {"optuna", "mlflow", "sklearn", "scipy"}
