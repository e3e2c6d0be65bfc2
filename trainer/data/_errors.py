"""The one exception every data problem raises."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset could not be found, downloaded, parsed or used.

    It subclasses ``ValueError`` so callers that already treat bad input as a
    ``ValueError`` (the CLI turns those into one clear line) need no new branch.
    The message always names the dataset, file, directory or URL at fault and
    says what to do about it.
    """
