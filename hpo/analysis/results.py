"""A study's results by name, from Python: its best trial, a trial replayed, its report.

What `hpo best`, `hpo replay` and `hpo report` do, returning objects instead of printing;
the commands use these functions and print what they return. Each reads the study from its
storage and creates nothing there: a mistyped URL or name is an `hpo.ConfigError` saying what
there is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.analysis.study_report import DEFAULT_TOP, Report, write_report
from hpo.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.spec.study_file import StudySpec
    from hpo.storage.database import StorageSettings
    from trainer.data import DataSplits


def open_storage(
    storage: StorageSettings | str | None = None, *, create: bool = False
) -> optuna.storages.RDBStorage:
    """The Optuna storage at a database URL (else `$HPO_STORAGE`, else `sqlite:///hpo.db`),
    for `optuna.load_study` and the like.

    Reading is the default: a database that does not exist or holds no studies is an error,
    so a mistyped URL creates nothing; `create=True` creates the schema as `hpo run` does.
    """
    from hpo.storage.database import open_storage as _open

    return _open(_settings(storage), heartbeat=False, create=create)


def open_study(
    name: str, *, storage: StorageSettings | str | None = None
) -> tuple[optuna.Study, StudySpec]:
    """The study `name` and the definition it was created from (its study file, as stored)."""
    from hpo.storage.studies import load_existing_study, stored_spec

    study = load_existing_study(_settings(storage), name)
    return study, stored_spec(study)


def best(name: str, *, storage: StorageSettings | str | None = None) -> FrozenTrial:
    """The best completed trial of the study `name` (ties go to the lower trial number)."""
    from hpo.analysis.best import best_trial
    from hpo.storage.studies import load_existing_study

    return best_trial(load_existing_study(_settings(storage), name))


@dataclass(frozen=True, repr=False)
class Replay:
    """A recorded trial trained again with its parameters and seed, both histories of the
    study's metric side by side. No pruner intervenes: a pruned trial's replay runs on to the
    configured end, and is compared at the epochs its record has."""

    trial: FrozenTrial
    seed: int
    metric: str
    recorded: tuple[float, ...]  # per epoch, as the study recorded it
    reproduced: tuple[float, ...]  # per epoch, as trained again
    # Each training's final score, when the protocol trains several (a completed trial's).
    recorded_scores: tuple[float, ...] = ()
    reproduced_scores: tuple[float, ...] = ()

    @property
    def epochs(self) -> int:
        """The epochs the record has, which the comparison covers."""
        return len(self.recorded)

    @property
    def recorded_value(self) -> float:
        return self.recorded[-1]

    @property
    def reproduced_value(self) -> float:
        return self.reproduced[self.epochs - 1]

    @property
    def identical(self) -> bool:
        """Equal at every recorded epoch, bit for bit, and so is every training's score."""
        return (
            self.reproduced[: self.epochs] == self.recorded
            and self.recorded_scores == self.reproduced_scores[: len(self.recorded_scores)]
        )

    def __repr__(self) -> str:
        verdict = "identical" if self.identical else "DIFFERENT"
        return (
            f"Replay(trial={self.trial.number}, seed={self.seed}, {self.metric}: recorded="
            f"{self.recorded_value!r}, reproduced={self.reproduced_value!r}, {verdict})"
        )


def replayable_trial(study: optuna.Study, spec: StudySpec, number: int) -> FrozenTrial:
    """Trial `number` of `study`, if it can be replayed: a training study's trial with a
    recorded seed and history (one that ran at least an epoch)."""
    spec.require_training("hpo replay")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(number)
    if trial is None:
        raise ConfigError(
            f"study {study.study_name!r} has no trial {number} "
            f"(it has {len(trials)} trials, numbered from 0)"
        )
    if not trial.user_attrs.get("history") or trial.user_attrs.get("seed") is None:
        raise ConfigError(
            f"trial {number} of {study.study_name!r} is {trial.state.name} and has "
            "no recorded history to compare with"
        )
    return trial


def replay_of(spec: StudySpec, trial: FrozenTrial, *, splits: DataSplits | None = None) -> Replay:
    """Train a `replayable_trial` again on the study's data (loaded unless `splits` is given)."""
    from hpo.engine.objective import replay_record
    from hpo.spec.data import load_splits

    if splits is None:
        splits = load_splits(spec.data, seed=spec.study.seed)
    seed, metric = int(trial.user_attrs["seed"]), spec.study.metric
    recorded = trial.user_attrs["history"][metric]
    from optuna.trial import TrialState

    folds = None
    if spec.prunes_by_fold and trial.state == TrialState.PRUNED:  # stopped between folds
        folds = len(trial.user_attrs.get("scores", ())) or None
    again = replay_record(spec, splits, dict(trial.params), seed, folds=folds)
    return Replay(
        trial,
        seed,
        metric,
        tuple(recorded),
        tuple(again["history"][metric]),
        tuple(trial.user_attrs.get("scores", ())),
        tuple(again.get("scores", ())),
    )


def replay(
    name: str, trial: int | None = None, *, storage: StorageSettings | str | None = None
) -> Replay:
    """Train trial number `trial` of the study `name` again (default: the best trial) with its
    recorded parameters and seed, and compare it with the record, as `hpo replay` does."""
    study, spec = open_study(name, storage=storage)
    if trial is None:
        from hpo.analysis.best import best_trial

        trial = best_trial(study).number
    return replay_of(spec, replayable_trial(study, spec, trial))


def report(
    name: str,
    *,
    storage: StorageSettings | str | None = None,
    out: str | os.PathLike[str] | None = None,
    top: int = DEFAULT_TOP,
) -> Report:
    """Write the report of the study `name` to `out` (default `reports/<name>/`), as
    `hpo report --no-mlflow` does: best.txt and the figures. `Report.directory` is the folder,
    `written` its files, `skipped` the figures left out and why."""
    study, spec = open_study(name, storage=storage)
    return write_report(study, spec, report_folder(name, out), top=top)


def report_folder(name: str, out: str | os.PathLike[str] | None = None) -> Path:
    """Where a study's report goes: `out`, else `reports/<name>/` (a safe folder name)."""
    from hpo.spec.names import study_folder

    return Path(out) if out is not None else study_folder(Path("reports"), name)


def _settings(storage: StorageSettings | str | None) -> StorageSettings:
    from hpo.storage.database import StorageSettings, resolve_storage

    return storage if isinstance(storage, StorageSettings) else resolve_storage(storage)
