"""``load_dataset``: one name in ``DATASETS`` becomes one ``Dataset``, here and only here."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ._download import TEST_FILES, TRAIN_FILES, download_dataset
from ._errors import DatasetError
from ._idx import read_idx_images, read_idx_labels
from ._npz import load_npz
from ._types import Dataset

__all__ = ["DATASETS", "load_dataset"]

logger = logging.getLogger("trainer.data")

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "kmnist", "npz")

_IDX_DATASETS = ("mnist", "fashion-mnist", "kmnist")
_IDX_CLASSES = 10
_IDX_IMAGE_SHAPE = (28, 28)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    x_key: str = "x",
    y_key: str = "y",
    download: bool = False,
    base_url: str | None = None,
    timeout: float = 30.0,
) -> Dataset:
    """Load dataset ``name`` (one of ``DATASETS``) with pixels scaled to [0, 1].

    - ``"digits"``: scikit-learn's bundled 8×8 digits (1797 × 64); no files needed.
    - ``"mnist"``, ``"fashion-mnist"``, ``"kmnist"``: the IDX ``.gz`` files in
      ``data_dir``. With both the ``train-*`` and ``t10k-*`` pairs, the pool is the
      training set and the ``t10k`` pair becomes ``test_x``/``test_y``; with only
      the ``t10k`` pair, its 10,000 images are the whole pool. ``download=True``
      first fetches the four official files (skipping ones already there and
      verified); ``base_url`` and ``timeout`` are passed on to ``download_dataset``.
    - ``"npz"``: arrays ``x_key`` and ``y_key`` of the file at ``path``.

    Arguments a dataset does not use are ignored, so a caller may pass its
    configured ``data_dir`` whatever the dataset.
    """
    if name == "digits":
        return _load_digits()
    if name in _IDX_DATASETS:
        return _load_idx_dataset(
            name, data_dir, download=download, base_url=base_url, timeout=timeout
        )
    if name == "npz":
        return load_npz(path, x_key=x_key, y_key=y_key)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")


def _load_digits() -> Dataset:
    # Imported here so that importing trainer.data stays cheap for callers that
    # never use the digits (loading sklearn.datasets takes a noticeable moment).
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixels are counts 0..16 of the original 32×32 bitmap's 4×4 blocks.
    x = np.ascontiguousarray(bunch.data / 16.0, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(name="digits", x=x, y=y, n_classes=10, source="scikit-learn bundled digits")


def _load_idx_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None,
    *,
    download: bool,
    base_url: str | None,
    timeout: float,
) -> Dataset:
    if data_dir is None:
        raise DatasetError(
            f"dataset {name!r} is read from IDX files: pass data_dir='path/to/{name}' (a "
            f"directory holding {', '.join(TEST_FILES)} and optionally "
            f"{', '.join(TRAIN_FILES)}).",
            remedy="download",
            dataset=name,
        )
    directory = Path(data_dir)
    if download:
        download_dataset(name, directory, base_url=base_url, timeout=timeout)

    have_train = _present_pair(name, directory, TRAIN_FILES)
    have_test = _present_pair(name, directory, TEST_FILES)
    if not (have_train or have_test):
        where = "does not exist" if not directory.is_dir() else "holds neither pair of IDX files"
        raise DatasetError(
            f"{name}: {directory} {where}; expected {' + '.join(TEST_FILES)} (10,000 images) "
            f"and/or {' + '.join(TRAIN_FILES)} (60,000 images). Put the files there.",
            remedy="download",
            dataset=name,
        )

    if have_train:
        x, y = _read_pair(name, directory, TRAIN_FILES)
        test_x, test_y = _read_pair(name, directory, TEST_FILES) if have_test else (None, None)
    else:
        x, y = _read_pair(name, directory, TEST_FILES)
        test_x = test_y = None
        logger.info("%s: only the t10k pair is in %s; it is the whole pool", name, directory)
    return Dataset(
        name=name,
        x=x,
        y=y,
        n_classes=_IDX_CLASSES,
        source=str(directory),
        test_x=test_x,
        test_y=test_y,
    )


def _present_pair(name: str, directory: Path, pair: tuple[str, str]) -> bool:
    """Whether both files of ``pair`` exist; half a pair is an error, not an absence."""
    present = [(directory / f).is_file() for f in pair]
    if all(present):
        return True
    if any(present):
        missing = pair[present.index(False)]
        found = pair[present.index(True)]
        raise DatasetError(
            f"{name}: {directory / found} is there but {directory / missing} is missing; "
            "images and labels come in pairs. Add the missing file.",
            remedy="download",
            dataset=name,
        )
    return False


def _read_pair(
    name: str, directory: Path, pair: tuple[str, str]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    images_path, labels_path = (directory / f for f in pair)
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if images.shape[1:] != _IDX_IMAGE_SHAPE:
        raise DatasetError(
            f"{images_path} holds images of shape {images.shape[1:]}, but {name} images are "
            f"{_IDX_IMAGE_SHAPE}; is this file from another dataset?"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{name}: {images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the files do not belong together. Replace both with "
            "a matching pair.",
            remedy="download",
            dataset=name,
        )
    if labels.size and int(labels.max()) >= _IDX_CLASSES:
        raise DatasetError(
            f"{labels_path} holds label {int(labels.max())}, but {name} has only "
            f"{_IDX_CLASSES} classes (0..{_IDX_CLASSES - 1}); the file is corrupt or from "
            "another dataset."
        )
    x = images.reshape(images.shape[0], -1).astype(np.float32)
    x /= np.float32(255)
    return x, labels.astype(np.int64)
