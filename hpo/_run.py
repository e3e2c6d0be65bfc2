"""`hpo run`: prepare a study, then work on it in this process or in N worker processes."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import optuna

from trainer.data import DataSplits

from ._batched import FlushAtStart
from ._data import load_splits
from ._objective import Objective, TrialObserver
from ._pruning import PruningMirror
from ._retry import call_with_retry, is_transient
from ._runner import Worker, WorkerResult
from ._storage import StorageSettings, count_trials
from ._studies import JoinedStudy, join_study
from ._studyfile import StudySpec
from ._tracking import Tracker, TrackingSettings, ensure_parent_run, make_client

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
    trials: tuple[int, ...] = ()  # numbers of the trials this process ran to their end


def _finished(counts: dict[str, int]) -> int:
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def pruning_mirror(joined: JoinedStudy, spec: StudySpec) -> PruningMirror | None:
    """The in-memory pruning mirror a worker needs, if its study prunes at all."""
    if not spec.pruner.decision_epochs(spec.base.epochs):
        return None
    pruner = spec.pruner.build(epochs=spec.base.epochs)
    return PruningMirror(joined.study, pruner, spec.study.metric)


def settle_heap() -> None:
    """Before the trial loop: what exists now (modules, data, the study) lives as long as the
    worker, so the collector stops walking it. Measured with the storage benchmark, the
    collector's full passes over it cost about 3 ms of every book-6.5 trial's claim and tell."""
    gc.collect()
    gc.freeze()


def build_objective(
    joined: JoinedStudy,
    spec: StudySpec,
    splits: DataSplits | None,
    *,
    observers: tuple[TrialObserver, ...] = (),
) -> Callable[[optuna.Trial], float]:
    """The objective a worker runs: its trials' parameters and seed are written as each
    starts (`FlushAtStart`), before the other observers (MLflow) hear of it."""
    observers = (FlushAtStart(joined.retrying), *observers)
    if splits is None:  # optimizer paths or activations: no data, nothing trained
        from ._probes import ProbeObjective

        return ProbeObjective(spec, observers=observers)
    return Objective(spec, splits, mirror=pruning_mirror(joined, spec), observers=observers)


def start_tracker(
    joined: JoinedStudy, spec: StudySpec, settings: StorageSettings, tracking: TrackingSettings
) -> Tracker | None:
    """This worker's MLflow mirror, or None (tracking off, or MLflow unreachable: one warning,
    and the study goes on; the end of `hpo run` or `hpo sync-mlflow` fills the gap)."""
    if not tracking.enabled:
        return None
    try:
        client = make_client(tracking)
        parent = ensure_parent_run(client, tracking, settings, spec, joined.study)
        client.update_run(parent.run_id, status="RUNNING")
    except Exception as error:
        logger.warning(
            "MLflow at %s is unavailable (%s); trials go on and are kept in the Optuna storage;"
            " `hpo sync-mlflow %s` mirrors them later",
            tracking.describe(),
            str(error).splitlines()[0][:200],
            spec.study.name,
        )
        return None
    return Tracker(tracking, parent, joined.study, spec)


def run_in_process(
    spec: StudySpec,
    settings: StorageSettings,
    *,
    tracking: TrackingSettings,
    progress: ProgressCallback | None = None,
) -> RunOutcome:
    """One worker in this process: load the data once, then run trials until done."""
    joined = join_study(settings, spec)
    mlflow = start_tracker(joined, spec, settings, tracking)  # its process starts meanwhile
    splits = load_splits(spec.data, seed=spec.study.seed) if spec.trains else None
    if mlflow is not None and not mlflow.wait_ready():
        logger.warning("the MLflow tracking process did not start; see hpo sync-mlflow")
    objective = build_objective(joined, spec, splits, observers=(mlflow,) if mlflow else ())
    tracker = _ProgressTracker(joined, progress)
    ran: list[int] = []

    def on_trial_end(trial: optuna.trial.FrozenTrial) -> None:
        if mlflow is not None:
            mlflow.trial_finished(trial)
        tracker.trial_ended(trial)
        ran.append(trial.number)

    worker = Worker(
        joined,
        settings,
        objective,
        n_trials=spec.study.n_trials,
        timeout=spec.study.timeout,
        on_trial_end=on_trial_end,
    )
    tracker.refresh()
    settle_heap()
    try:
        result: WorkerResult = worker.run()
    except KeyboardInterrupt:
        return RunOutcome(_finished(worker.counts()), interrupted=True, trials=tuple(ran))
    finally:
        if mlflow is not None:
            left = mlflow.close()
            if left:
                logger.info("trials not mirrored to MLflow yet: %s", sorted(left))
        joined.storage.engine.dispose()
    return RunOutcome(
        _finished(call_with_retry(count_trials, joined.storage, joined.study_id)),
        timed_out=result.stopped_by == "timeout",
        errors=tuple(result.errors),
        gave_up=result.stopped_by == "failures",
        trials=tuple(ran),
    )


def run_worker_processes(
    spec: StudySpec,
    settings: StorageSettings,
    child_argv: Sequence[str],
    workers: int,
    *,
    tracking: TrackingSettings,
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
    if tracking.uri:
        env["MLFLOW_TRACKING_URI"] = tracking.uri
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
                try:
                    progress(_finished(count_trials(storage, study_id)), _best(study))
                except Exception as error:  # the workers ride out an outage; so does the bar
                    if not is_transient(error):
                        raise
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
    finished = _finished(call_with_retry(count_trials, storage, study_id))
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
        self._next_refresh = time.monotonic() + 1.0
        try:
            self.finished = _finished(count_trials(self.joined.storage, self.joined.study_id))
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


def finish_tracking(
    spec: StudySpec,
    settings: StorageSettings,
    tracking: TrackingSettings,
    *,
    interrupted: bool,
    settled: Collection[int] = (),
) -> str | None:
    """After a run: mirror what MLflow lacks, and close the parent run if the study is done.

    `settled`: the trials this process ran, whose tracker has closed. Other workers' trials
    that ended in the last 15 s are given that long to arrive from their worker, and mirrored
    here if they have not.

    Returns a line for the user, or None with tracking off. Never raises: MLflow being down
    here only means the mirror waits for `hpo sync-mlflow`.
    """
    if not tracking.enabled:
        return None
    from ._mlflow_sync import sync_study
    from ._studies import load_existing_study

    try:
        client = make_client(tracking)
        study = load_existing_study(settings, spec.study.name)
        parent = ensure_parent_run(client, tracking, settings, spec, study)
        report = sync_study(
            client, parent, study, spec.study.metric, settle_s=15.0, settled=settled, wait=True
        )
        counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
        done = counts["COMPLETE"] + counts["PRUNED"] >= spec.study.n_trials
        if interrupted:
            client.set_terminated(parent.run_id, "KILLED")
        elif done and not counts["RUNNING"]:
            client.set_terminated(parent.run_id, "FINISHED")
    except Exception as error:
        logger.warning(
            "could not mirror the study to MLflow at %s (%s); run `hpo sync-mlflow %s` later",
            tracking.describe(),
            str(error).splitlines()[0][:200],
            spec.study.name,
        )
        return None
    experiment = client.get_experiment(parent.experiment_id).name
    view = "; view it with `mlflow ui` in this directory" if tracking.uri is None else ""
    return (
        f"MLflow ({tracking.describe()}, experiment {experiment!r}, parent run "
        f"{parent.run_id}): {report.describe()}{view}"
    )
