"""`hpo compare A.toml B.toml ...`: several study files, each file an arm of the comparison.

Each file runs as it is written (its own sampler, pruner, budget); only the seed is the
comparison's: seed k gives every arm the first file's `study.seed + k`, which also seeds the
data split, so the arms see the same split at the same seed. That is why the files must agree
on their data and on what they measure, checked here before anything trains.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from hpo.analysis.comparison.studies import Arm, ComparePlan
from hpo.errors import ConfigError
from hpo.spec.names import name_safe
from hpo.spec.study_file import StudySpec


def plan_files(
    files: Sequence[str | os.PathLike[str]],
    *,
    seeds: int,
    samplers: Sequence[str] | None = None,
    pruners: Sequence[str] | None = None,
    n_trials: int | None = None,
) -> ComparePlan:
    """The comparison of `files` as arms, the first the reference; refused (ConfigError)
    when a flag would override what the files say, a file does not load, or the files
    differ in their data, metric or direction."""
    for flag, value in (("--samplers", samplers), ("--pruners", pruners)):
        if value is not None:
            raise ConfigError(
                "with several study files each file is an arm, run with its own sampler and "
                f"pruner; drop {flag}, or compare samplers and pruners on one file",
                key=flag,
            )
    if n_trials is not None:
        raise ConfigError(
            "with several study files each file is an arm, run with its own budget "
            "([study] n_trials); drop --n-trials, or edit the files",
            key="--n-trials",
        )
    if seeds < 1:
        raise ConfigError(f"must be at least 1, but got {seeds}", key="--seeds")
    paths = [Path(os.path.abspath(f)) for f in files]
    twice = [str(f) for f, n in Counter(paths).items() if n > 1]
    if twice:
        raise ConfigError(f"{twice[0]} is given twice: each file is one arm", key="STUDY.toml")
    specs = [_load(path) for path in paths]
    for path, spec in zip(paths[1:], specs[1:], strict=True):
        _require_same(specs[0], spec, path)
    arms = tuple(
        Arm(spec.sampler.name, spec.pruner.name, file=path, label=label)
        for path, spec, label in zip(paths, specs, arm_names(paths), strict=True)
    )
    first = specs[0]
    return ComparePlan(
        spec=first,
        study_file=paths[0],
        arms=arms,
        seeds=tuple(first.study.seed + k for k in range(seeds)),
        n_trials=first.study.n_trials,
        prefix=f"compare-files-{first.study.name}",
        arm_specs={arm.name: spec for arm, spec in zip(arms, specs, strict=True)},
    )


def _load(path: Path) -> StudySpec:
    from hpo.spec.load import load_study

    spec = load_study(path)  # its errors name the file
    try:
        spec.require_training("hpo compare")
    except ConfigError as error:
        raise ConfigError(error.message, key=error.key, source=str(path)) from None
    return spec


def _require_same(reference: StudySpec, spec: StudySpec, path: Path) -> None:
    """Refuse a file whose data, metric or direction differs from the first file's: its
    test accuracy would not be comparable."""
    first = reference.path or "the first file"
    differences = [
        (f"data.{f.name}", getattr(reference.data, f.name), getattr(spec.data, f.name))
        for f in dataclasses.fields(spec.data)
    ] + [
        ("study.metric", reference.study.metric, spec.study.metric),
        ("study.direction", reference.study.direction, spec.study.direction),
    ]
    for key, theirs, mine in differences:
        if theirs != mine:
            raise ConfigError(
                f"is {mine!r} here but {theirs!r} in {first}: the arms of a comparison must "
                "train and test on the same data and measure the same metric the same way",
                key=key,
                source=str(path),
            )


def arm_names(paths: Sequence[Path]) -> list[str]:
    """Each file's stem (as a study name may hold it), made unique: where stems collide,
    their parent folders' names go in front (`a-book`, `b-book`), one more folder at a time,
    then a position (`book-2`) if even the whole paths do not tell them apart."""
    depth = [0] * len(paths)

    def name(i: int) -> str:
        folders = [p.name for p in paths[i].parents if p.name][: depth[i]]
        return name_safe("-".join([*reversed(folders), paths[i].stem]))

    while True:
        counts = Counter(name(i) for i in range(len(paths)))
        grow = [
            i
            for i in range(len(paths))
            if counts[name(i)] > 1 and depth[i] < len([p for p in paths[i].parents if p.name])
        ]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    bases = [name(i) for i in range(len(paths))]
    names: list[str] = []
    for base in bases:
        candidate, n = base, 1
        while candidate in names or (candidate != base and candidate in bases):
            n += 1
            candidate = f"{base}-{n}"
        names.append(candidate)
    return names
