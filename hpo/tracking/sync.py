"""`hpo sync-mlflow`: make MLflow mirror every finished trial of a study, idempotently.

Each trial's run is found by its tags (study uid and trial number), so running the sync twice
creates nothing twice; and a sync runs under the study storage's lock `mlflow-sync:<study>`, so
two syncs at once (two `hpo run`s ending together, on one machine or two) cannot both create
the run a trial lacks. A run is complete when its mirror (or an earlier sync) set the
`hpo.complete` tag after sending everything; an incomplete one gets only what it lacks (the
missing metric steps, the final metrics and tags, its status). A trial with several runs (left
by older versions) keeps its complete one, else its first, and the others are deleted. Runs of
other processes' trials that ended less than `settle_s` ago are left alone: their mirror may
still be sending them.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.spec.outcomes import (
    ENDED,
    EPOCH_METRICS,
    completed_value,
    is_selection,
    selection_estimates,
)
from hpo.storage.database import StorageSettings
from hpo.storage.locks import StorageLock
from hpo.tracking.runs import (
    COMPLETE_TAG,
    MAX_BATCH,
    NUMBER_TAG,
    ROLE_TAG,
    STATUS,
    UID_TAG,
    StudyRun,
    child_tags,
    epoch_ms,
    final_fields,
    param_value,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


SELECTED_TRIAL_TAG, FINALISTS_TAG = "hpo.selected_trial", "hpo.selection"
logger = logging.getLogger(__name__)


@dataclass
class SyncReport:
    created: list[int] = field(default_factory=list)
    completed: list[int] = field(default_factory=list)
    unchanged: int = 0
    recent: list[int] = field(default_factory=list)  # left to their worker (ended just now)
    duplicates_deleted: int = 0

    def describe(self) -> str:
        parts = [
            f"{len(self.created)} runs created",
            f"{len(self.completed)} completed",
            f"{self.unchanged} already complete",
        ]
        if self.duplicates_deleted:
            parts.append(f"{self.duplicates_deleted} duplicate runs deleted")
        if self.recent:
            parts.append(f"{len(self.recent)} left to their worker (ended moments ago)")
        return ", ".join(parts)


def all_child_runs(client: MlflowClient, parent: StudyRun) -> dict[int, list[Any]]:
    """The study's trial runs by trial number, earliest first (a number may have several)."""
    runs: dict[int, list[Any]] = {}
    token = None
    query = f"tags.`{UID_TAG}` = '{parent.uid}' and tags.`{ROLE_TAG}` = 'trial'"
    while True:
        page = client.search_runs(
            [parent.experiment_id],
            filter_string=query,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        for run in page:
            runs.setdefault(int(run.data.tags[NUMBER_TAG]), []).append(run)
        token = page.token
        if not token:
            return runs


def child_runs(client: MlflowClient, parent: StudyRun) -> dict[int, Any]:
    """The study's trial runs by trial number (the earliest if a number has several)."""
    return {number: runs[0] for number, runs in all_child_runs(client, parent).items()}


def _is_complete(run: Any) -> bool:
    return run is not None and run.data.tags.get(COMPLETE_TAG) == "true"


def sync_study(
    client: MlflowClient,
    parent: StudyRun,
    study: optuna.Study,
    metric: str,
    *,
    storage: StorageSettings | None = None,
    settle_s: float = 30.0,
    settled: Collection[int] = (),
    progress: Callable[[], None] | None = None,
) -> SyncReport:
    """Mirror what MLflow lacks, under the storage's sync lock when `storage` is given.

    A trial that ended less than `settle_s` ago may still be on its way from its mirror (a run
    created here too would be a duplicate), unless its number is in `settled`: trials of
    workers known to have ended. Such trials are left to their mirror. `progress` is called
    after each trial mirrored here.
    """
    lock = (
        StorageLock(storage, f"mlflow-sync:{study.study_name}")
        if storage is not None
        else contextlib.nullcontext()
    )
    with lock:
        report = SyncReport()
        runs = all_child_runs(client, parent)
        now = datetime.now()
        for trial in study.get_trials(deepcopy=False, states=ENDED):
            ended = trial.datetime_complete
            recent = ended is not None and (now - ended).total_seconds() < settle_s
            if recent and trial.number not in settled:
                report.recent.append(trial.number)
                continue
            run = _one_run(client, runs.get(trial.number, []), report)
            if _is_complete(run):
                report.unchanged += 1
                continue
            _mirror(client, parent, study.study_name, trial, run, metric, report)
            if progress is not None:
                progress()
        _log_best(client, parent, study, metric)
    return report


def _one_run(client: MlflowClient, runs: list[Any], report: SyncReport) -> Any:
    """The run a trial keeps (its complete one, else its first); the others are deleted."""
    if not runs:
        return None
    keep = next((run for run in runs if _is_complete(run)), runs[0])
    for run in runs:
        if run is not keep:
            client.delete_run(run.info.run_id)
            report.duplicates_deleted += 1
    return keep


def _mirror(
    client: MlflowClient,
    parent: StudyRun,
    study_name: str,
    trial: FrozenTrial,
    run: Any,
    metric: str,
    report: SyncReport,
) -> None:
    """Create the trial's run if it has none, then send what it lacks."""
    if run is None:
        run_id = _create(client, parent, study_name, trial)
        report.created.append(trial.number)
    else:
        run_id = run.info.run_id
        report.completed.append(trial.number)
    _complete(client, run_id, trial, metric)


def _create(client: MlflowClient, parent: StudyRun, study_name: str, trial: FrozenTrial) -> str:
    from mlflow.entities import Param

    tags = child_tags(study_name, parent, trial.number) | {"hpo.synced": "true"}
    run = client.create_run(
        parent.experiment_id, start_time=epoch_ms(trial.datetime_start), tags=tags
    )
    values = {**trial.params, "trial_number": trial.number}
    if trial.user_attrs.get("seed") is not None:
        values["seed"] = trial.user_attrs["seed"]
    client.log_batch(run.info.run_id, params=[Param(k, param_value(v)) for k, v in values.items()])
    return run.info.run_id


def _complete(client: MlflowClient, run_id: str, trial: FrozenTrial, metric: str) -> None:
    """Send what the run lacks of the trial's history, then its final fields and status."""
    from mlflow.entities import Metric, RunTag

    history = trial.user_attrs.get("history") or {}
    end = epoch_ms(trial.datetime_complete)
    missing: list[Metric] = []
    for key in EPOCH_METRICS:
        values = history.get(key, [])
        if not values:
            continue
        logged = {m.step for m in client.get_metric_history(run_id, key)}
        missing += [
            Metric(key, value, end, epoch)
            for epoch, value in enumerate(values, start=1)
            if epoch not in logged
        ]
    for i in range(0, len(missing), MAX_BATCH):
        client.log_batch(run_id, metrics=missing[i : i + MAX_BATCH])
    metrics, tags = final_fields(trial, metric)
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run_id, STATUS.get(trial.state, "FAILED"), end_time=end)
    client.set_tag(run_id, COMPLETE_TAG, "true")  # last: everything above has arrived


def _log_best(client: MlflowClient, parent: StudyRun, study: optuna.Study, metric: str) -> None:
    """The best value so far on the parent run, if the parent does not show it yet."""
    from mlflow.entities import Metric

    search = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if not is_selection(t)]  # fmt: skip
    if not search:
        return
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    best = max(search, key=lambda t: (sign * completed_value(t), -t.number))
    key = f"best_{metric}"
    logged = {m.step for m in client.get_metric_history(parent.run_id, key)}
    if best.number not in logged:
        client.log_batch(
            parent.run_id, metrics=[Metric(key, completed_value(best), epoch_ms(), best.number)]
        )
    _log_selection(client, parent, study, metric)


def _log_selection(
    client: MlflowClient, parent: StudyRun, study: optuna.Study, metric: str
) -> None:
    """The selection's outcome on the parent run, once it has one: the winner, its mean,
    spread and number of trainings as metrics, every finalist's as a JSON tag."""
    from mlflow.entities import Metric, RunTag

    estimates = selection_estimates(study)
    if not estimates:
        return
    winner, now = estimates[0], epoch_ms()
    finalists = [
        {"trial": e.trial.number, "mean": e.mean, "std": e.std, "n": e.n} for e in estimates
    ]
    client.log_batch(
        parent.run_id,
        metrics=[
            Metric(f"selected_{metric}_mean", winner.mean, now, 0),
            Metric(f"selected_{metric}_std", winner.std, now, 0),
            Metric("selected_trainings", float(winner.n), now, 0),
        ],
        tags=[
            RunTag(SELECTED_TRIAL_TAG, str(winner.trial.number)),
            RunTag(FINALISTS_TAG, json.dumps(finalists)),
        ],
    )
