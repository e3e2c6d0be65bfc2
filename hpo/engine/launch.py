"""Working on a prepared study: in this process, or in N worker processes that end with it."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna

from hpo.engine.budget import Budget
from hpo.engine.objective import Objective, TrialObserver
from hpo.engine.pruning import PruningMirror
from hpo.engine.signals import Lifeline, signal_name
from hpo.engine.worker import Worker, WorkerResult
from hpo.spec.data import load_splits
from hpo.spec.outcomes import COUNTED, COUNTED_NAMES
from hpo.spec.study_file import StudySpec
from hpo.storage.database import StorageSettings
from hpo.storage.optuna_adapter.batched import FlushAtStart
from hpo.storage.optuna_adapter.queries import count_trials
from hpo.storage.retry import call_with_retry, is_transient
from hpo.storage.studies import JoinedStudy, join_study
from hpo.tracking.mirror import MIRROR_FD_ENV, Mirror, TrialMirror
from trainer import EpochMetrics
from trainer.data import DataSplits

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, float | None], None]  # (finished trials, best value)
WORKER_STOP_WAIT_S = 60.0  # after a stop signal, how long workers get to mark their trials


@dataclass
class RunOutcome:
    finished: int
    interrupted: bool = False
    stop_signal: str = "SIGINT"  # what interrupted this run, when `interrupted`
    timed_out: bool = False
    errors: tuple[str, ...] = ()
    worker_failures: int = 0  # worker processes that failed (an error, or killed)
    worker_stops: tuple[str, ...] = ()  # worker processes stopped by a signal of their own
    worker_lines: tuple[str, ...] = ()  # what happened to each worker that did not end well
    gave_up: bool = False  # too many trials failed in a row
    trials: tuple[int, ...] = ()  # numbers of the trials this process ran to their end


def _finished(counts: dict[str, int]) -> int:
    return sum(counts.get(state, 0) for state in COUNTED_NAMES)


def pruning_mirror(joined: JoinedStudy, spec: StudySpec) -> PruningMirror | None:
    """The in-memory pruning mirror a worker needs, if its study prunes at all."""
    if not spec.decision_epochs:
        return None
    return PruningMirror(joined.study, joined.study.pruner, spec.study.metric)


def settle_heap() -> None:
    """Before the trial loop: what exists now (modules, data, the study) lives as long as the
    worker, so the collector stops walking it. Measured with the storage benchmark, the
    collector's full passes over it cost about 3 ms of every book-6.5 trial's claim and tell."""
    gc.collect()
    gc.freeze()


class RecordWorker:
    """An objective's observer: each trial names the worker that trains it (user attribute
    `worker`, "host:pid"), written with its parameters when training starts. In a study
    shared by many machines, that says where a trial ran, or which worker to look at while
    it runs."""

    def __init__(self) -> None:
        self.label = f"{socket.gethostname()}:{os.getpid()}"

    def trial_started(self, trial: optuna.trial.BaseTrial, seed: int) -> None:
        trial.set_user_attr("worker", self.label)

    def epoch_ended(
        self, trial: optuna.trial.BaseTrial, epoch: int, metrics: EpochMetrics
    ) -> None:
        pass

    def trial_ending(self, trial: optuna.trial.BaseTrial) -> None:
        pass


def build_objective(
    joined: JoinedStudy,
    spec: StudySpec,
    splits: DataSplits | None,
    *,
    observers: tuple[TrialObserver, ...] = (),
) -> Callable[[optuna.Trial], float]:
    """The objective a worker runs: its trials' parameters, seed and worker are written as each
    starts (`FlushAtStart`), before the other observers (MLflow) hear of it."""
    flush = (FlushAtStart(joined.retrying),) if joined.adapter else ()
    observers = (RecordWorker(), *flush, *observers)
    if splits is None:  # optimizer paths or activations: no data, nothing trained
        from hpo.engine.probes import ProbeObjective

        return ProbeObjective(spec, observers=observers)
    return Objective(spec, splits, mirror=pruning_mirror(joined, spec), observers=observers)


def load_study_data(spec: StudySpec) -> DataSplits | None:
    """The study's data, split as every worker splits it; None for a study that trains nothing.

    `hpo run` calls it before it creates anything, so that missing or corrupt data is one
    line and leaves no empty study behind."""
    return load_splits(spec.data, seed=spec.study.seed) if spec.trains else None


def run_in_process(
    spec: StudySpec,
    settings: StorageSettings,
    *,
    mirror: TrialMirror | None = None,
    splits: DataSplits | None = None,
    progress: ProgressCallback | None = None,
) -> RunOutcome:
    """One worker in this process: load the data (unless given), then run trials until done.

    `mirror` sends the trials to MLflow (see `hpo.tracking.mirror`); its owner closes it."""
    joined = join_study(settings, spec)
    if splits is None:
        splits = load_study_data(spec)
    objective = build_objective(joined, spec, splits, observers=(mirror,) if mirror else ())
    tracker = _ProgressTracker(joined, progress)
    ran: list[int] = []

    def on_trial_end(trial: optuna.trial.FrozenTrial) -> None:
        if mirror is not None:
            mirror.trial_finished(trial)
        tracker.trial_ended(trial)
        ran.append(trial.number)

    worker = Worker(
        joined,
        settings,
        objective,
        n_trials=spec.study.n_trials,
        timeout=spec.study.timeout,
        on_trial_end=on_trial_end,
        budget=Budget.of(spec),
    )
    tracker.refresh()
    settle_heap()
    try:
        result: WorkerResult = worker.run()
    except KeyboardInterrupt as stop:
        finished = _finished(_counts_if_reachable(worker))
        return RunOutcome(
            finished, interrupted=True, stop_signal=signal_name(stop), trials=tuple(ran)
        )
    finally:
        joined.storage.engine.dispose()
    return RunOutcome(
        _finished(
            call_with_retry(
                count_trials, joined.storage, joined.study_id, patience=settings.patience
            )
        ),
        timed_out=result.stopped_by == "timeout",
        errors=tuple(result.errors),
        gave_up=result.stopped_by == "failures",
        trials=tuple(ran),
    )


def _counts_if_reachable(worker: Worker) -> dict[str, int]:
    try:
        return worker.counts()
    except Exception as error:  # the storage is down: the count is not worth waiting for
        logger.debug("could not count the trials: %s", error)
        return {}


def run_worker_processes(
    spec: StudySpec,
    settings: StorageSettings,
    child_argv: Sequence[str],
    workers: int,
    *,
    mirror: Mirror | None = None,
    progress: ProgressCallback | None = None,
    poll_interval: float = 0.5,
) -> RunOutcome:
    """Start `workers` processes running `hpo <child_argv>`, each with one BLAS thread.

    The study is already prepared, so the workers only join it. Progress comes from the
    storage, which is the truth for every worker on every machine. The workers end with this
    process however it ends (see `hpo.engine.signals`); a stop signal here is passed on to them.
    """
    lifeline = Lifeline()
    children = _start_workers(settings, child_argv, workers, lifeline, mirror)
    from hpo.storage.database import open_storage

    storage = open_storage(settings, heartbeat=False)
    study_id = storage.get_study_id_from_name(spec.study.name)
    study = optuna.load_study(study_name=spec.study.name, storage=storage)
    stop: KeyboardInterrupt | None = None
    finished_when_ended: dict[int, int] = {}  # per worker: the study's finished trials then
    try:
        while any(child.poll() is None for child in children):
            _note_ended(children, finished_when_ended, storage, study_id)
            if progress is not None:
                try:
                    progress(_finished(count_trials(storage, study_id)), _best(study))
                except Exception as error:  # the workers ride out an outage; so does the bar
                    if not is_transient(error):
                        raise
            time.sleep(poll_interval)
    except KeyboardInterrupt as interrupt:
        stop = interrupt
        _stop_workers(children, signal.Signals[signal_name(interrupt)])
    finally:
        lifeline.close()
    try:
        finished = _finished(
            call_with_retry(count_trials, storage, study_id, patience=settings.patience)
        )
        if progress is not None:
            progress(finished, _best(study))
    finally:
        storage.engine.dispose()
    for index in range(len(children)):  # those that ended after the last look
        finished_when_ended.setdefault(index, finished)
    outcome = RunOutcome(finished, interrupted=stop is not None)
    if stop is not None:
        outcome.stop_signal = signal_name(stop)
        return outcome
    return _with_worker_report(outcome, children, finished_when_ended, spec, settings)


def _start_workers(
    settings: StorageSettings,
    child_argv: Sequence[str],
    workers: int,
    lifeline: Lifeline,
    mirror: Mirror | None,
) -> list[subprocess.Popen[bytes]]:
    """The worker processes, each with one BLAS thread, the lifeline and its mirror channel."""
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    # Through the environment, not argv: a password in argv would show in `ps`.
    env["HPO_STORAGE"] = settings.url
    command = [sys.executable, "-m", "hpo.cli", *child_argv]
    children: list[subprocess.Popen[bytes]] = []
    for index in range(workers):
        child_env, fds = env | lifeline.child_env(), [lifeline.child_fd]
        if mirror is not None:
            child_env[MIRROR_FD_ENV] = str(mirror.worker_fd(index))
            fds.append(mirror.worker_fd(index))
        children.append(subprocess.Popen(command, env=child_env, pass_fds=fds))
    lifeline.release_child_end()
    if mirror is not None:
        mirror.release_worker_ends()
    return children


def _note_ended(
    children: Sequence[subprocess.Popen[bytes]],
    finished_when_ended: dict[int, int],
    storage: optuna.storages.RDBStorage,
    study_id: int,
) -> None:
    """For each worker that has ended since the last look: the study's finished trials then
    (what the report of a worker that ended early quotes)."""
    for index, child in enumerate(children):
        if child.returncode is not None and index not in finished_when_ended:
            counts = _counts_or_none(storage, study_id)
            finished_when_ended[index] = _finished(counts) if counts else -1


def _stop_workers(children: Sequence[subprocess.Popen[bytes]], stop: signal.Signals) -> None:
    """Pass the stop on (Ctrl-C at a terminal has reached them already: they ignore a second
    one), give them time to mark their trials failed, then kill what is left."""
    for child in children:
        if child.poll() is None:
            child.send_signal(stop)
    deadline = time.monotonic() + WORKER_STOP_WAIT_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _counts_or_none(storage: optuna.storages.RDBStorage, study_id: int) -> dict[str, int]:
    try:
        return count_trials(storage, study_id)
    except Exception as error:  # an outage: the workers ride it out; this count can wait
        if not is_transient(error):
            raise
        return {}


def _with_worker_report(
    outcome: RunOutcome,
    children: Sequence[subprocess.Popen[bytes]],
    finished_when_ended: dict[int, int],
    spec: StudySpec,
    settings: StorageSettings,
) -> RunOutcome:
    """What happened to each worker that did not end well, in words."""
    lines, stops, failures = [], [], 0
    for index, child in enumerate(children):
        code = child.returncode
        who = f"worker {index + 1} of {len(children)} (pid {child.pid})"
        if code == 0:
            continue
        if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            name = signal.Signals(code - 128).name
            stops.append(name)
            done = finished_when_ended.get(index, -1) >= spec.study.n_trials
            after = (
                "the study had reached its budget already: nothing was lost"
                if done
                else "its running trial was marked failed and the other workers went on"
            )
            lines.append(f"{who} was stopped by {name}; {after}")
        elif code < 0:
            failures += 1
            lines.append(
                f"{who} was killed by {signal.Signals(-code).name}; a trial it was running is "
                f"failed and retried by the next worker to look, within the grace period "
                f"({settings.grace_period} s)"
            )
        else:
            failures += 1
            lines.append(f"{who} failed with exit status {code}; its messages are above")
    outcome.worker_failures = failures
    outcome.worker_stops = tuple(stops)
    outcome.worker_lines = tuple(lines)
    return outcome


class _ProgressTracker:
    """Feeds the progress bar without a query per trial: the worker's own trials are counted
    as they end, the storage (other workers' trials) is read at most once a second."""

    def __init__(self, joined: JoinedStudy, progress: ProgressCallback | None) -> None:
        self.joined, self.progress = joined, progress
        self.finished = 0
        self.best: float | None = None
        self._next_refresh = 0.0

    def refresh(self) -> None:
        if self.progress is None:
            return
        self._next_refresh = time.monotonic() + 1.0
        try:
            self.finished = _finished(
                count_trials(
                    self.joined.storage,
                    self.joined.study_id,
                    adapter=self.joined.adapter,
                )
            )
            self.best = _best(self.joined.study)
        except Exception as error:  # counted again at the next refresh
            if not is_transient(error):
                raise
        self.progress(self.finished, self.best)

    def trial_ended(self, trial: optuna.trial.FrozenTrial) -> None:
        if self.progress is None:
            return
        if time.monotonic() >= self._next_refresh:
            self.refresh()
            return
        if trial.state in COUNTED:
            self.finished += 1
        if trial.state.name == "COMPLETE" and trial.value is not None:
            maximize = self.joined.study.direction == optuna.study.StudyDirection.MAXIMIZE
            better = self.best is None or (
                trial.value > self.best if maximize else trial.value < self.best
            )
            self.best = trial.value if better else self.best
        self.progress(self.finished, self.best)


def _best(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:
        return None
