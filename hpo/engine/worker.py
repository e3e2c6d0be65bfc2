"""One worker's loop over a study: claim a trial, run it with a heartbeat, tell how it ended.

The one place that decides how a trial ends: the objective returns a value or raises
`TrialPruned`; anything else fails that trial (its message kept) and the study goes on.

The budget is exact. A trial is claimed only while finished (complete or pruned) plus running
trials stay below `n_trials`, counted and claimed under the storage lock, so several workers
never overshoot as Optuna's `MaxTrialsCallback` does. When the rest of the budget is held by
other workers' running trials, a worker waits instead of leaving: one of those trials may
fail, or go stale because its worker died, and then it is retried here.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.engine.budget import Budget, Claim, Next, decide, reevaluation
from hpo.spec.outcomes import COUNTED_NAMES
from hpo.storage.database import StorageSettings
from hpo.storage.locks import StorageLock
from hpo.storage.optuna_adapter.internals import stale_trial_ids, trial_id_of
from hpo.storage.optuna_adapter.queries import count_trials, orphaned_trial_ids
from hpo.storage.retry import OUTAGES, Backoff, describe_error, is_transient
from hpo.storage.studies import JoinedStudy

logger = logging.getLogger(__name__)

Objective = Callable[[optuna.Trial], float]
TrialListener = Callable[[optuna.trial.FrozenTrial], None]


class _Wait(enum.Enum):
    """A claim's answer while the rest of the budget is running elsewhere (a typed sentinel)."""

    WAIT = enum.auto()


_WAIT = _Wait.WAIT


@dataclass
class WorkerResult:
    """What one worker did in one invocation."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    stopped_by: str = "budget"  # "budget", "timeout", "failures" or "interrupt"
    errors: list[str] = field(default_factory=list)

    @property
    def trials(self) -> int:
        return self.complete + self.pruned + self.failed


class _Periodic:
    """Calls `tick()` every `period` s from a daemon thread, between `with` and its end."""

    name = "hpo-periodic"
    join_timeout: float | None = None

    def __init__(self, period: float) -> None:
        self.period = period
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def __enter__(self) -> _Periodic:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join(timeout=self.join_timeout)

    def _loop(self) -> None:
        while not self._done.wait(self.period):
            self.tick()

    def tick(self) -> None:
        raise NotImplementedError


class _Heartbeat(_Periodic):
    """Records the trial's heartbeat every `interval` s from a thread.

    The first beat comes after one interval, so a trial shorter than that writes none: if its
    worker dies, the sweep for trials that never beat (`orphaned_trial_ids`) fails it after
    the same grace period. A missed beat (the database briefly unreachable) is logged once and
    retried at the next one.
    """

    name = "hpo-heartbeat"

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float):
        super().__init__(interval)
        self.storage, self.trial_id = storage, trial_id
        self.missed = 0

    def tick(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as error:  # a beat must never kill the worker
            if is_transient(error):
                OUTAGES.unreachable()
            if not self.missed:
                logger.warning(
                    "heartbeat of trial id %s failed (%s); trying again every %s s",
                    self.trial_id,
                    describe_error(error),
                    self.period,
                )
            self.missed += 1
            return
        OUTAGES.reachable()
        if self.missed:
            logger.warning(
                "heartbeat of trial id %s is back after %d missed", self.trial_id, self.missed
            )
            self.missed = 0


class _Sweeper(_Periodic):
    """Looks for dead workers' trials every `period` s from a thread, while this worker trains.

    Without it, a dead worker's trial would be failed (and its retry queued) only at the next
    claim of a live worker, a whole trial later; with it, within the grace period plus one
    `period`. A sweep that meets a database outage is skipped; the next one tries again.
    """

    name = "hpo-sweeper"
    join_timeout = 10.0  # a sweep stuck on a dead connection must not hang the worker's end

    def __init__(self, sweep: Callable[[], None], period: float) -> None:
        super().__init__(period)
        self.sweep = sweep

    def tick(self) -> None:
        try:
            self.sweep()
        except Exception as error:  # never fatal: the claims sweep too
            if is_transient(error):
                OUTAGES.unreachable()
            logger.debug("sweep for stale trials skipped: %s", describe_error(error))


class Worker:
    """Runs trials of one study until its budget is spent, time is up, or it is interrupted."""

    def __init__(
        self,
        joined: JoinedStudy,
        settings: StorageSettings,
        objective: Objective,
        *,
        n_trials: int,
        timeout: float | None = None,
        on_trial_end: TrialListener | None = None,
        poll_interval: float = 1.0,
        max_consecutive_failures: int = 10,
        budget: Budget | None = None,
    ) -> None:
        self.joined = joined
        self.budget = budget
        self.settings = settings
        self.objective = objective
        self.n_trials = n_trials
        self.timeout = timeout
        self.on_trial_end = on_trial_end
        self.poll_interval = poll_interval
        self.max_consecutive_failures = max_consecutive_failures
        # As patient as a storage call: during a restart, taking the lock waits for the server.
        self._claims = StorageLock(
            settings, f"claim:{joined.study.study_name}", timeout=settings.patience, reuse=True
        )
        self._swept = False  # the first claim looks for dead workers' trials
        self._sweep_locks: dict[int, StorageLock] = {}

    @property
    def study(self) -> optuna.Study:
        return self.joined.study

    def run(self) -> WorkerResult:
        result = WorkerResult()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        sweeper = _Sweeper(self._sweep_in_background, self.settings.grace_period / 2)
        try:
            with sweeper:
                return self._run_until_done(result, deadline)
        except KeyboardInterrupt:
            result.stopped_by = "interrupt"
            self._fail_own_running_trials()
            raise
        finally:
            self._claims.close()
            for lock in self._sweep_locks.values():
                lock.close()

    def _fail_own_running_trials(self) -> None:
        """On a stop: fail the trial this worker had started and not yet told, wherever the
        stop came (while it was asked for, sampled, or told), so none is left RUNNING."""
        batched = self.joined.batched
        if batched is None:  # the adapter is off: Optuna's own storage knows no live trials,
            return  # and a stop outside training leaves the trial to the sweep, as in Optuna
        for trial_id in batched.live_trial_ids():
            # UpdateFinishedTrialError: its tell was stored after all, or a sweeper failed it.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                batched.set_trial_state_values(trial_id, TrialState.FAIL)

    def _run_until_done(self, result: WorkerResult, deadline: float | None) -> WorkerResult:
        streak = 0
        while True:
            trial = self._claim(deadline)
            if trial is None:
                result.stopped_by = (
                    "timeout"
                    if deadline is not None and time.monotonic() >= deadline
                    else "budget"
                )
                return result
            failed_before = result.failed
            self._run_trial(trial, result)
            streak = streak + 1 if result.failed > failed_before else 0
            if streak >= self.max_consecutive_failures:
                # Failed trials do not count towards the budget: a broken objective would
                # otherwise start trials forever.
                result.stopped_by = "failures"
                return result

    def _sweep_in_background(self) -> None:
        with self.joined.retrying.suspended():  # an outage skips a sweep instead of waiting
            self._fail_dead_workers_trials()

    def counts(self) -> dict[str, int]:
        """Trials by state; under the claim lock, on the lock's connection if it has one."""
        return count_trials(
            self.joined.storage,
            self.joined.study_id,
            self._claims.connection,
            adapter=self.joined.adapter,
        )

    def _claim(self, deadline: float | None) -> optuna.Trial | None:
        """The next trial to run, or None once the budget is spent or the deadline passed.

        A claim that loses its database connection is retried whole, with backoff: the lock
        lives on a connection too, and counting under a lost lock could overshoot the budget.
        """
        waiting = False
        backoff: Backoff | None = None
        while deadline is None or time.monotonic() < deadline:
            try:
                with self._claims, self.joined.retrying.suspended():
                    decision = self._try_claim(sweep=waiting)
            except Exception as error:
                if not is_transient(error):
                    raise
                backoff = backoff or Backoff(
                    what=f"the storage {self.settings.redacted()}",
                    patience=self.settings.patience,
                )
                backoff.wait(error)
                continue
            if backoff is not None:
                backoff.recovered()
                backoff = None
            if decision is not _WAIT:
                return decision
            waiting = True
            time.sleep(self.poll_interval)  # the rest of the budget is running elsewhere
        return None

    def _try_claim(self, *, sweep: bool) -> optuna.Trial | _Wait | None:
        """Under the claim lock: a new trial, None when the budget is spent, or `_WAIT`."""
        # While trials run, the sweeper thread looks for dead workers' trials; a claim looks
        # only first (a resumed study's) and while the rest of the budget is held by running
        # trials, one of which may be a dead worker's.
        if sweep or not self._swept:
            self._fail_dead_workers_trials()
            self._swept = True
        if self.budget is not None and not self.budget.in_trials_only:
            return self._try_claim_within(self.budget)
        counts = self.counts()
        finished = sum(counts.get(state, 0) for state in COUNTED_NAMES)
        if finished >= self.n_trials:
            return None
        if finished + counts.get("RUNNING", 0) >= self.n_trials:
            return _WAIT
        # Counted under the lock: `ask` need not look for waiting trials if there are none.
        if self.joined.batched is not None:
            self.joined.batched.expect_waiting(counts.get("WAITING", 0))
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for Study.optimize; this loop is our
            # Study.optimize, with the heartbeat below.
            warnings.simplefilter("ignore", UserWarning)
            return self.study.ask()

    def _try_claim_within(self, budget: Budget) -> optuna.Trial | _Wait | None:
        """`_try_claim` for a budget of epochs or a selection, decided from the study's trials
        (see `hpo.engine.budget`)."""
        trials = self.study.get_trials(deepcopy=False)
        claim = decide(budget, trials)
        if claim.next is Next.SELECT:  # under this lock: queued once, whoever comes first
            self._start_selection(claim)
            trials = self.study.get_trials(deepcopy=False)
            claim = decide(budget, trials)
        if claim.next is Next.DONE:
            return None
        if claim.next is not Next.ASK:
            return _WAIT
        if self.joined.batched is not None:  # counted in the trials just read, not again
            self.joined.batched.expect_waiting(sum(t.state == TrialState.WAITING for t in trials))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # see _try_claim
            return self.study.ask()

    def _start_selection(self, claim: Claim) -> None:
        """Queue the finalists' missing re-evaluations; fail the search trials still queued,
        which the search's share can no longer hold (they would run after the finalists were
        chosen)."""
        for trial in claim.drop:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self.joined.retrying.set_trial_state_values(trial_id_of(trial), TrialState.FAIL)
            logger.warning(
                "trial %d was queued but the search's budget is spent: failed it, unrun",
                trial.number,
            )
        for finalist, j in claim.queue:
            self.study.enqueue_trial(dict(finalist.params), user_attrs=reevaluation(finalist, j))
        if claim.queue:
            logger.info(
                "search done: %d re-evaluations of its best trials queued", len(claim.queue)
            )

    def _fail_dead_workers_trials(self) -> None:
        """Fail trials whose worker died (stale heartbeat, or none at all) and retry them once.

        Optuna does the stale part only when a worker starts a trial through Study.optimize; a
        resuming run must do it too, or the last dead worker's trial would stay RUNNING. Right
        after a storage outage nothing is judged for a grace period (see `Outages`).

        Each dead trial's retry is created before the trial is failed, and only if it has
        none, under the study's sweep lock: a sweeper killed between the two steps leaves a
        trial still RUNNING (the next sweep fails it) rather than a failed trial without its
        retry, which Optuna's `fail_stale_trials` can leave (fail first, retry after).
        """
        if OUTAGES.down:  # back now? (this raises if not)
            count_trials(self.joined.storage, self.joined.study_id, adapter=self.joined.adapter)
            OUTAGES.reachable()
        if not OUTAGES.settled(self.settings.grace_period):
            logger.debug("the storage is back from an outage: waiting for heartbeats")
            return
        storage = self.joined.retrying
        if not self.joined.adapter:  # Optuna's public sweep
            with self._sweep_lock(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            return
        stale = set(stale_trial_ids(storage, self.joined.study_id))
        orphaned = set(
            orphaned_trial_ids(
                self.joined.storage, self.joined.study_id, self.settings.grace_period, adapter=True
            )
        )
        if not stale and not orphaned:
            return
        retry = storage.get_heartbeat_stale_trial_callback()
        with self._sweep_lock():
            retried = {
                history[-1]
                for t in self.study.get_trials(deepcopy=False)
                if (history := t.system_attrs.get("retry_history"))
            }
            for trial_id in sorted(stale | orphaned):
                trial = storage.get_trial(trial_id)
                if trial.state != TrialState.RUNNING:
                    continue  # another sweep was first
                if retry is not None and trial.number not in retried:
                    retry(self.study, copy.deepcopy(trial))
                try:
                    storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue
                self._say_failed(trial, never_beat=trial_id in orphaned, retried=retry is not None)

    def _say_failed(self, trial: FrozenTrial, *, never_beat: bool, retried: bool) -> None:
        why = (
            f"recorded no heartbeat in the {self.settings.grace_period} s since it started"
            if never_beat
            else f"sent no heartbeat for {self.settings.grace_period} s"
        )
        logger.warning(
            "trial %d %s, so its worker is presumed dead; failed it%s",
            trial.number,
            why,
            " (it is retried once)" if retried else "",
        )

    def _sweep_lock(self) -> StorageLock:
        """This thread's handle on the study's sweep lock (the claims and the sweeper thread
        each sweep; a lock handle belongs to one thread)."""
        key = threading.get_ident()
        if key not in self._sweep_locks:
            name = f"sweep:{self.study.study_name}"
            # Sweeps are seconds apart: the lock's connection is given back after each.
            self._sweep_locks[key] = StorageLock(
                self.settings, name, timeout=self.settings.patience
            )
        return self._sweep_locks[key]

    def _run_trial(self, trial: optuna.Trial, result: WorkerResult) -> None:
        # The heartbeat lasts until the storage knows how the trial ended: a `tell` that
        # waits out an outage keeps beating, so that other workers do not fail it as stale.
        with _Heartbeat(self.joined.storage, trial_id_of(trial), self.settings.heartbeat_interval):
            frozen = self._train_and_tell(trial, result)
        if frozen.state == TrialState.COMPLETE:
            result.complete += 1
        elif frozen.state == TrialState.PRUNED:
            result.pruned += 1
        else:
            result.failed += 1
        if self.on_trial_end is not None:
            self.on_trial_end(frozen)

    def _train_and_tell(self, trial: optuna.Trial, result: WorkerResult) -> FrozenTrial:
        state, value = TrialState.FAIL, None
        try:
            value = self.objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as error:  # one failed trial must not end the study
            message = f"trial {trial.number} failed: {type(error).__name__}: {error}"
            logger.warning(message)
            result.errors.append(message)
        try:
            if state == TrialState.COMPLETE:
                return self.study.tell(trial, value)  # a NaN value makes Optuna fail it
            return self.study.tell(trial, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Its heartbeats were missed for a grace period (the database was down that
            # long), so another worker failed it as stale and queued its retry.
            message = f"trial {trial.number} was failed as stale while it ran; it is retried"
            logger.warning(message)
            result.errors.append(message)
            return self.joined.retrying.get_trial(trial_id_of(trial))
