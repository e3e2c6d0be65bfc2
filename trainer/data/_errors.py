"""The one exception every data problem raises."""

from __future__ import annotations

__all__ = ["DatasetError"]


# What to do, said in this package's terms; an application with other terms (a command line's
# flags) says it in its own from `remedy`.
REMEDIES = {
    "download": "Pass download=True to fetch them.",
    "mirror": "Pass another base_url.",
}


class DatasetError(ValueError):
    """A dataset could not be found, downloaded, parsed or used.

    It subclasses ``ValueError`` so callers that already treat bad input as a
    ``ValueError`` (the CLI turns those into one clear line) need no new branch.
    The message always names the dataset, file, directory or URL at fault and
    says what to do about it: ``problem`` is what went wrong, and ``remedy`` (a key of
    ``REMEDIES``, or None) the fix, so that a caller can say the fix its own way.
    """

    def __init__(
        self, problem: str, *, remedy: str | None = None, dataset: str | None = None
    ) -> None:
        self.problem, self.remedy, self.dataset = problem, remedy, dataset
        super().__init__(f"{problem} {REMEDIES[remedy]}" if remedy else problem)
