"""`load_study`: a study file read as `hpo run` reads it, its flags applied, ready to run."""

from __future__ import annotations

import os

from hpo.spec.study_file import StudySpec, load_study_file


def load_study(
    path: str | os.PathLike[str],
    *,
    study_name: str | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    n_trials: int | None = None,
    seed: int | None = None,
    timeout: float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> StudySpec:
    """The study file at `path`, validated, with the overrides `hpo run`'s flags of the same
    names give (a sampler or pruner named here gets its default options).

    Nothing is loaded or run. A mistake raises `hpo.ConfigError`, whose text is the line
    `hpo run` prints: the file, the key, the value and what is allowed. A file that searches
    nothing is refused here, since no study can run it.
    """
    spec = load_study_file(path).with_overrides(
        study_name=study_name,
        sampler=sampler,
        pruner=pruner,
        n_trials=n_trials,
        seed=seed,
        timeout=timeout,
    )
    if data_dir is not None:
        spec = spec.with_data_dir(os.fspath(data_dir))
    spec.require_search()
    return spec
