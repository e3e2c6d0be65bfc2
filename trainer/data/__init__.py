"""Datasets for the trainer: loading, downloading and splitting.

``load_dataset(name, ...)`` turns one of ``DATASETS`` into a ``Dataset`` (pixels in
[0, 1], integer labels); ``split_dataset`` cuts it into the train/validation
arrays a trial uses, keeping any test set behind ``DataSplits.test()``;
``download_dataset`` fetches the official IDX files, verified by MD5.

Exceptions::

    ValueError
    └── DatasetError   every data problem; names the file, directory or URL at fault

Invalid arguments (a fraction outside (0, 1), say) raise plain ``ValueError``.
Nothing here reads environment variables: callers pass directories explicitly.
"""

from ._datasets import DATASETS, load_dataset
from ._download import download_dataset
from ._errors import DatasetError
from ._split import DataSplits, check_split, split_dataset
from ._types import Dataset

__all__ = [
    "DATASETS",
    "DataSplits",
    "Dataset",
    "DatasetError",
    "check_split",
    "download_dataset",
    "load_dataset",
    "split_dataset",
]
