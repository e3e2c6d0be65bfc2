"""What one trial trains under its study's evaluation protocol (see `hpo.spec.evaluation`).

A trial's trainings are fixed by the study's split and the trial's seed alone, so a replay or
a retrain gets the same data and the same networks. The first training of every protocol uses
the trial's own seed: under the book's holdout it is the only one, and whichever the protocol,
it is the network `hpo best --retrain` reproduces and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from hpo.errors import ConfigError
from hpo.spec.evaluation import HOLDOUT, KFOLD, REPEATS, RESHUFFLED, EvaluationSpec
from hpo.spec.seeds import derive_seed
from trainer.data import DataSplits

TRAINING_STREAM = 6  # training i > 0 of a trial: derive_seed(trial seed, 6, i)
RESHUFFLE_STREAM = 7  # a reshuffled holdout's split: derive_seed(trial seed, 7)
FOLDS_STREAM = 8  # the study's folds: derive_seed(study seed, 8)


@dataclass(frozen=True, eq=False)
class TrainingData:
    """One of a trial's trainings: its arrays and its seed."""

    x_train: NDArray[np.float32]
    t_train: NDArray[np.int64]
    x_val: NDArray[np.float32]
    t_val: NDArray[np.int64]
    seed: int
    n_classes: int


def trial_trainings(
    evaluation: EvaluationSpec,
    splits: DataSplits,
    *,
    trial_seed: int,
    study_seed: int,
    val_fraction: float,
) -> list[TrainingData]:
    """The trainings of the trial seeded `trial_seed`, in order (the first is the one retrained).

    kfold and reshuffled draw from the search pool, the study's training and validation
    splits together; the test split is never part of it.
    """
    seeds = [trial_seed] + [
        derive_seed(trial_seed, TRAINING_STREAM, i) for i in range(1, evaluation.trainings)
    ]
    if evaluation.protocol in (HOLDOUT, REPEATS):
        return [
            TrainingData(
                splits.x_train, splits.t_train, splits.x_val, splits.t_val, seed, splits.n_classes
            )
            for seed in seeds
        ]
    pool = search_pool(splits, trial_seed)
    x, t = pool.x_train, pool.t_train
    if evaluation.protocol == RESHUFFLED:
        from sklearn.model_selection import train_test_split

        train, val = train_test_split(
            np.arange(len(t)),
            test_size=val_fraction,
            stratify=t,
            random_state=derive_seed(trial_seed, RESHUFFLE_STREAM),
        )
        return [_part(x, t, train, val, seeds[0], splits.n_classes)]
    assert evaluation.protocol == KFOLD
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(
        n_splits=evaluation.folds, shuffle=True, random_state=derive_seed(study_seed, FOLDS_STREAM)
    )
    return [
        _part(x, t, train, val, seed, splits.n_classes)
        for (train, val), seed in zip(folds.split(x, t), seeds, strict=True)
    ]


def search_pool(splits: DataSplits, seed: int) -> TrainingData:
    """The search pool, training and validation together, as one training's data: what k-fold
    and reshuffled splits cut, and what a refit trains on. Its validation arrays are the
    study's validation split, reported on and never chosen by: the choice is made by then."""
    return TrainingData(
        np.concatenate([splits.x_train, splits.x_val]),
        np.concatenate([splits.t_train, splits.t_val]),
        splits.x_val,
        splits.t_val,
        seed,
        splits.n_classes,
    )


def _part(
    x: NDArray[np.float32],
    t: NDArray[np.int64],
    train: NDArray[np.intp],
    val: NDArray[np.intp],
    seed: int,
    n_classes: int,
) -> TrainingData:
    # Sorted: the same samples in pool order, whatever order the splitter gave them in.
    train, val = np.sort(train), np.sort(val)
    return TrainingData(
        np.ascontiguousarray(x[train]),
        np.ascontiguousarray(t[train]),
        np.ascontiguousarray(x[val]),
        np.ascontiguousarray(t[val]),
        seed,
        n_classes,
    )


def check_protocol(evaluation: EvaluationSpec, splits: DataSplits) -> None:
    """Refuse, before any study is created, a k-fold that the pool's classes cannot fill."""
    if evaluation.protocol != KFOLD:
        return
    t = np.concatenate([splits.t_train, splits.t_val])
    counts = np.bincount(t)
    present = np.flatnonzero(counts)
    rare = present[counts[present] < evaluation.folds]
    if rare.size:
        label = int(rare[0])
        raise ConfigError(
            f"folds = {evaluation.folds} needs at least {evaluation.folds} samples of each "
            f"class in the search pool (training + validation, {t.size} samples), but class "
            f"{label} has {counts[label]}; use fewer folds or more samples",
            key="evaluation.folds",
        )
