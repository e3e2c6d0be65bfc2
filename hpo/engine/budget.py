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

from hpo.spec.outcomes import (
    COUNTED,
    SELECTION_INDEX,
    SELECTION_OF,
    completed_value,
    is_selection,
    trial_epochs,
)
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
    # Next.SELECT: the re-evaluations to queue, as (finalist, index j), and the queued search
    # trials to drop (a retry or an [[enqueue]] table the search's share cannot hold any more).
    queue: tuple[tuple[FrozenTrial, int], ...] = field(default=())
    drop: tuple[FrozenTrial, ...] = field(default=())


MAX_ATTEMPTS = 2  # a re-evaluation that failed is queued once more; then its finalist goes short


def decide(budget: Budget, trials: Sequence[FrozenTrial]) -> Claim:
    """What a claim does next, from every trial of the study."""
    search = [t for t in trials if not is_selection(t)]
    running = sum(t.state == TrialState.RUNNING for t in search)
    if not any(is_selection(t) for t in trials):
        finished = [t for t in search if t.state in COUNTED]
        if len(finished) < budget.n_trials:
            if len(finished) + running >= budget.n_trials:
                return Claim(Next.WAIT)
            if budget.search_epochs is None:
                return Claim(Next.ASK)
            # A queued trial is asked first (Optuna's rule), and costs what a new one does.
            held = sum(trial_epochs(t) for t in finished) + budget.trial_epochs * running
            if held + budget.trial_epochs <= budget.search_epochs:
                return Claim(Next.ASK)
        if running:
            return Claim(Next.WAIT)  # the finalists are chosen once the whole search has ended
        if not budget.finalists:
            return Claim(Next.DONE)
    elif running:  # a search trial asked before the selection began, still training
        return Claim(Next.WAIT)
    missing = _missing_reevaluations(budget, trials)
    leftovers = tuple(t for t in search if t.state == TrialState.WAITING)
    if missing or leftovers:
        return Claim(Next.SELECT, missing, leftovers)
    selection = [t for t in trials if is_selection(t)]
    if any(t.state == TrialState.WAITING for t in selection):
        return Claim(Next.ASK)
    if any(t.state == TrialState.RUNNING for t in selection):
        return Claim(Next.WAIT)  # it may fail, and be queued again
    return Claim(Next.DONE)


def finalists(budget: Budget, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The search's best completed trials, ties to the lower number: once the search has
    ended, the same on every call."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and not is_selection(t)]
    sign = -1.0 if budget.maximize else 1.0
    complete.sort(key=lambda t: (sign * completed_value(t), t.number))
    return complete[: budget.finalists]


def _missing_reevaluations(
    budget: Budget, trials: Sequence[FrozenTrial]
) -> tuple[tuple[FrozenTrial, int], ...]:
    """The re-evaluations not queued yet, or queued and failed fewer than MAX_ATTEMPTS times:
    queueing is idempotent, so a claim interrupted half-way is completed by the next one."""
    failed: dict[tuple[int, int], int] = {}
    alive: set[tuple[int, int]] = set()
    unnumbered: dict[int, int] = {}  # queued before re-evaluations had an index: in order
    for t in sorted((t for t in trials if is_selection(t)), key=lambda t: t.number):
        finalist = int(t.user_attrs[SELECTION_OF])
        index = t.user_attrs.get(SELECTION_INDEX)
        if index is None:
            index = unnumbered[finalist] = unnumbered.get(finalist, -1) + 1
        key = (finalist, int(index))
        if t.state == TrialState.FAIL:
            failed[key] = failed.get(key, 0) + 1
        else:
            alive.add(key)
    return tuple(
        (finalist, j)
        for finalist in finalists(budget, trials)
        for j in range(budget.evaluations)
        if (finalist.number, j) not in alive and failed.get((finalist.number, j), 0) < MAX_ATTEMPTS
    )


def reevaluation(finalist: FrozenTrial, j: int) -> dict[str, Any]:
    """The user attributes of a finalist's re-evaluation j: whose, which, and its seed."""
    seed = int(finalist.user_attrs["seed"])
    return {
        SELECTION_OF: finalist.number,
        SELECTION_INDEX: j,
        "seed": derive_seed(seed, SELECTION_STREAM, j),
    }
