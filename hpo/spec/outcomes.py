"""How trials end, in words defined once for every layer.

A trial *counts* towards a study's budget (`n_trials`) when it completed or was pruned: both
are results. A failed trial does not count (it is retried once), but it has *ended* all the
same: it will not run again, so its history is final and it is mirrored to MLflow. The best
trial is the best completed one, ties going to the lower number (`ranked_trials`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

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
    """Completed trials of the search, best first (ties by trial number, so the order is
    stable). After a selection, its finalists come first, best mean first: the first is the
    study's winner (see `selection_estimates`); re-evaluation trials are not listed."""
    trials = study.get_trials(deepcopy=False, states=COUNTED)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    sign = -1.0 if maximize else 1.0
    finalists = [e.trial for e in _estimates(trials, maximize)]
    chosen = {t.number for t in finalists}
    rest = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and not is_selection(t) and t.number not in chosen
    ]
    return finalists + sorted(rest, key=lambda t: (sign * completed_value(t), t.number))


# -- trials of a study with a [selection] (see hpo.spec.evaluation) ------------------------------

SELECTION_OF = "selection_of"  # user attribute of a re-evaluation trial: its finalist's number
SELECTION_INDEX = "selection_index"  # and which of the finalist's re-evaluations it is


def is_selection(trial: FrozenTrial) -> bool:
    """A trial of the selection (a finalist evaluated again), not of the search."""
    return SELECTION_OF in trial.user_attrs


def trial_epochs(trial: FrozenTrial) -> int:
    """Epochs the trial trained, all its trainings together (what `max_epochs` counts)."""
    epochs = trial.user_attrs.get("epochs")
    if epochs is not None:
        return int(epochs)
    return len((trial.user_attrs.get("history") or {}).get("val_acc", []))


def trial_scores(trial: FrozenTrial) -> list[float]:
    """A completed trial's score per training: its `scores` under a protocol that trains
    several, else its one value."""
    scores = trial.user_attrs.get("scores")
    return [float(s) for s in scores] if scores else [completed_value(trial)]


@dataclass(frozen=True)
class Estimate:
    """A finalist's estimate: the mean of every training of it, the search's and the
    selection's, with their spread (sample standard deviation; 0 for one)."""

    trial: FrozenTrial
    scores: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if self.n > 1 else 0.0


def selection_estimates(study: optuna.Study) -> list[Estimate]:
    """The finalists of the study's selection, best mean first (ties by trial number); empty
    when no selection has run."""
    trials = study.get_trials(deepcopy=False, states=COUNTED)
    return _estimates(trials, study.direction == optuna.study.StudyDirection.MAXIMIZE)


def _estimates(trials: list[FrozenTrial], maximize: bool) -> list[Estimate]:
    """A diverged re-evaluation counts as the worst score there is (accuracy 0, loss infinite):
    a finalist that diverges on other seeds is not the one to pick."""
    worst = 0.0 if maximize else math.inf
    scores: dict[int, list[float]] = {}
    for trial in trials:
        if not is_selection(trial):
            continue
        mine = scores.setdefault(int(trial.user_attrs[SELECTION_OF]), [])
        if trial.state == TrialState.COMPLETE:
            mine.extend(trial_scores(trial))
        elif trial.user_attrs.get("diverged"):
            mine.append(worst)
    finalists = [t for t in trials if t.number in scores and t.state == TrialState.COMPLETE]
    estimates = [Estimate(t, (*trial_scores(t), *scores[t.number])) for t in finalists]
    sign = -1.0 if maximize else 1.0
    return sorted(estimates, key=lambda e: (sign * e.mean, e.trial.number))
