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
import time
from collections.abc import Mapping
from dataclasses import dataclass
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
STUDY_TAG, UID_TAG, ROLE_TAG, NUMBER_TAG, COMPLETE_TAG = (
    "hpo.study",
    "hpo.study_uid",
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
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # one line per retry otherwise
    return MlflowClient(tracking_uri=settings.uri)


def _ms(moment: Any = None) -> int:
    """Milliseconds since the epoch, from a datetime or now."""
    return int((moment.timestamp() if moment is not None else time.time()) * 1000)


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)


# -- the parent run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRun:
    """The parent run of a study in one tracking store; `uid` names the study everywhere."""

    experiment_id: str
    run_id: str
    uid: str


def study_uid(study: optuna.Study) -> str:
    from ._studies import UID_ATTR

    uid = study.user_attrs.get(UID_ATTR)
    if not uid:
        raise ConfigError(f"study {study.study_name!r} was not created by hpo run")
    return str(uid)


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
    uid = study_uid(study)
    key = settings.uri or "default"
    with StorageLock(storage, f"mlflow:{name}"):
        known = study.user_attrs.get(PARENT_ATTR, {}).get(key)
        if known is not None:
            try:
                run = client.get_run(known["run_id"])
                if run.info.lifecycle_stage == "active":
                    return StudyRun(run.info.experiment_id, run.info.run_id, uid)
            except Exception as error:  # deleted by hand, or another store at this URI
                logger.debug("stored parent run %s not usable: %s", known, error)
        experiment_name = settings.experiment or (known or {}).get("experiment") or name
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(experiment_name)
        )
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{UID_TAG}` = '{uid}' and tags.`{ROLE_TAG}` = 'study'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        if found:
            run_id = found[0].info.run_id
        else:
            run_id = _create_parent(client, experiment_id, spec, storage, uid)
        attrs = dict(study.user_attrs.get(PARENT_ATTR, {}))
        attrs[key] = {"run_id": run_id, "experiment": experiment_name}
        study.set_user_attr(PARENT_ATTR, attrs)
        return StudyRun(experiment_id, run_id, uid)


def _create_parent(
    client: MlflowClient, experiment_id: str, spec: StudySpec, storage: StorageSettings, uid: str
) -> str:
    import tempfile

    from mlflow.entities import Param

    tags = {
        STUDY_TAG: spec.study.name,
        UID_TAG: uid,
        ROLE_TAG: "study",
        "mlflow.runName": f"study {spec.study.name}",
        "hpo.metric": spec.study.metric,
        "hpo.direction": spec.study.direction,
        "hpo.kind": spec.study.kind,
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
    if spec.probe is not None:  # trains nothing: the kind's own settings, not training's
        from ._kinds import KIND_SETTINGS

        kind = spec.study.kind
        section = "paths" if kind == "optimizer_paths" else "activations"
        data = {f"{section}.{k}": v for k, v in spec.probe.as_dict().items()}
        model = {k: v for k, v in spec.base.architecture().items() if k in KIND_SETTINGS[kind]}
        fixed = {f"model.{k}": v for k, v in model.items() if k not in searched}
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
        UID_TAG: parent.uid,
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


class Tracker:
    """A worker's mirror of its trials in MLflow, fed by the objective and the runner.

    Implements the objective's `TrialObserver` (trial_started, epoch_ended, trial_ending) and
    the runner's end-of-trial listener (trial_finished). Every MLflow call happens in a
    process of its own (`hpo._tracking_backend`); this side only sends it small messages,
    and reads back the run ids that trials record.
    """

    def __init__(
        self,
        settings: TrackingSettings,
        parent: StudyRun,
        study: optuna.Study,
        spec: StudySpec,
        *,
        flush_interval: float = 2.0,
        cooldown: float = 30.0,
        run_id_wait: float = 1.0,
    ) -> None:
        import multiprocessing

        from ._tracking_backend import serve

        self.run_id_wait = run_id_wait
        self.send_interval = 1.0
        self._unsent: dict[int, list[tuple[str, float, int, int]]] = {}
        self._next_send = 0.0
        self.unmirrored: set[int] = set()
        self._run_ids: dict[int, str | None] = {}
        self._replies_seen: list[tuple[Any, ...]] = []
        try:
            best: float | None = study.best_value
        except ValueError:
            best = None
        config = {
            "uri": settings.uri,
            "parent": (parent.experiment_id, parent.run_id, parent.uid),
            "study_name": spec.study.name,
            "metric": spec.study.metric,
            "maximize": study.direction == optuna.study.StudyDirection.MAXIMIZE,
            "best": best,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "flush_interval": flush_interval,
            "cooldown": cooldown,
            "log_format": "%(levelname)s %(name)s: %(message)s",
        }
        context = multiprocessing.get_context("spawn")
        self._inbox = context.Queue()
        self._replies = context.Queue()
        self._process = context.Process(
            target=serve,
            args=(self._inbox, self._replies, config),
            name="hpo-mlflow",
            daemon=True,
        )
        self._process.start()
        self._ready = False

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Until the tracking process can take work (it imports MLflow: a second or two)."""
        self._ready = self._ready or self._read_until(lambda m: m[0] == "ready", timeout)
        return self._ready

    # -- called by the objective and the runner ----------------------------------------------

    def trial_started(self, trial: optuna.trial.BaseTrial, seed: int) -> None:
        self._inbox.put(("start", trial.number, dict(trial.params), seed, _ms()))

    def epoch_ended(
        self, trial: optuna.trial.BaseTrial, epoch: int, metrics: EpochMetrics
    ) -> None:
        now = _ms()
        values = self._unsent.setdefault(trial.number, [])
        values += [(k, v, now, epoch) for k, v in metrics.as_dict().items()]
        if time.monotonic() >= self._next_send:  # one message a second, not one an epoch
            self._send_values()

    def _send_values(self) -> None:
        for number, values in self._unsent.items():
            if values:
                self._inbox.put(("metrics", number, values))
        self._unsent.clear()
        self._next_send = time.monotonic() + self.send_interval

    def trial_ending(self, trial: optuna.trial.BaseTrial) -> None:
        """Before Optuna hears how the trial ended: record its run id on the trial."""
        self._send_values()
        number = trial.number
        if self._read_until(lambda m: m[0] == "run_id" and m[1] == number, self.run_id_wait):
            run_id = self._run_ids.get(number)
            if run_id:
                trial.set_user_attr(RUN_ID_ATTR, run_id)

    def trial_finished(self, trial: FrozenTrial) -> None:
        self._inbox.put(("finish", trial))

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Until everything sent so far has reached MLflow (or was given up on)."""
        token = os.urandom(8).hex()
        self._inbox.put(("barrier", token))
        return self._read_until(lambda m: m[0] == "barrier" and m[1] == token, timeout)

    def close(self, timeout: float = 15.0) -> set[int]:
        """Send what is left (waiting at most `timeout` s); the trial numbers not mirrored."""
        stopped: list[set[int]] = []

        def is_stop(message: tuple[Any, ...]) -> bool:
            if message[0] == "stopped":
                stopped.append(message[1])
                return True
            return False

        if self._process.is_alive():
            self._inbox.put(("stop", timeout))
            self._read_until(is_stop, timeout + 5)
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
        # Messages the tracking process never read are lost on purpose (the sync fills them
        # in); without this, the feeder thread would block this process's exit on a pipe
        # nobody reads.
        self._inbox.cancel_join_thread()
        self._inbox.close()
        left = stopped[0] if stopped else {n for n, r in self._run_ids.items() if r is None}
        return self.unmirrored | left

    def _read_until(self, wanted: Any, timeout: float) -> bool:
        """Take replies (recording run ids) until one is `wanted`, or the time is up."""
        if any(wanted(m) for m in self._replies_seen):
            return True
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                message = self._replies.get(timeout=remaining)
            except queue.Empty:
                return False
            if message[0] == "run_id":
                self._run_ids[message[1]] = message[2]
                if message[2] is None:
                    self.unmirrored.add(message[1])
            self._replies_seen.append(message)
            if len(self._replies_seen) > 100:
                del self._replies_seen[:50]
            if wanted(message):
                return True


def require_enabled(settings: TrackingSettings, command: str) -> None:
    if not settings.enabled:
        raise ConfigError(f"{command} needs MLflow; drop --no-mlflow")
