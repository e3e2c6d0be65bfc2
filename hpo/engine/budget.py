"""A study's budget in epochs and its selection phase: what the next claim may do.

Decided from the study's trials alone, under the claim lock (see `hpo.engine.worker`), so
that every worker on every machine agrees. A trial is started only if its most epochs (every
training to the end) still fit beside what finished trials trained and what running and
queued trials may train: the total never exceeds `max_epochs`. Failed trials are not counted,
as they are not in `n_trials`: they are retried.

Once the search's share is spent and its last trial has ended, the selection starts: the
`finalists` best completed trials are queued again, `evaluations` times each, with seeds of
their own (`SELECTION_STREAM`), and every worker runs them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpo.spec.outcomes import COUNTED, SELECTION_OF, completed_value, is_selection, trial_epochs
from hpo.spec.seeds import derive_seed
from hpo.spec.study_file import StudySpec

SELECTION_STREAM = 9  # re-evaluation j of a finalist: derive_seed(finalist's seed, 9, j)


class Next(enum.Enum):
    ASK = enum.auto()  # start a trial (a queued one first)
    WAIT = enum.auto()  # what is left is running elsewhere
    DONE = enum.auto()  # the budget is spent
    SELECT = enum.auto()  # queue the finalists' re-evaluations, then start one


@dataclass(frozen=True)
class Budget:
    n_trials: int  # finished trials of the search
    trial_epochs: int  # the most epochs one trial trains
    search_epochs: int | None  # the search's share of max_epochs
    finalists: int
    evaluations: int
    maximize: bool

    @classmethod
    def of(cls, spec: StudySpec) -> Budget:
        return cls(
            n_trials=spec.study.n_trials,
            trial_epochs=spec.trial_epochs,
            search_epochs=spec.search_epochs,
            finalists=spec.selection.finalists,
            evaluations=spec.selection.evaluations,
            maximize=spec.study.direction == "maximize",
        )

    @property
    def in_trials_only(self) -> bool:
        """Counted in trials, with no selection: the claim's fast path (trial counts only)."""
        return self.search_epochs is None and self.finalists == 0


@dataclass(frozen=True)
class Claim:
    next: Next
    finalists: tuple[FrozenTrial, ...] = field(default=())


def decide(budget: Budget, trials: Sequence[FrozenTrial]) -> Claim:
    """What a claim does next, from every trial of the study."""
    if any(is_selection(t) for t in trials):  # the selection has started
        if any(t.state == TrialState.WAITING for t in trials):
            return Claim(Next.ASK)
        if any(t.state == TrialState.RUNNING for t in trials):
            return Claim(Next.WAIT)  # it may fail and be queued again
        return Claim(Next.DONE)
    finished = [t for t in trials if t.state in COUNTED]
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    if len(finished) < budget.n_trials:
        if len(finished) + running >= budget.n_trials:
            return Claim(Next.WAIT)
        if budget.search_epochs is None:
            return Claim(Next.ASK)
        held = sum(trial_epochs(t) for t in finished) + budget.trial_epochs * (running + waiting)
        if held + budget.trial_epochs <= budget.search_epochs:
            return Claim(Next.ASK)
        if waiting and held <= budget.search_epochs:
            return Claim(Next.ASK)  # a queued trial, already counted as held
    if running:
        return Claim(Next.WAIT)  # the finalists are chosen once the whole search has ended
    if not budget.finalists:
        return Claim(Next.DONE)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    sign = -1.0 if budget.maximize else 1.0
    complete.sort(key=lambda t: (sign * completed_value(t), t.number))
    if not complete:
        return Claim(Next.DONE)
    return Claim(Next.SELECT, tuple(complete[: budget.finalists]))


def reevaluations(finalist: FrozenTrial, evaluations: int) -> list[dict[str, Any]]:
    """The user attributes of a finalist's re-evaluation trials: whose, and their seeds."""
    seed = int(finalist.user_attrs["seed"])
    return [
        {SELECTION_OF: finalist.number, "seed": derive_seed(seed, SELECTION_STREAM, j)}
        for j in range(evaluations)
    ]
