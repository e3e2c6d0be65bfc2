"""MLflow's side of a study: settings, the names runs are tagged with, the parent run.

MLflow mirrors the study: one parent run per study, one child run per trial. Optuna's storage is
the truth; MLflow is a mirror that may lag or miss trials while it is down, and `sync_study`
(`hpo sync-mlflow`, and the end of every `hpo run`) fills in what is missing. While a study
runs, every MLflow call happens in one process beside the run's workers
(`hpo.tracking.mirror`), never in a worker. Clients use explicit run ids, never the fluent
active run.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import ConfigError
from hpo.storage.database import StorageSettings, redact
from hpo.storage.locks import StorageLock

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from hpo.spec.study_file import StudySpec

    # What `make_client` returns, by the name the layers above use: they hold a client and
    # hand it back to functions here, never importing MLflow themselves.
    TrackingClient = MlflowClient

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
# A pruned trial ended as the study meant it to (MLflow's KILLED looks like a failure in its
# UI): FINISHED, named and described as pruned (see `final_fields`).
STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "FINISHED",
    TrialState.FAIL: "FAILED",
}
NOTE_TAG = "mlflow.note.content"  # the description MLflow's UI shows for a run or experiment
MAX_BATCH = 1000  # MLflow's limit of metric values per log_batch

DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow 3's default store, in the working directory

# Bounded client behaviour: by default MLflow waits 120 s for an answer and retries for minutes.
# Here a call that gets no answer gives up after 5 s and one retry (about 11 s in all); the
# mirror then pauses MLflow for a cooldown and `sync_study` fills in later. Users' own
# settings win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


class TrackingStoreError(ConfigError):
    """The tracking store exists but cannot be used as it is (a half-migrated schema)."""


@dataclass(frozen=True)
class TrackingSettings:
    """Where the study is mirrored: `uri` None means MLflow's default (./mlflow.db)."""

    enabled: bool
    uri: str | None = None
    experiment: str | None = None  # default: the study's name

    @property
    def remote(self) -> bool:
        """Whether the store is a tracking server (else a database or files, local work)."""
        uri = self.uri or DEFAULT_URI
        return uri.startswith(("http://", "https://", "databricks"))

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        return redact(self.uri) if self.uri else "MLflow's default (./mlflow.db)"


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
    """A client of the tracking store, the store created (or migrated) first if it is a
    database: under a lock, so that processes starting together do not run MLflow's schema
    migrations at once (which leaves a store half-migrated)."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # one line per retry otherwise
    uri = settings.uri or DEFAULT_URI
    if not uri.startswith(("sqlite:", "postgresql")):
        return MlflowClient(tracking_uri=uri)  # a server migrates its own store
    # MLflow opens a database store as the client is made: creates it, migrates, verifies.
    with StorageLock(StorageSettings(url=uri), "mlflow-store"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # alembic's notes on MLflow's own migrations
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as error:
            raise _store_error(uri, error) from None
    return client


def _store_error(uri: str, error: Exception) -> Exception:
    """A clear line for a half-migrated store; anything else as it was."""
    text = str(getattr(error, "orig", None) or error)
    half_migrated = (
        "out-of-date database schema" in text or "_alembic_tmp" in text or "already exists" in text
    )
    if not half_migrated:
        return error
    detail = text.strip().splitlines()[0][:200]
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    aside = (
        f"move it aside (mv {path} {path}.broken), then `hpo sync-mlflow STUDY` rebuilds the "
        "mirror from the study storage"
        if path
        else "restore it from a backup, or point --tracking-uri at a new store and run "
        "`hpo sync-mlflow STUDY`"
    )
    return TrackingStoreError(
        f"the MLflow store {redact(uri)} is half-migrated, as an interrupted schema migration "
        f"leaves it ({detail}). The studies are safe in their own storage: {aside}",
        key="tracking-uri",
    )


def epoch_ms(moment: Any = None) -> int:
    """Milliseconds since the epoch, from a datetime or now."""
    return int((moment.timestamp() if moment is not None else time.time()) * 1000)


def param_value(value: Any) -> str:
    """A parameter as MLflow stores it: text, lists and tables as JSON."""
    return json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)


# -- the parent run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRun:
    """The parent run of a study in one tracking store; `uid` names the study everywhere."""

    experiment_id: str
    run_id: str
    uid: str


def study_uid(study: optuna.Study) -> str:
    from hpo.storage.studies import UID_ATTR, records

    uid = records(study).get(UID_ATTR)
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
        from hpo.storage.studies import records, set_record

        known = records(study).get(PARENT_ATTR, {}).get(key)
        if known is not None:
            try:
                run = client.get_run(known["run_id"])
                if run.info.lifecycle_stage == "active":
                    return StudyRun(run.info.experiment_id, run.info.run_id, uid)
            except Exception as error:  # deleted by hand, or another store at this URI
                logger.debug("stored parent run %s not usable: %s", known, error)
        experiment_name = settings.experiment or (known or {}).get("experiment") or name
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            experiment_id = client.create_experiment(
                experiment_name, tags=experiment_tags(spec, storage)
            )
        else:
            experiment_id = experiment.experiment_id
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
        attrs = dict(records(study).get(PARENT_ATTR, {}))
        attrs[key] = {"run_id": run_id, "experiment": experiment_name}
        set_record(study, PARENT_ATTR, attrs)
        return StudyRun(experiment_id, run_id, uid)


def experiment_tags(spec: StudySpec, storage: StorageSettings) -> dict[str, str]:
    """An experiment hpo creates opens on its runs (not MLflow's GenAI overview) and says
    which study it mirrors, from which file."""
    source = f" from {spec.path}" if spec.path is not None else ""
    what = spec.base.describe() if spec.trains else f"{spec.study.kind} (trains nothing)"
    return {
        "mlflow.experimentKind": "custom_model_development",
        NOTE_TAG: (
            f"Mirror of the hpo study {spec.study.name!r}{source}, stored in "
            f"{storage.redacted()}: {spec.study.metric} ({spec.study.direction}) of {what}. "
            "One parent run for the study, one child run per trial."
        ),
    }


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
        kind = spec.kind
        data = {f"{kind.section}.{k}": v for k, v in spec.probe.as_dict().items()}
        model = {k: v for k, v in spec.base.architecture().items() if k in kind.settings}
        fixed = {f"model.{k}": v for k, v in model.items() if k not in searched}
    params = [Param(k, param_value(v)) for k, v in sorted((fixed | data).items())]
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

    end = epoch_ms(trial.datetime_complete)
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
    return metrics, tags | _outcome(trial, metric, epochs)


def _outcome(trial: FrozenTrial, metric: str, epochs: int) -> dict[str, str]:
    """How the trial ended, in the run's name, an `hpo.outcome` tag and its description."""
    number, value = trial.number, trial.value
    shown = f"{value:.4g}" if value is not None else "none"
    diverged = trial.user_attrs.get("diverged")
    if trial.state == TrialState.COMPLETE:
        outcome, name = "complete", f"trial {number}"
        note = f"Trained all {epochs} epochs: final {metric} {shown}."
    elif trial.state == TrialState.PRUNED and diverged:
        outcome, name = "diverged", f"trial {number} (diverged at epoch {diverged['epoch']})"
        note = (
            f"Diverged at epoch {diverged['epoch']} ({diverged['reason']}), so it was stopped; "
            "the study counts it as pruned. A smaller learning rate usually avoids it."
        )
    elif trial.state == TrialState.PRUNED:
        outcome, name = "pruned", f"trial {number} (pruned at epoch {epochs})"
        note = (
            f"Pruned after epoch {epochs}: its {metric} ({shown}) trailed the earlier trials' at "
            "that epoch, so the study's pruner stopped it to save the rest of its epochs. An "
            "expected outcome, not an error."
        )
    else:
        outcome, name = "failed", f"trial {number} (failed)"
        note = f"Failed: {trial.user_attrs.get('error') or 'no message recorded'}."
    return {"hpo.outcome": outcome, "mlflow.runName": name, NOTE_TAG: note}


def require_enabled(settings: TrackingSettings, command: str) -> None:
    if not settings.enabled:
        raise ConfigError(f"{command} needs MLflow; drop --no-mlflow")
