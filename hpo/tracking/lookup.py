"""Finding a study's runs in a tracking store without creating any (`hpo best`, `hpo report`).

Read-only: unlike `ensure_parent_run`, a study never mirrored here gets no parent run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpo.storage.studies import records
from hpo.tracking.runs import (
    PARENT_ATTR,
    ROLE_TAG,
    RUN_ID_ATTR,
    UID_TAG,
    StudyRun,
    TrackingSettings,
    study_uid,
)
from hpo.tracking.sync import child_runs

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import FrozenTrial


def find_run_id(
    client: MlflowClient, tracking: TrackingSettings, study: optuna.Study, trial: FrozenTrial
) -> str | None:
    """The trial's MLflow run id, as recorded on the trial, else found under the study's
    parent run; None if this tracking store has no run for it. MLflow errors propagate."""
    recorded = trial.user_attrs.get(RUN_ID_ATTR)
    if recorded:
        return str(recorded)
    parent = find_parent_run(client, tracking, study)
    if parent is None:
        return None
    run = child_runs(client, parent).get(trial.number)
    return run.info.run_id if run is not None else None


def find_parent_run(
    client: MlflowClient, tracking: TrackingSettings, study: optuna.Study
) -> StudyRun | None:
    """The study's parent run in this tracking store if there is one, creating nothing."""
    uid = study_uid(study)
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
