"""MLflow mirrors the study: one parent run per study, one child run per trial.

The only module that talks to MLflow while a study runs (`MlflowClient` with explicit run
ids, never the fluent active run, so workers and threads cannot step on each other). Optuna's
storage is the truth; MLflow is a mirror that may lag or miss trials while it is down, and
`sync_study` (`hpo sync-mlflow`) fills in what is missing.

A trial's MLflow calls run on a background thread: a local MLflow server takes about 100 ms
per trial (create, params, 200 metric values, terminate), a third of a book-6.5 trial. Metric
values are buffered and sent with one `log_batch` every few seconds and when the trial ends.
When MLflow fails, the thread warns once, stops trying for a cooldown, and remembers which
trials it did not mirror; training never waits for it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ._errors import ConfigError
from ._locks import StorageLock
from ._storage import StorageSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from trainer import EpochMetrics

    from ._studyfile import StudySpec

logger = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
STUDY_TAG, ROLE_TAG, NUMBER_TAG, COMPLETE_TAG = (
    "hpo.study",
    "hpo.role",
    "hpo.trial_number",
    "hpo.complete",
)
RUN_ID_ATTR = "mlflow_run_id"  # on each Optuna trial
PARENT_ATTR = "hpo:mlflow"  # on the Optuna study: parent run per tracking URI
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "KILLED",
    TrialState.FAIL: "FAILED",
}
MAX_BATCH = 1000  # MLflow's limit of metric values per log_batch

# Bounded client behaviour: by default MLflow retried an unreachable server for about four
# minutes and then raised into `optimize()`. Users' own settings win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


@dataclass(frozen=True)
class TrackingSettings:
    """Where the study is mirrored: `uri` None means MLflow's default (./mlflow.db)."""

    enabled: bool
    uri: str | None = None
    experiment: str | None = None  # default: the study's name

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        return self.uri or "MLflow's default (./mlflow.db)"


def resolve_tracking(
    *,
    uri_flag: str | None,
    experiment: str | None,
    disabled: bool,
    environ: Mapping[str, str] | None = None,
) -> TrackingSettings:
    """`--tracking-uri`, else `$MLFLOW_TRACKING_URI`, else MLflow's default; `--no-mlflow` off."""
    environ = os.environ if environ is None else environ
    if disabled:
        return TrackingSettings(enabled=False)
    return TrackingSettings(
        enabled=True, uri=uri_flag or environ.get(TRACKING_URI_ENV) or None, experiment=experiment
    )


def make_client(settings: TrackingSettings) -> MlflowClient:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=settings.uri)


def _ms(moment: Any = None) -> int:
    """Milliseconds since the epoch, from a datetime or now."""
    return int((moment.timestamp() if moment is not None else time.time()) * 1000)


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)


# -- the parent run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRun:
    """The parent run of a study in one tracking store."""

    experiment_id: str
    run_id: str


def ensure_parent_run(
    client: MlflowClient,
    settings: TrackingSettings,
    storage: StorageSettings,
    spec: StudySpec,
    study: optuna.Study,
) -> StudyRun:
    """The study's one parent run in this tracking store, created if there is none.

    Exactly one even when several workers start at once: the check and the creation happen
    under the storage lock, and the run's id is kept in the Optuna study (per tracking URI),
    so that every resume and every worker finds it again.
    """
    name = spec.study.name
    experiment_name = settings.experiment or name
    key = settings.uri or "default"
    with StorageLock(storage, f"mlflow:{name}"):
        known = study.user_attrs.get(PARENT_ATTR, {}).get(key)
        if known is not None:
            try:
                run = client.get_run(known["run_id"])
                if run.info.lifecycle_stage == "active":
                    return StudyRun(run.info.experiment_id, run.info.run_id)
            except Exception as error:  # deleted by hand, or another store at this URI
                logger.debug("stored parent run %s not usable: %s", known, error)
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(experiment_name)
        )
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'study'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        run_id = (
            found[0].info.run_id if found else _create_parent(client, experiment_id, spec, storage)
        )
        attrs = dict(study.user_attrs.get(PARENT_ATTR, {}))
        attrs[key] = {"run_id": run_id, "experiment_id": experiment_id}
        study.set_user_attr(PARENT_ATTR, attrs)
        return StudyRun(experiment_id, run_id)


def _create_parent(
    client: MlflowClient, experiment_id: str, spec: StudySpec, storage: StorageSettings
) -> str:
    import tempfile

    from mlflow.entities import Param

    tags = {
        STUDY_TAG: spec.study.name,
        ROLE_TAG: "study",
        "mlflow.runName": f"study {spec.study.name}",
        "hpo.metric": spec.study.metric,
        "hpo.direction": spec.study.direction,
        "hpo.seed": str(spec.study.seed),
        "hpo.storage": storage.redacted(),
        "hpo.sampler": spec.sampler.name,
        "hpo.sampler_options": json.dumps(dict(spec.sampler.options), sort_keys=True),
        "hpo.pruner": spec.pruner.name,
        "hpo.pruner_options": json.dumps(dict(spec.pruner.options), sort_keys=True),
        "hpo.search_space": "; ".join(p.describe() for p in spec.space.params),
    }
    run = client.create_run(experiment_id, tags=tags)
    searched = set(spec.space.names())
    settings = {**spec.base.architecture(), **spec.base.optimizer_hyperparameters()}
    fixed = {f"train.{k}": v for k, v in settings.items() if k not in searched}
    fixed |= {
        f"train.{k}": getattr(spec.base, k)
        for k in ("optimizer", "epochs", "batch_size")
        if k not in searched
    }
    data = {
        f"data.{k}": v for k, v in vars(spec.data).items() if k != "data_dir" and v is not None
    }
    params = [Param(k, _param_value(v)) for k, v in sorted((fixed | data).items())]
    client.log_batch(run.info.run_id, params=params)
    with tempfile.TemporaryDirectory() as tmp:
        name = spec.path.name if spec.path is not None else f"{spec.study.name}.toml"
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(spec.source_text)
        client.log_artifact(run.info.run_id, path)
    return run.info.run_id


# -- child runs, from a worker ---------------------------------------------------------------


def child_tags(study_name: str, parent: StudyRun, number: int) -> dict[str, str]:
    return {
        "mlflow.parentRunId": parent.run_id,
        "mlflow.runName": f"trial {number}",
        STUDY_TAG: study_name,
        ROLE_TAG: "trial",
        NUMBER_TAG: str(number),
    }


def final_fields(trial: FrozenTrial, metric: str) -> tuple[list[Any], dict[str, str]]:
    """(final metrics, tags) that close a trial's run: state, duration, why it ended."""
    from mlflow.entities import Metric

    end = _ms(trial.datetime_complete)
    history = trial.user_attrs.get("history") or {}
    epochs = len(history.get("val_acc", []))
    metrics = [Metric("epochs_trained", epochs, end, 0)]
    if trial.duration is not None:
        metrics.append(Metric("duration_s", trial.duration.total_seconds(), end, 0))
    if trial.value is not None:
        metrics.append(Metric(f"final_{metric}", trial.value, end, 0))
    tags = {"hpo.state": trial.state.name}
    diverged = trial.user_attrs.get("diverged")
    if trial.state == TrialState.PRUNED:
        tags["hpo.pruned_epoch"] = str(diverged["epoch"] if diverged else epochs)
        tags["hpo.diverged"] = "true" if diverged else "false"
        if diverged:
            tags["hpo.diverged_reason"] = diverged["reason"]
    if trial.state == TrialState.FAIL:
        tags["hpo.error"] = trial.user_attrs.get("error") or "failed (no message recorded)"
    return metrics, tags


@dataclass
class _RunState:
    run_id: str | None = None
    created: threading.Event = field(default_factory=threading.Event)
    pending: list[Any] = field(default_factory=list)  # metric values not yet sent
    failed: bool = False


class Tracker:
    """A worker's mirror of its trials in MLflow, fed by the objective and the runner.

    Implements the objective's `TrialObserver` (trial_started, epoch_ended, trial_ending) and
    the runner's end-of-trial listener (trial_finished). All MLflow calls happen on one
    background thread; the caller only queues work.
    """

    def __init__(
        self,
        client: MlflowClient,
        parent: StudyRun,
        study: optuna.Study,
        spec: StudySpec,
        *,
        flush_interval: float = 2.0,
        cooldown: float = 30.0,
        run_id_wait: float = 1.0,
    ) -> None:
        self.client, self.parent, self.spec = client, parent, spec
        self.metric = spec.study.metric
        self.flush_interval, self.cooldown, self.run_id_wait = (
            flush_interval,
            cooldown,
            run_id_wait,
        )
        self.unmirrored: set[int] = set()
        self._runs: dict[int, _RunState] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._down_until = 0.0
        self._warned = False
        self._maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        try:
            self._best: float | None = study.best_value
        except ValueError:
            self._best = None
        self._host = f"{socket.gethostname()}"
        self._thread = threading.Thread(target=self._work, name="hpo-mlflow", daemon=True)
        self._thread.start()

    # -- called by the objective and the runner (any thread but this one's) -----------------

    def trial_started(self, trial: optuna.trial.BaseTrial, seed: int) -> None:
        state = _RunState()
        with self._lock:
            self._runs[trial.number] = state
        self._queue.put(("start", (trial.number, dict(trial.params), seed, _ms())))

    def epoch_ended(
        self, trial: optuna.trial.BaseTrial, epoch: int, metrics: EpochMetrics
    ) -> None:
        from mlflow.entities import Metric

        now = _ms()
        values = [Metric(k, v, now, epoch) for k, v in metrics.as_dict().items()]
        with self._lock:
            state = self._runs.get(trial.number)
            if state is not None and not state.failed:
                state.pending.extend(values)

    def trial_ending(self, trial: optuna.trial.BaseTrial) -> None:
        """Before Optuna hears how the trial ended: record its run id on the trial."""
        with self._lock:
            state = self._runs.get(trial.number)
        if state is not None and state.created.wait(self.run_id_wait) and state.run_id:
            trial.set_user_attr(RUN_ID_ATTR, state.run_id)

    def trial_finished(self, trial: FrozenTrial) -> None:
        self._queue.put(("finish", trial))

    def close(self, timeout: float = 15.0) -> set[int]:
        """Send what is queued (waiting at most `timeout` s); the trial numbers not mirrored."""
        self._queue.put(("stop", None))
        self._thread.join(timeout)
        with self._lock:
            left = {n for n, s in self._runs.items() if s.run_id is None or s.pending}
        return self.unmirrored | left

    # -- the background thread --------------------------------------------------------------

    def _work(self) -> None:
        next_flush = time.monotonic() + self.flush_interval
        while True:
            try:
                kind, payload = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                kind, payload = "flush", None
            if kind == "start":
                self._start(*payload)
            elif kind == "finish":
                self._finish(payload)
            elif kind == "stop":
                self._flush_all()
                return
            if time.monotonic() >= next_flush:
                self._flush_all()
                next_flush = time.monotonic() + self.flush_interval

    def _call(
        self, number: int | None, what: str, function: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """One MLflow call; a failure marks the trial unmirrored and pauses tracking."""
        if time.monotonic() < self._down_until:
            raise _Down
        try:
            return function(*args, **kwargs)
        except Exception as error:
            self._down_until = time.monotonic() + self.cooldown
            if not self._warned:
                self._warned = True
                logger.warning(
                    "MLflow at %s failed (%s: %s); trials go on and are kept in the Optuna "
                    "storage; `hpo sync-mlflow` fills in what is missing (hpo run does, at "
                    "its end)",
                    self.client.tracking_uri,
                    what,
                    str(error).splitlines()[0][:200],
                )
            raise _Down from error

    def _start(self, number: int, params: dict[str, Any], seed: int, start_ms: int) -> None:
        from mlflow.entities import Param

        with self._lock:
            state = self._runs[number]
        try:
            tags = child_tags(self.spec.study.name, self.parent, number) | {
                "hpo.worker_host": self._host,
                "hpo.worker_pid": str(os.getpid()),
            }
            run = self._call(
                number,
                "create_run",
                self.client.create_run,
                self.parent.experiment_id,
                start_time=start_ms,
                tags=tags,
            )
            state.run_id = run.info.run_id
            values = {**params, "trial_number": number, "seed": seed}
            self._call(
                number,
                "log_batch",
                self.client.log_batch,
                state.run_id,
                params=[Param(k, _param_value(v)) for k, v in values.items()],
            )
            if self._warned and self._down_until < time.monotonic():
                logger.info("MLflow tracking resumed with trial %d", number)
        except _Down:
            with self._lock:
                state.failed = True
                state.pending.clear()
            self.unmirrored.add(number)
        finally:
            state.created.set()

    def _flush(self, number: int, state: _RunState) -> bool:
        with self._lock:
            batch, state.pending = state.pending, []
        if not batch or state.run_id is None:
            return True
        try:
            for i in range(0, len(batch), MAX_BATCH):
                self._call(
                    number,
                    "log_batch",
                    self.client.log_batch,
                    state.run_id,
                    metrics=batch[i : i + MAX_BATCH],
                )
        except _Down:
            state.failed = True
            self.unmirrored.add(number)
            return False
        return True

    def _flush_all(self) -> None:
        with self._lock:
            items = [(n, s) for n, s in self._runs.items() if s.pending and not s.failed]
        for number, state in items:
            self._flush(number, state)

    def _finish(self, trial: FrozenTrial) -> None:
        from mlflow.entities import Metric, RunTag

        with self._lock:
            state = self._runs.pop(trial.number, None)
        if state is None or state.failed or state.run_id is None:
            self.unmirrored.add(trial.number)
            return
        if not self._flush(trial.number, state):
            return
        metrics, tags = final_fields(trial, self.metric)
        tags[COMPLETE_TAG] = "true"
        try:
            self._call(
                trial.number,
                "log_batch",
                self.client.log_batch,
                state.run_id,
                metrics=metrics,
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
            self._call(
                trial.number,
                "set_terminated",
                self.client.set_terminated,
                state.run_id,
                STATUS.get(trial.state, "FAILED"),
                end_time=_ms(trial.datetime_complete),
            )
            if trial.state == TrialState.COMPLETE and self._improves(trial.value):
                self._best = trial.value
                self._call(
                    None,
                    "log_metric",
                    self.client.log_batch,
                    self.parent.run_id,
                    metrics=[Metric(f"best_{self.metric}", trial.value, _ms(), trial.number)],
                )
        except _Down:
            self.unmirrored.add(trial.number)

    def _improves(self, value: float | None) -> bool:
        if value is None:
            return False
        if self._best is None:
            return True
        return value > self._best if self._maximize else value < self._best


class _Down(Exception):
    """MLflow is failing: this call was not made, or failed."""


def require_enabled(settings: TrackingSettings, command: str) -> None:
    if not settings.enabled:
        raise ConfigError(f"{command} needs MLflow; drop --no-mlflow")
