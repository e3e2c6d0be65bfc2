"""What a comparison's report gives MLflow: its directory, and each arm's medians as metrics."""

from __future__ import annotations

import re
from pathlib import Path

from hpo.analysis.comparison.stats import Summary
from hpo.tracking.reports import log_comparison_run
from hpo.tracking.runs import TrackingSettings


def log_comparison(
    tracking: TrackingSettings, experiment: str, name: str, out_dir: Path, summary: Summary
) -> str:
    """Log the report directory to the comparison's run with each arm's median final best and
    test accuracy; the run's id."""
    return log_comparison_run(
        tracking, experiment, name, out_dir, metrics=arm_medians(summary), arms=summary.arms
    )


def arm_medians(summary: Summary) -> dict[str, float]:
    """`<arm>.final_best_median` and `<arm>.test_acc_median` (the upper median of an even
    count), arm by arm, with the characters MLflow refuses in a metric name made `_`."""
    metrics = {}
    for arm, a in summary.arms.items():
        key = re.sub(r"[^A-Za-z0-9_.\- /]", "_", arm)
        if a.finals:
            finals = sorted(a.finals.values())
            metrics[f"{key}.final_best_median"] = finals[len(finals) // 2]
        if a.test_acc:
            tests = sorted(a.test_acc.values())
            metrics[f"{key}.test_acc_median"] = tests[len(tests) // 2]
    return metrics
