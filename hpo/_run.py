"""`hpo run`: prepare a study, then work on it in this process or in N worker processes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna

from ._data import load_splits
from ._objective import Objective
from ._pruning import PruningMirror
from ._runner import Worker, WorkerResult
from ._storage import StorageSettings, count_trials
from ._studies import JoinedStudy, join_study
from ._studyfile import StudySpec

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, float | None], None]  # (finished trials, best value)


@dataclass
class RunOutcome:
    finished: int
    interrupted: bool = False
    timed_out: bool = False
    errors: tuple[str, ...] = ()
    worker_failures: int = 0
    gave_up: bool = False  # too many trials failed in a row


def _finished(counts: dict[str, int]) -> int:
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def pruning_mirror(joined: JoinedStudy, spec: StudySpec) -> PruningMirror | None:
    """The in-memory pruning mirror a worker needs, if its study prunes at all."""
    if not spec.pruner.decision_epochs(spec.base.epochs):
        return None
    pruner = spec.pruner.build(epochs=spec.base.epochs)
    return PruningMirror(joined.study, pruner, spec.study.metric)


def run_in_process(
    spec: StudySpec,
    settings: StorageSettings,
    *,
    progress: ProgressCallback | None = None,
) -> RunOutcome:
    """One worker in this process: load the data once, then run trials until done."""
    joined = join_study(settings, spec)
    splits = load_splits(spec.data, seed=spec.study.seed)
    objective = Objective(spec, splits, mirror=pruning_mirror(joined, spec))
    tracker = _ProgressTracker(joined, progress)
    worker = Worker(
        joined,
        settings,
        objective,
        n_trials=spec.study.n_trials,
        timeout=spec.study.timeout,
        on_trial_end=tracker.trial_ended,
    )
    tracker.refresh()
    try:
        result: WorkerResult = worker.run()
    except KeyboardInterrupt:
        return RunOutcome(_finished(worker.counts()), interrupted=True)
    finally:
        joined.storage.engine.dispose()
    return RunOutcome(
        _finished(count_trials(joined.storage, joined.study_id)),
        timed_out=result.stopped_by == "timeout",
        errors=tuple(result.errors),
        gave_up=result.stopped_by == "failures",
    )


def run_worker_processes(
    spec: StudySpec,
    settings: StorageSettings,
    child_argv: Sequence[str],
    workers: int,
    *,
    progress: ProgressCallback | None = None,
    poll_interval: float = 0.5,
) -> RunOutcome:
    """Start `workers` processes running `hpo <child_argv>`, each with one BLAS thread.

    The study is already prepared, so the workers only join it. Progress comes from the
    storage, which is the truth for every worker on every machine.
    """
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    # Through the environment, not argv: a password in argv would show in `ps`.
    env["HPO_STORAGE"] = settings.url
    command = [sys.executable, "-m", "hpo.cli", *child_argv]
    children = [subprocess.Popen(command, env=env) for _ in range(workers)]
    from ._storage import open_storage

    storage = open_storage(settings, heartbeat=False)
    study_id = storage.get_study_id_from_name(spec.study.name)
    study = optuna.load_study(study_name=spec.study.name, storage=storage)
    interrupted = False
    try:
        while any(child.poll() is None for child in children):
            if progress is not None:
                progress(_finished(count_trials(storage, study_id)), _best(study))
            time.sleep(poll_interval)
    except KeyboardInterrupt:
        interrupted = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
    finished = _finished(count_trials(storage, study_id))
    if progress is not None:
        progress(finished, _best(study))
    storage.engine.dispose()
    codes = [child.returncode for child in children]
    interrupted = interrupted or any(code == 130 for code in codes)
    failures = sum(1 for code in codes if code not in (0, 130))
    return RunOutcome(finished, interrupted=interrupted, worker_failures=failures)


class _ProgressTracker:
    """Feeds the progress bar without a query per trial: the worker's own trials are counted
    as they end, the storage (other workers' trials) is read at most once a second."""

    def __init__(self, joined: JoinedStudy, progress: ProgressCallback | None) -> None:
        self.joined, self.progress = joined, progress
        self.finished, self.best = 0, None
        self._next_refresh = 0.0

    def refresh(self) -> None:
        if self.progress is None:
            return
        self.finished = _finished(count_trials(self.joined.storage, self.joined.study_id))
        self.best = _best(self.joined.study)
        self._next_refresh = time.monotonic() + 1.0
        self.progress(self.finished, self.best)

    def trial_ended(self, trial: optuna.trial.FrozenTrial) -> None:
        if self.progress is None:
            return
        if time.monotonic() >= self._next_refresh:
            self.refresh()
            return
        if trial.state.name in ("COMPLETE", "PRUNED"):
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
