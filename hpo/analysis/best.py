"""A study's best trial: shown, retrained bit for bit, tested once, published to MLflow.

This is the only module that asks for the test split (`DataSplits.test()`), and it asks only
after the retrained network has reproduced the recorded validation metric exactly: the test
figures are then those of the very network the study selected, and the test split played no
part in selecting it.

MLflow is imported only when used. The published model is an MLflow pyfunc model saved from
`hpo/tracking/model.py` ("model from code": see that file) with the `trainer` package in its
`code_paths`, then logged to the study's parent run with `MlflowClient` (never the fluent
active run), at `best_model_trial_<n>`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from numpy.typing import NDArray
from optuna.trial import FrozenTrial, TrialState

from hpo.analysis.listing import ranked_trials
from hpo.errors import ConfigError
from hpo.spec.outcomes import completed_value

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from hpo.spec.study_file import StudySpec
    from hpo.tracking.runs import StudyRun, TrackingSettings
    from trainer import EpochMetrics, MultiLayerNet
    from trainer.data import DataSplits

logger = logging.getLogger(__name__)


def model_artifact_path(trial_number: int) -> str:
    """Where a trial's model lives on the parent run: one path per trial, because registered
    versions point at the artifacts, and a later best trial must not change an earlier one."""
    return f"best_model_trial_{trial_number}"


BEST_TRIAL_TAG, BEST_SEED_TAG = "hpo.best_trial", "hpo.best_seed"
EXAMPLE_ROWS = 5  # validation rows saved as the model's input example
_MODEL_CODE = Path(__file__).parents[1] / "tracking" / "model.py"
_UNFINISHED = {
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


# -- the best trial --------------------------------------------------------------------------


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best completed trial (`ranked_trials` order: ties go to the lower number)."""
    ranked = ranked_trials(study)
    if not ranked:
        counts = Counter(t.state for t in study.get_trials(deepcopy=False))
        has = ", ".join(f"{counts[s]} {word}" for s, word in _UNFINISHED.items() if counts[s])
        raise ConfigError(
            f"study {study.study_name!r} has no completed trial yet ({has or 'no trials'}); "
            "run it with hpo run first"
        )
    return ranked[0]


def trial_seed_of(trial: FrozenTrial) -> int:
    seed = trial.user_attrs.get("seed")
    if seed is None:
        raise ConfigError(f"trial {trial.number} has no recorded seed, so it cannot be retrained")
    return int(seed)


def find_run_id(
    client: MlflowClient, tracking: TrackingSettings, study: optuna.Study, trial: FrozenTrial
) -> str | None:
    """The trial's MLflow run id, as recorded on the trial, else found under the study's
    parent run; None if this tracking store has no run for it. MLflow errors propagate.

    Read-only: unlike `ensure_parent_run`, a study never mirrored here gets no parent run.
    """
    from hpo.tracking.runs import RUN_ID_ATTR

    recorded = trial.user_attrs.get(RUN_ID_ATTR)
    if recorded:
        return str(recorded)
    parent = find_parent_run(client, tracking, study)
    if parent is None:
        return None
    from hpo.tracking.sync import child_runs

    run = child_runs(client, parent).get(trial.number)
    return run.info.run_id if run is not None else None


def find_parent_run(
    client: MlflowClient, tracking: TrackingSettings, study: optuna.Study
) -> StudyRun | None:
    """The study's parent run in this tracking store if there is one, creating nothing."""
    from hpo.tracking.runs import PARENT_ATTR, ROLE_TAG, UID_TAG, StudyRun, study_uid

    uid = study_uid(study)
    from hpo.storage.studies import records

    known = records(study).get(PARENT_ATTR, {}).get(tracking.uri or "default")
    if known is not None:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

        try:
            run = client.get_run(known["run_id"])
        except MlflowException as error:  # deleted, or another store at this URI: search
            if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
        else:
            if run.info.lifecycle_stage == "active":
                return StudyRun(run.info.experiment_id, run.info.run_id, uid)
    name = tracking.experiment or (known or {}).get("experiment") or study.study_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{UID_TAG}` = '{uid}' and tags.`{ROLE_TAG}` = 'study'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return StudyRun(experiment.experiment_id, found[0].info.run_id, uid) if found else None


# -- retraining and the one look at the test split -------------------------------------------


@dataclass(frozen=True, eq=False)
class Retrained:
    """The best trial trained again: its network and both values of the study's metric."""

    trial: FrozenTrial
    seed: int
    metric: str
    network: MultiLayerNet
    splits: DataSplits
    retrained: float

    @property
    def recorded(self) -> float:
        return float(completed_value(self.trial))

    @property
    def identical(self) -> bool:
        return self.retrained == self.recorded

    def __repr__(self) -> str:
        return (
            f"Retrained(trial={self.trial.number}, seed={self.seed}, {self.metric}: "
            f"recorded={self.recorded!r}, retrained={self.retrained!r})"
        )


@dataclass(frozen=True)
class HeldOutResult:
    loss: float
    acc: float
    n_samples: int
    source: str | None  # where the test split came from (see `DataSplits.test_source`)


def require_test_split(spec: StudySpec, splits: DataSplits, *, command: str) -> None:
    """Refuse, before anything trains, data without the test split `command` evaluates on."""
    if not splits.has_test:
        raise ConfigError(
            f"{command} evaluates on the test split, but the data of study "
            f"{spec.study.name!r} has none; studies keep one when [data] sets test_fraction "
            "(e.g. 0.2), or n_samples smaller than the dataset (the rest is the test split), "
            "or the dataset has an official test set",
            source=str(spec.path) if spec.path else None,
        )


def retrain(
    spec: StudySpec,
    trial: FrozenTrial,
    on_epoch_end: Callable[[int, EpochMetrics], None] | None = None,
) -> Retrained:
    """Train `trial` again on the study's data with its recorded parameters and seed.

    Refuses data without a test split before training, since the point of retraining is the
    test figures. The caller checks `identical` before `evaluate_on_test`.
    """
    from hpo.engine.objective import train_trial
    from hpo.spec.data import load_splits

    seed = trial_seed_of(trial)
    config = spec.space.suggest(optuna.trial.FixedTrial(dict(trial.params)), spec.base)
    splits = load_splits(spec.data, seed=spec.study.seed)
    require_test_split(spec, splits, command="hpo best --retrain")
    network, history = train_trial(splits, config, seed, on_epoch_end)
    metric = spec.study.metric
    return Retrained(trial, seed, metric, network, splits, getattr(history.final, metric))


def evaluate_on_test(retrained: Retrained) -> HeldOutResult:
    """Loss and accuracy of the retrained network on the held-out test split."""
    if not retrained.identical:
        raise RuntimeError(f"{retrained!r} did not reproduce the trial: no test for it")
    x_test, t_test = retrained.splits.test()
    loss, acc = retrained.network.evaluate(x_test, t_test)
    return HeldOutResult(float(loss), float(acc), len(t_test), retrained.splits.test_source)


# -- MLflow: the parent run, the model, the registry -----------------------------------------


def publish(
    client: MlflowClient, parent: StudyRun, retrained: Retrained, test: HeldOutResult
) -> str:
    """Log the test figures, the best trial's tags and the model to the parent run; return the
    model URI (`runs:/<parent run id>/best_model_trial_<n>`)."""
    from mlflow.entities import Metric, RunTag

    number = retrained.trial.number
    with tempfile.TemporaryDirectory(prefix="hpo-best-") as tmp:
        model_dir = Path(tmp) / "model"
        save_model(retrained.network, retrained.splits.x_val[:EXAMPLE_ROWS], model_dir)
        client.log_artifacts(
            parent.run_id, str(model_dir), artifact_path=model_artifact_path(number)
        )
    # After the model, so that the tags never name a trial whose model is not there.
    now = int(time.time() * 1000)
    step = number  # a later best trial adds a point, not a second value
    client.log_batch(
        parent.run_id,
        metrics=[
            Metric("test_acc", test.acc, now, step),
            Metric("test_loss", test.loss, now, step),
        ],
        tags=[
            RunTag(BEST_TRIAL_TAG, str(number)),
            RunTag(BEST_SEED_TAG, str(retrained.seed)),
        ],
    )
    return f"runs:/{parent.run_id}/{model_artifact_path(number)}"


def save_model(network: MultiLayerNet, example: NDArray[np.float32], path: Path) -> Path:
    """Write `network` as an MLflow pyfunc model directory at `path` (which must not exist).

    `example`: (k, n_features) rows of the *validation* split, saved as the input example.
    The signature: float32 (-1, n_features) in, int64 (-1,) class labels out.
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    import trainer

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, network.input_size))]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]),
    )
    with tempfile.TemporaryDirectory(prefix="hpo-network-") as tmp:
        network_file = trainer.save_network(network, Path(tmp) / "network.npz")
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(_MODEL_CODE),  # a path: the model is defined by code, not pickled
            artifacts={"network": str(network_file)},
            signature=signature,
            input_example=np.ascontiguousarray(example, dtype=np.float32),
            # Copied to <model>/code/trainer; MLflow puts <model>/code first on sys.path.
            code_paths=[str(Path(trainer.__file__).parent)],
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"],
        )
    return path


def check_model_name(name: str) -> str:
    """A registered model name MLflow accepts: not blank, no '/', ':' or '%'."""
    if not name.strip() or any(c in name for c in "/:%"):
        raise ConfigError(
            f"a registered model name must not be blank or contain '/', ':' or '%', "
            f"but got --register {name!r}"
        )
    return name


def register(
    client: MlflowClient, name: str, parent: StudyRun, *, trial_number: int
) -> ModelVersion:
    """Register trial `trial_number`s model on the parent run as a version of `name`.

    The version's source is the model's artifact URI (as `mlflow.register_model` resolves a
    `runs:/` URI whose path holds an MLmodel file; our model is an artifact of the run, not an
    MLflow 3 LoggedModel) and its run id the parent run's. Idempotent: the same trial's model
    registered again returns the existing version.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        exists = {ErrorCode.Name(RESOURCE_ALREADY_EXISTS), ErrorCode.Name(ALREADY_EXISTS)}
        if error.error_code not in exists:
            raise
    root = client.get_run(parent.run_id).info.artifact_uri.rstrip("/")
    source = f"{root}/{model_artifact_path(trial_number)}"
    tags = {BEST_TRIAL_TAG: str(trial_number)}
    for version in client.search_model_versions(f"run_id = '{parent.run_id}'"):
        if (
            version.name == name
            and version.source == source
            and version.tags.get(BEST_TRIAL_TAG) == tags[BEST_TRIAL_TAG]
        ):
            return version
    return client.create_model_version(name, source, run_id=parent.run_id, tags=tags)


def describe_params(params: dict[str, Any]) -> str:
    from hpo.analysis.listing import fmt

    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items()) or "(none searched)"
