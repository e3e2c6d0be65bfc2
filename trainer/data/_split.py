"""Train/validation/test splits: seeded, stratified, and with the test set kept apart."""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from ._errors import DatasetError
from ._types import Dataset

__all__ = ["DataSplits", "split_dataset"]

logger = logging.getLogger("trainer.data")

_SUBSETS = ("first", "random")


@dataclass(frozen=True, eq=False, repr=False)
class DataSplits:
    """The arrays one trial trains and validates on, in the book's ``x``/``t`` names.

    ``x_*``: (n, n_features) float32, ``t_*``: (n,) int64 class indices; all
    C-contiguous copies the caller may modify. The test split is held privately
    and handed out only by ``test()``, so that code tuning hyperparameters cannot
    look at it by accident; ``test_source`` says where it came from
    (``"test_fraction"``, ``"official"``, ``"leftover"``, or None).
    """

    x_train: NDArray[np.float32]
    t_train: NDArray[np.int64]
    x_val: NDArray[np.float32]
    t_val: NDArray[np.int64]
    n_classes: int
    _x_test: NDArray[np.float32] | None = None
    _t_test: NDArray[np.int64] | None = None
    test_source: str | None = None

    @property
    def has_test(self) -> bool:
        return self._x_test is not None

    def test(self) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Return ``(x_test, t_test)``: use it once, for the final model, never for tuning."""
        if self._x_test is None or self._t_test is None:
            raise DatasetError(
                "this split has no test set; pass test_fraction=... to split_dataset, use a "
                "dataset with an official test set, or pass n_samples smaller than the pool "
                "so the leftover samples become the test set."
            )
        return self._x_test, self._t_test

    def __repr__(self) -> str:
        test = (
            f"{self._x_test.shape} from {self.test_source}" if self._x_test is not None else "None"
        )
        return (
            f"DataSplits(x_train={self.x_train.shape}, x_val={self.x_val.shape}, "
            f"test={test}, n_classes={self.n_classes})"
        )


def split_dataset(
    dataset: Dataset,
    *,
    val_fraction: float = 0.2,
    n_samples: int | None = None,
    subset: Literal["first", "random"] = "first",
    test_fraction: float | None = None,
    seed: int = 0,
) -> DataSplits:
    """Split ``dataset`` into train, validation and (when there is one) test arrays.

    1. ``n_samples`` narrows the pool to its first ``n_samples`` (``subset="first"``,
       as the book trains on the first 500 MNIST images to provoke overfitting) or
       to a seeded random ``n_samples``; the rest of the pool is the *leftover*.
    2. The test split is a stratified ``test_fraction`` of that pool if given; else
       the dataset's official test set; else the leftover; else there is none.
    3. The validation split is a stratified ``val_fraction`` of what remains.

    Stratification keeps each class's share within one sample of its expected
    share, which matters for the small pools HPO trials use. The same arguments
    and ``seed`` give bit-identical splits.
    """
    check_split(
        dataset,
        val_fraction=val_fraction,
        n_samples=n_samples,
        subset=subset,
        test_fraction=test_fraction,
        seed=seed,
    )
    n_pool = dataset.n_samples

    # One independent stream per step, so e.g. choosing subset="random" does not
    # change which samples the validation split draws from a given pool.
    subset_seed, test_seed, val_seed = (
        int(s) for s in np.random.SeedSequence(int(seed)).generate_state(3)
    )
    y = dataset.y

    pool, leftover = _narrow(n_pool, n_samples, subset, subset_seed)

    x_test: NDArray[np.float32] | None = None
    t_test: NDArray[np.int64] | None = None
    if test_fraction is not None:
        pool, test_idx = _stratified(pool, y, test_fraction, test_seed)
        x_test, t_test, source = dataset.x[test_idx], y[test_idx], "test_fraction"
    elif dataset.test_x is not None and dataset.test_y is not None:
        x_test = np.array(dataset.test_x, order="C", copy=True)
        t_test = np.array(dataset.test_y, order="C", copy=True)
        source = "official"
    elif leftover.size:
        x_test, t_test, source = dataset.x[leftover], y[leftover], "leftover"
    else:
        source = None

    _check_stratifiable(y[pool], val_fraction, part="validation", knob="val_fraction")
    train_idx, val_idx = _stratified(pool, y, val_fraction, val_seed)

    splits = DataSplits(
        x_train=np.ascontiguousarray(dataset.x[train_idx]),
        t_train=np.ascontiguousarray(y[train_idx]),
        x_val=np.ascontiguousarray(dataset.x[val_idx]),
        t_val=np.ascontiguousarray(y[val_idx]),
        n_classes=dataset.n_classes,
        _x_test=None if x_test is None else np.ascontiguousarray(x_test),
        _t_test=None if t_test is None else np.ascontiguousarray(t_test),
        test_source=source,
    )
    logger.debug("split %s: %r", dataset.name, splits)
    return splits


def check_split(
    dataset: Dataset,
    *,
    val_fraction: float = 0.2,
    n_samples: int | None = None,
    subset: Literal["first", "random"] = "first",
    test_fraction: float | None = None,
    seed: int = 0,
) -> None:
    """Raise the ``ValueError`` that ``split_dataset`` would raise for these arguments, without
    splitting (which imports scikit-learn: about a second).

    One check is approximate: with ``test_fraction``, whether each class keeps 2 samples for
    the validation split is judged from the pool's class counts before the test split.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"split_dataset needs a Dataset from load_dataset, but got {type(dataset).__name__}."
        )
    _check_fraction("val_fraction", val_fraction)
    if test_fraction is not None:
        _check_fraction("test_fraction", test_fraction)
    if subset not in _SUBSETS:
        raise ValueError(f"subset must be 'first' or 'random', but got {subset=}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, but got {seed=}.")
    n_pool = dataset.n_samples
    if n_samples is not None:
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
            raise ValueError(f"n_samples must be an integer or None, but got {n_samples=}.")
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, but got {n_samples=}.")
        if n_samples > n_pool:
            raise ValueError(
                f"n_samples={n_samples} is larger than the {n_pool} samples of dataset "
                f"{dataset.name!r}; pass n_samples={n_pool} or fewer, or None to use them all."
            )
    subset_seed = int(np.random.SeedSequence(int(seed)).generate_state(3)[0])
    pool, _ = _narrow(n_pool, n_samples, subset, subset_seed)
    y = dataset.y[pool]
    if test_fraction is not None:
        _check_stratifiable(y, test_fraction, part="test", knob="test_fraction")
        n_rest = y.size - math.ceil(test_fraction * y.size)
        _check_part_sizes(n_rest, int(np.count_nonzero(np.bincount(y))), val_fraction,
                          part="validation", knob="val_fraction")  # fmt: skip
    else:
        _check_stratifiable(y, val_fraction, part="validation", knob="val_fraction")


def _check_fraction(knob: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 < float(value) < 1.0
    ):
        raise ValueError(f"{knob} must be in (0, 1), but got {knob}={value!r}.")


def _narrow(
    n_pool: int, n_samples: int | None, subset: str, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Indices of the (sub)pool and of the leftover, both in pool order."""
    if n_samples is None or n_samples == n_pool:
        return np.arange(n_pool), np.arange(0)
    if subset == "first":
        return np.arange(n_samples), np.arange(n_samples, n_pool)
    order = np.random.default_rng(seed).permutation(n_pool)
    # Sorting keeps pool order, which keeps memory access sequential when copying.
    return np.sort(order[:n_samples]), np.sort(order[n_samples:])


def _stratified(
    idx: NDArray[np.intp], y: NDArray[np.int64], fraction: float, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Split indices ``idx`` into (rest, part) with ``part`` a stratified ``fraction``."""
    # Imported on first use: sklearn.model_selection pulls in SciPy, about a second
    # that `import trainer` (and the CLI's --help) should not pay.
    from sklearn.model_selection import train_test_split

    rest, part = train_test_split(idx, test_size=fraction, stratify=y[idx], random_state=seed)
    return rest, part


def _check_stratifiable(y: NDArray[np.int64], fraction: float, *, part: str, knob: str) -> None:
    """Say, in our terms, what sklearn would reject: classes too rare or a split too small."""
    n = int(y.size)
    counts = np.bincount(y)
    present = np.flatnonzero(counts)
    rare = present[counts[present] < 2]
    if rare.size:
        label = int(rare[0])
        raise ValueError(
            f"cannot stratify the {part} split: class {label} has only {counts[label]} sample "
            f"among the {n} being split, and each class needs at least 2 (classes too rare: "
            f"{rare.tolist()}). Use more samples: a larger n_samples, or subset='random' if "
            "the first samples are unbalanced."
        )
    _check_part_sizes(n, int(present.size), fraction, part=part, knob=knob)


def _check_part_sizes(n: int, k: int, fraction: float, *, part: str, knob: str) -> None:
    """A split of `n` samples of `k` classes must leave each side at least `k` samples."""
    n_part = math.ceil(fraction * n)  # the size sklearn gives a float test_size
    if n_part < k:
        raise ValueError(
            f"{knob}={fraction} of {n} samples gives a {part} split of {n_part}, fewer than "
            f"the {k} classes it must hold; raise {knob} to at least {k / n:.3g} or use more "
            "samples."
        )
    if n - n_part < k:
        raise ValueError(
            f"{knob}={fraction} of {n} samples leaves {n - n_part} for training, fewer than "
            f"the {k} classes it must hold; lower {knob} or use more samples."
        )
