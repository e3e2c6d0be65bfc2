"""From a `DataConfig` to the arrays a run trains on: the only place data is loaded."""

from __future__ import annotations

import os
from pathlib import Path

from trainer.data import DataSplits, load_dataset, split_dataset

from ._config import DataConfig

DATA_DIR_ENV = "HPO_DATA_DIR"


def default_data_dir(
    dataset: str, environ: os._Environ[str] | dict[str, str] | None = None
) -> Path:
    """`$HPO_DATA_DIR/<dataset>` if set, else `~/.cache/hpo/<dataset>`."""
    environ = os.environ if environ is None else environ
    root = environ.get(DATA_DIR_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "hpo"
    return base / dataset


def load_splits(config: DataConfig, *, seed: int, download: bool = False) -> DataSplits:
    """Load the configured dataset and split it, seeded; the test split stays held out."""
    data_dir = config.data_dir or (
        default_data_dir(config.dataset) if config.dataset not in ("digits", "npz") else None
    )
    dataset = load_dataset(
        config.dataset,
        data_dir=data_dir,
        path=config.path,
        x_key=config.x_key,
        y_key=config.y_key,
        download=download,
    )
    return split_dataset(
        dataset,
        val_fraction=config.val_fraction,
        n_samples=config.n_samples,
        subset=config.subset,
        test_fraction=config.test_fraction,
        seed=seed,
    )
