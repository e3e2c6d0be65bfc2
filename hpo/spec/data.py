"""From a `DataConfig` to the arrays a run trains on: the only place data is loaded."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpo.errors import ConfigError
from hpo.spec.config import DataConfig
from trainer.data import (
    Dataset,
    DatasetError,
    DataSplits,
    check_split,
    load_dataset,
    split_dataset,
)

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
    dataset = _load(config, download=download)
    with _as_config_error():
        return split_dataset(dataset, seed=seed, **_split_args(config))


def check_data(config: DataConfig, *, seed: int) -> None:
    """Load the dataset and check that it splits as configured, without splitting it: the
    check `hpo run --workers N` makes before it creates anything, when each worker then loads
    and splits the data itself. Raises `DatasetError` or `ConfigError`."""
    dataset = _load(config, download=False)
    with _as_config_error():
        check_split(dataset, seed=seed, **_split_args(config))


def _load(config: DataConfig, *, download: bool) -> Dataset:
    data_dir = config.data_dir or (
        default_data_dir(config.dataset) if config.dataset not in ("digits", "npz") else None
    )
    return load_dataset(
        config.dataset,
        data_dir=data_dir,
        path=config.path,
        x_key=config.x_key,
        y_key=config.y_key,
        download=download,
    )


def _split_args(config: DataConfig) -> dict[str, Any]:
    return {
        "val_fraction": config.val_fraction,
        "n_samples": config.n_samples,
        "subset": config.subset,
        "test_fraction": config.test_fraction,
    }


@contextlib.contextmanager
def _as_config_error() -> Iterator[None]:
    """The split's argument errors are the study file's [data] settings, wrongly set."""
    try:
        yield
    except DatasetError:
        raise
    except ValueError as error:
        raise ConfigError(str(error).rstrip("."), key="data") from None
