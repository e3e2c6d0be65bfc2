"""Load a user's own labelled arrays from an ``.npz`` file."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ._errors import DatasetError
from ._types import Dataset

__all__ = ["load_npz"]


def load_npz(path: str | os.PathLike[str] | None, *, x_key: str, y_key: str) -> Dataset:
    """Read ``x`` (any shape, flattened to (n, -1) and scaled to [0, 1]) and ``y`` labels.

    ``y`` may be integer class indices or a 2-D one-hot matrix; see ``_scale`` for
    how each pixel dtype is brought into [0, 1].
    """
    if path is None:
        raise DatasetError(
            "dataset 'npz' needs a file: pass path='data.npz' (an .npz holding "
            f"{x_key!r} and {y_key!r} arrays)."
        )
    file = Path(path)
    if not file.is_file():
        raise DatasetError(
            f"{file} does not exist (or is not a file); pass the path of an existing .npz."
        )
    try:
        # allow_pickle=False: an .npz must never be able to run code when loaded.
        with np.load(file, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            missing = [k for k in (x_key, y_key) if k not in keys]
            if missing:
                raise DatasetError(
                    f"{file} has no array {' or '.join(map(repr, missing))}; it holds "
                    f"{keys}. Pass x_key=... and y_key=... naming the right arrays."
                )
            raw_x = archive[x_key]
            raw_y = archive[y_key]
    except DatasetError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DatasetError(
            f"{file} is not a readable .npz file ({exc}); save it with np.savez(path, x=..., "
            "y=...)."
        ) from exc

    x = _features(file, x_key, raw_x)
    y, n_classes = _labels(file, y_key, raw_y)
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{file}: {x_key!r} has {x.shape[0]} samples but {y_key!r} has {y.shape[0]} "
            "labels; they must have one label per sample."
        )
    return Dataset(name="npz", x=x, y=y, n_classes=n_classes, source=str(file))


def _features(file: Path, key: str, raw: NDArray) -> NDArray[np.float32]:
    if raw.ndim == 0 or raw.shape[0] == 0:
        raise DatasetError(
            f"{file}: {key!r} has shape {raw.shape}; it needs at least one sample along "
            "its first axis."
        )
    if not (raw.dtype == np.bool_ or np.issubdtype(raw.dtype, np.number)) or np.issubdtype(
        raw.dtype, np.complexfloating
    ):
        raise DatasetError(
            f"{file}: {key!r} has dtype {raw.dtype}; it must hold real numbers (pixels)."
        )
    flat = raw.reshape(raw.shape[0], -1)
    if flat.shape[1] == 0:
        raise DatasetError(f"{file}: {key!r} has shape {raw.shape}, i.e. no features per sample.")
    return np.ascontiguousarray(_scale(file, key, flat), dtype=np.float32)


def _scale(file: Path, key: str, x: NDArray) -> NDArray:
    """Bring pixels into [0, 1] the way their dtype suggests.

    uint8 is the usual 0..255 image encoding; other integers are divided by their
    maximum (or min-max scaled if negative); floats already inside [0, 1] are kept
    as they are, and any other floats are min-max scaled over the whole array so
    relative intensities are preserved across samples.
    """
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    if np.issubdtype(x.dtype, np.integer):
        low, high = int(x.min()), int(x.max())
        if low >= 0:
            return x / high if high > 0 else np.zeros(x.shape)
        return _min_max(x.astype(np.float64), low, high)
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise DatasetError(
            f"{file}: {key!r} holds {bad} NaN or infinite value(s); clean or impute them "
            "before training."
        )
    lowest, highest = float(x.min()), float(x.max())
    if lowest >= 0.0 and highest <= 1.0:
        return x
    return _min_max(x.astype(np.float64), lowest, highest)


def _min_max(x: NDArray[np.float64], low: float, high: float) -> NDArray[np.float64]:
    if high == low:
        return np.zeros(x.shape)
    return (x - low) / (high - low)


def _labels(file: Path, key: str, raw: NDArray) -> tuple[NDArray[np.int64], int]:
    if raw.ndim == 2 and raw.shape[1] > 1:
        # One-hot (or per-class scores): the class is the column holding the maximum.
        if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_):
            raise DatasetError(f"{file}: one-hot {key!r} has non-numeric dtype {raw.dtype}.")
        if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
            raise DatasetError(f"{file}: one-hot {key!r} holds NaN or infinite values.")
        return np.argmax(raw, axis=1).astype(np.int64), int(raw.shape[1])
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise DatasetError(
            f"{file}: {key!r} has shape {raw.shape}; labels must be 1-D class indices (n,) "
            "or a 2-D one-hot matrix (n, n_classes)."
        )
    if not np.issubdtype(raw.dtype, np.integer):
        raise DatasetError(
            f"{file}: {key!r} has dtype {raw.dtype}, but labels must be integer class indices; "
            "save them with y.astype(np.int64)."
        )
    if raw.size == 0:
        raise DatasetError(f"{file}: {key!r} is empty.")
    if int(raw.min()) < 0:
        raise DatasetError(
            f"{file}: {key!r} holds negative label {int(raw.min())}; labels must be class "
            "indices 0..n_classes-1."
        )
    y = raw.astype(np.int64)
    return y, int(y.max()) + 1
