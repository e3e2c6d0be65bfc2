"""Reports as MLflow artifacts: a study's on its parent run, a comparison's on a run of its own.

The reports are written by `hpo.analysis`; this module only puts their files and headline
numbers where MLflow's UI shows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.tracking.lookup import find_parent_run
from hpo.tracking.runs import StudyRun, TrackingSettings, ensure_parent_run, make_client

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from hpo.spec.study_file import StudySpec
    from hpo.storage.database import StorageSettings

COMPARISON_ROLE = "comparison"


def log_files_to_parent_run(
    client: MlflowClient,
    tracking: TrackingSettings,
    storage: StorageSettings,
    spec: StudySpec,
    study: optuna.Study,
    files: Iterable[Path],
    *,
    artifact_path: str,
) -> tuple[StudyRun, bool]:
    """Log `files` to the study's parent run under `artifact_path`; (run, created).

    The parent run is looked up without writing anything; a study never mirrored to this
    tracking store gets its parent run created, as `hpo run` would have. Logging again
    replaces the files.
    """
    parent = find_parent_run(client, tracking, study)
    created = parent is None
    if parent is None:
        parent = ensure_parent_run(client, tracking, storage, spec, study)
    for path in files:
        client.log_artifact(parent.run_id, str(path), artifact_path=artifact_path)
    return parent, created


def log_comparison_run(
    tracking: TrackingSettings,
    experiment: str,
    name: str,
    out_dir: Path,
    *,
    metrics: Mapping[str, float],
    arms: Iterable[str],
) -> str:
    """Log the report directory and its headline `metrics` to the comparison's run (found
    again by its tags when the comparison is rerun, else created); its id."""
    from mlflow.entities import Metric

    client = make_client(tracking)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`hpo.role` = '{COMPARISON_ROLE}' and tags.`hpo.comparison` = '{name}'"
        ),
        max_results=1,
    )
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {
            "hpo.role": COMPARISON_ROLE,
            "hpo.comparison": name,
            "mlflow.runName": f"comparison {name}",
        }
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_batch(run_id, metrics=[Metric(key, value, 0, 0) for key, value in metrics.items()])
    client.set_tag(run_id, "hpo.arms", ", ".join(arms))
    client.log_artifacts(run_id, str(out_dir), artifact_path="report")
    client.set_terminated(run_id, "FINISHED")
    return run_id
