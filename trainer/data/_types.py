"""The loaded-dataset value object shared by the loaders and the splitter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ._errors import DatasetError

__all__ = ["Dataset"]


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A labelled pool of samples, plus an official test set when the source has one.

    ``x``: (n_samples, n_features) float32 in [0, 1], C-contiguous; ``y``: (n_samples,)
    int64 labels in ``0 .. n_classes - 1``. ``test_x``/``test_y`` follow the same
    layout. The arrays are read-only views because one loaded ``Dataset`` is meant
    to be shared by many trials: ``split_dataset`` copies what each trial gets.
    """

    name: str
    x: NDArray[np.float32]
    y: NDArray[np.int64]
    n_classes: int
    source: str
    test_x: NDArray[np.float32] | None = None
    test_y: NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        _check_pair(self, "x", "y", self.x, self.y)
        if (self.test_x is None) != (self.test_y is None):
            raise DatasetError(
                f"dataset {self.name!r} from {self.source}: test_x and test_y must be given "
                "together; pass both or neither."
            )
        if self.test_x is not None and self.test_y is not None:
            _check_pair(self, "test_x", "test_y", self.test_x, self.test_y)
            if self.test_x.shape[1] != self.x.shape[1]:
                raise DatasetError(
                    f"dataset {self.name!r} from {self.source}: test_x has "
                    f"{self.test_x.shape[1]} features but x has {self.x.shape[1]}; "
                    "the test set must come from the same source as the pool."
                )
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int | np.integer):
            raise DatasetError(
                f"dataset {self.name!r}: n_classes must be an int, but got {self.n_classes=}."
            )
        if self.n_classes < 1:
            raise DatasetError(
                f"dataset {self.name!r}: n_classes must be at least 1, but got {self.n_classes=}."
            )
        for label_name, labels in (("y", self.y), ("test_y", self.test_y)):
            if labels is not None and labels.size and int(labels.max()) >= self.n_classes:
                raise DatasetError(
                    f"dataset {self.name!r} from {self.source}: {label_name} holds label "
                    f"{int(labels.max())}, but n_classes={self.n_classes}; labels must be in "
                    f"0..{self.n_classes - 1}."
                )
        # Hold read-only views: the caller's own arrays keep their flags.
        for field_name in ("x", "y", "test_x", "test_y"):
            array = getattr(self, field_name)
            if array is not None:
                view = array.view()
                view.flags.writeable = False
                object.__setattr__(self, field_name, view)

    @property
    def n_samples(self) -> int:
        """Size of the pool (not counting the official test set)."""
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    def __repr__(self) -> str:
        test = "None" if self.test_x is None else str(self.test_x.shape)
        return (
            f"Dataset(name={self.name!r}, x={self.x.shape}, y={self.y.shape}, "
            f"n_classes={self.n_classes}, test_x={test}, source={self.source!r})"
        )


def _check_pair(dataset: Dataset, x_name: str, y_name: str, x: object, y: object) -> None:
    # Loaders always build correct arrays; this guards hand-built Datasets (tests,
    # notebooks) so a wrong dtype fails here rather than deep inside training.
    where = f"dataset {dataset.name!r} from {dataset.source}"
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise DatasetError(
            f"{where}: {x_name} must be a 2-D float32 array (n_samples, n_features), but got "
            f"{_describe(x)}; convert it with np.asarray(..., dtype=np.float32).reshape(n, -1)."
        )
    if not x.flags.c_contiguous:
        raise DatasetError(
            f"{where}: {x_name} must be C-contiguous; pass np.ascontiguousarray({x_name})."
        )
    if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
        raise DatasetError(
            f"{where}: {y_name} must be a 1-D int64 array (n_samples,), but got "
            f"{_describe(y)}; convert it with np.asarray(..., dtype=np.int64)."
        )
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{where}: {x_name} has {x.shape[0]} samples but {y_name} has {y.shape[0]}; "
            "they must have one label per sample."
        )
    if y.size and int(y.min()) < 0:
        raise DatasetError(f"{where}: {y_name} holds negative label {int(y.min())}.")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"a {type(value).__name__}"
