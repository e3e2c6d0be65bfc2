"""How trials end, in words defined once for every layer.

A trial *counts* towards a study's budget (`n_trials`) when it completed or was pruned: both
are results. A failed trial does not count (it is retried once), but it has *ended* all the
same: it will not run again, so its history is final and it is mirrored to MLflow. The best
trial is the best completed one, ties going to the lower number (`ranked_trials`).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

COUNTED: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)
ENDED: tuple[TrialState, ...] = (*COUNTED, TrialState.FAIL)
COUNTED_NAMES: tuple[str, ...] = tuple(state.name for state in COUNTED)


def completed_value(trial: FrozenTrial) -> float:
    """A completed trial's value: Optuna types `value` optional, since other states have none."""
    assert trial.value is not None, f"trial {trial.number} is {trial.state.name}, not complete"
    return trial.value


# What every epoch of a training trial records, in this order.
EPOCH_METRICS: tuple[str, ...] = ("train_loss", "train_acc", "val_loss", "val_acc")


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first (ties by trial number, so the order is stable)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(trials, key=lambda t: (sign * completed_value(t), t.number))
