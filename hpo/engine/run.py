"""`run_study`: one run of a study, as `hpo run` does it, for the command line and for Python.

The order matters and is kept here, once: the MLflow mirror starts first (it imports MLflow
while the rest gets ready), the data is loaded before the study is created (missing data
leaves no empty study behind), the trials run in this process or in worker processes, and
the mirror's closing sync comes last. Nothing here prints: what the run did is a `RunResult`,
and what it is doing goes to a `RunListener`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError
from hpo.spec.limits import MAX_WORKERS

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.engine.launch import RunOutcome
    from hpo.spec.study_file import StudySpec
    from hpo.storage.database import StorageSettings
    from hpo.tracking.mirror import Mirror
    from hpo.tracking.runs import TrackingSettings


class RunListener:
    """What `run_study` tells as it goes; every method does nothing unless overridden.

    `hpo run` draws its progress bar and prints its header with one of these.
    """

    def phase(self, what: str) -> None:
        """A start-up step begins ("loading data", "preparing the study", "running", ...)."""

    def ready(self, created: bool, spec: StudySpec, storage: StorageSettings) -> None:
        """The study is in the storage (`created`: by this run) and the trials start next."""

    def progress(self, finished: int, best: float | None) -> None:
        """The study's finished trials (every worker's) and its best value so far."""

    def stopped(self) -> None:
        """The trials have stopped, however the run ended; the MLflow sync comes next."""


@dataclass(frozen=True, repr=False)
class RunResult:
    """What one run of a study did, and the study as the run left it.

    `finished` counts the study's finished trials (complete or pruned, from every run and
    worker), not only this run's. `outcome` has the details `hpo run` reports: trials that
    failed in a row, worker processes that ended badly, a timeout.
    """

    spec: StudySpec
    storage: StorageSettings
    created: bool  # the study was created by this run (else resumed)
    outcome: RunOutcome
    elapsed_s: float  # the trials' wall clock, start-up and MLflow's closing sync left out
    mirrored: str | None  # the MLflow mirror's closing line, None when tracking was off
    study: optuna.Study  # for reading: trials, dataframes, Optuna's plots
    best_trial: FrozenTrial | None  # the best completed trial (ties: the lower number)

    @property
    def finished(self) -> int:
        return self.outcome.finished

    @property
    def n_trials(self) -> int:
        """The study's budget of finished trials."""
        return self.spec.study.n_trials

    @property
    def interrupted(self) -> bool:
        """Ctrl-C or SIGTERM stopped the run: its running trials were marked failed."""
        return self.outcome.interrupted

    @property
    def complete(self) -> bool:
        """The study has spent its whole budget (of finished trials, or of epochs) and run its
        selection, if it has one."""
        from hpo.engine.budget import Budget, Next, decide

        budget = Budget.of(self.spec)
        if budget.in_trials_only:
            return self.finished >= self.n_trials
        return decide(budget, self.study.get_trials(deepcopy=False)).next is Next.DONE

    @property
    def epochs_trained(self) -> int:
        """Epochs trained by the study's finished trials (what `max_epochs` counts)."""
        from hpo.spec.outcomes import COUNTED, trial_epochs

        return sum(trial_epochs(t) for t in self.study.get_trials(deepcopy=False, states=COUNTED))

    @property
    def best_value(self) -> float | None:
        return self.best_trial.value if self.best_trial is not None else None

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best_trial.params) if self.best_trial is not None else {}

    def __repr__(self) -> str:
        state = "interrupted" if self.interrupted else "complete" if self.complete else "stopped"
        best = (
            f", best trial {self.best_trial.number}: {self.best_value!r}"
            if self.best_trial is not None
            else ""
        )
        return (
            f"RunResult({self.spec.study.name!r}, {self.finished}/{self.n_trials} finished, "
            f"{state}{best})"
        )


def run_study(
    study: StudySpec | str | os.PathLike[str],
    *,
    storage: StorageSettings | str | None = None,
    workers: int = 1,
    tracking: TrackingSettings | bool | str = True,
    experiment: str | None = None,
    listener: RunListener | None = None,
) -> RunResult:
    """Run (or resume) a study until it has its `n_trials` finished trials, as `hpo run` does.

    `study` is a `StudySpec` or the path of a study file (read by `hpo.load_study`).
    `storage` is a database URL, else `$HPO_STORAGE`, else `sqlite:///hpo.db`. `workers` > 1
    starts that many processes, one BLAS thread each, which read the study file again: the
    spec must come from a file (`spec.path`). `tracking` mirrors the study to MLflow: True for
    `$MLFLOW_TRACKING_URI` or MLflow's default (./mlflow.db), a tracking URI, or False;
    `experiment` defaults to the study's name. With tracking on in a script, run it under
    `if __name__ == "__main__":`, since the mirror is a process of its own (multiprocessing's
    spawn re-imports the script).

    Ctrl-C marks the running trials failed and returns a result with `interrupted` set.
    Mistakes in what was asked raise `hpo.ConfigError` before anything is created.
    """
    from hpo.spec.load import load_study
    from hpo.storage.database import StorageSettings, resolve_storage
    from hpo.tracking.runs import TrackingSettings, resolve_tracking

    if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"must be from 1 to {MAX_WORKERS:,}, but got {workers!r}", key="workers")
    spec = study if not isinstance(study, (str, os.PathLike)) else load_study(study)
    spec.require_search()
    if workers > 1 and spec.path is None:
        raise ConfigError(
            "worker processes read the study from its file, but this spec has none (it was not "
            "read by hpo.load_study); run it with workers=1",
            key="workers",
        )
    settings = storage if isinstance(storage, StorageSettings) else resolve_storage(storage)
    if not isinstance(tracking, TrackingSettings):
        tracking = resolve_tracking(
            uri_flag=tracking if isinstance(tracking, str) else None,
            experiment=experiment,
            disabled=tracking is False,
        )
    mirror = None
    if tracking.enabled:
        from hpo.tracking.mirror import Mirror

        # Started first: it imports MLflow and opens the store while the study is prepared.
        mirror = Mirror(tracking, settings, spec, channels=workers)
    try:
        return _run(spec, settings, workers, mirror, listener or RunListener())
    finally:
        if mirror is not None:
            mirror.abandon()  # a no-op once closed; else ends it without a sync


def _run(
    spec: StudySpec,
    settings: StorageSettings,
    workers: int,
    mirror: Mirror | None,
    listener: RunListener,
) -> RunResult:
    from hpo.engine.launch import load_study_data, run_in_process, run_worker_processes
    from hpo.engine.protocols import check_protocol
    from hpo.spec.data import check_data
    from hpo.spec.evaluation import KFOLD
    from hpo.spec.outcomes import ranked_trials
    from hpo.storage.studies import load_existing_study, prepare_study
    from hpo.tracking.mirror import TrialMirror

    try:
        # The data first: missing or corrupt data is one line, and leaves no study behind.
        listener.phase("loading data")
        splits = None
        if workers == 1 or spec.evaluation.protocol == KFOLD:
            splits = load_study_data(spec)
        elif spec.trains:  # each worker loads and splits its own
            check_data(spec.data, seed=spec.study.seed)
        if splits is not None:
            check_protocol(spec.evaluation, splits)
        listener.phase("preparing the study")
        created = prepare_study(settings, spec)
        if mirror is not None:
            mirror.study_ready()
        listener.ready(created, spec, settings)
        started = time.perf_counter()
        if workers == 1:
            listener.phase("running")
            channel = TrialMirror(mirror.worker_end(0)) if mirror is not None else None
            outcome = run_in_process(
                spec, settings, mirror=channel, splits=splits, progress=listener.progress
            )
        else:
            listener.phase(f"starting {workers} workers")
            outcome = run_worker_processes(
                spec, settings, worker_argv(spec), workers, mirror=mirror,
                progress=listener.progress,
            )  # fmt: skip
    finally:
        listener.stopped()
    elapsed = time.perf_counter() - started
    mirrored = mirror.close(interrupted=outcome.interrupted) if mirror is not None else None
    study = load_existing_study(settings, spec.study.name)
    _show_selection(study, spec.study.metric)
    ranked = ranked_trials(study)
    return RunResult(
        spec, settings, created, outcome, elapsed, mirrored, study, ranked[0] if ranked else None
    )


def _show_selection(study: optuna.Study, metric: str) -> None:
    """The selection's winner as a study attribute, where optuna-dashboard shows it: its own
    "best" is the best single value, the very luck a selection is there to see through."""
    from hpo.spec.outcomes import selection_estimates

    estimates = selection_estimates(study)
    if not estimates:
        return
    won = estimates[0]
    text = (
        f"trial {won.trial.number}: {metric} {won.mean:.4g} ± {won.std:.2g}, the mean of "
        f"{won.n} trainings (its search value {won.trial.value:.4g}); finalists: "
        + ", ".join(f"{e.trial.number} ({e.mean:.4g})" for e in estimates)
    )
    if study.user_attrs.get("selected") != text:
        study.set_user_attr("selected", text)


def worker_argv(spec: StudySpec) -> list[str]:
    """`hpo run`'s arguments for a worker process of `spec`: its file, with every setting a
    run may override stated, so that the worker's spec is this one."""
    from hpo.spec.study_file import IDX_DATASETS

    argv = [
        "run", str(spec.path), "--study-name", spec.study.name,
        "--sampler", spec.sampler.name, "--pruner", spec.pruner.name,
        "--n-trials", str(spec.study.n_trials), "--seed", str(spec.study.seed),
    ]  # fmt: skip
    if spec.study.timeout is not None:
        argv += ["--timeout", repr(spec.study.timeout)]
    if spec.data.dataset in IDX_DATASETS:
        argv += ["--data-dir", str(spec.data.data_dir)]
    return [*argv, "--worker"]
