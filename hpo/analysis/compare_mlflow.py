"""A comparison's report as an MLflow run: the "comparison" run of its experiment."""

from __future__ import annotations

import re
from pathlib import Path

from hpo.analysis.compare_stats import Summary
from hpo.tracking.runs import TrackingSettings, make_client

ROLE = "comparison"


def log_comparison(
    tracking: TrackingSettings, experiment: str, name: str, out_dir: Path, summary: Summary
) -> str:
    """Log the report directory to the comparison's run (found again by its tags when the
    comparison is rerun) with each arm's median final best and test accuracy; its id."""
    from mlflow.entities import Metric

    client = make_client(tracking)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`hpo.role` = '{ROLE}' and tags.`hpo.comparison` = '{name}'",
        max_results=1,
    )
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {"hpo.role": ROLE, "hpo.comparison": name, "mlflow.runName": f"comparison {name}"}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
    metrics = []
    for arm, a in summary.arms.items():
        key = re.sub(r"[^A-Za-z0-9_.\- /]", "_", arm)
        if a.finals:
            finals = sorted(a.finals.values())
            metrics.append(Metric(f"{key}.final_best_median", finals[len(finals) // 2], 0, 0))
        if a.test_acc:
            tests = sorted(a.test_acc.values())
            metrics.append(Metric(f"{key}.test_acc_median", tests[len(tests) // 2], 0, 0))
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, "hpo.arms", ", ".join(summary.arms))
    client.log_artifacts(run_id, str(out_dir), artifact_path="report")
    client.set_terminated(run_id, "FINISHED")
    return run_id
