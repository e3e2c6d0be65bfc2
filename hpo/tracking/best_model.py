"""The best trial's network on the study's parent run: saved as a model, logged, registered.

The model is an MLflow pyfunc model saved from `hpo/tracking/model.py` ("model from code": see
that file) with the `trainer` package in its `code_paths`, then logged to the study's parent
run with `MlflowClient` (never the fluent active run), at `best_model_trial_<n>`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from hpo.errors import ConfigError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from hpo.tracking.runs import StudyRun
    from trainer import MultiLayerNet

BEST_TRIAL_TAG, BEST_SEED_TAG = "hpo.best_trial", "hpo.best_seed"
_MODEL_CODE = Path(__file__).with_name("model.py")


def model_artifact_path(trial_number: int) -> str:
    """Where a trial's model lives on the parent run: one path per trial, because registered
    versions point at the artifacts, and a later best trial must not change an earlier one."""
    return f"best_model_trial_{trial_number}"


def log_best_model(
    client: MlflowClient,
    parent: StudyRun,
    network: MultiLayerNet,
    example: NDArray[np.float32],
    *,
    trial_number: int,
    seed: int,
    test_loss: float,
    test_acc: float,
) -> str:
    """Log the model, then the test figures and the best trial's tags, to the parent run;
    return the model URI (`runs:/<parent run id>/best_model_trial_<n>`)."""
    from mlflow.entities import Metric, RunTag

    with tempfile.TemporaryDirectory(prefix="hpo-best-") as tmp:
        model_dir = Path(tmp) / "model"
        save_model(network, example, model_dir)
        client.log_artifacts(
            parent.run_id, str(model_dir), artifact_path=model_artifact_path(trial_number)
        )
    # After the model, so that the tags never name a trial whose model is not there.
    now = int(time.time() * 1000)
    step = trial_number  # a later best trial adds a point, not a second value
    client.log_batch(
        parent.run_id,
        metrics=[
            Metric("test_acc", test_acc, now, step),
            Metric("test_loss", test_loss, now, step),
        ],
        tags=[
            RunTag(BEST_TRIAL_TAG, str(trial_number)),
            RunTag(BEST_SEED_TAG, str(seed)),
        ],
    )
    return f"runs:/{parent.run_id}/{model_artifact_path(trial_number)}"


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


def register_model(
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
