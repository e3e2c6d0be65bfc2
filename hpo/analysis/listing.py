"""Study results as text and rows: the book's Best-N listing, status summaries, exports."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.spec.outcomes import Estimate, ranked_trials, selection_estimates

# How the book prints a setting: "lr:0.0092, weight decay:3.86e-07".
DISPLAY_NAMES = {"weight_decay_lambda": "weight decay", "dropout_ratio": "dropout"}
METRIC_LABELS = {"val_acc": "val acc", "val_loss": "val loss"}


def fmt(value: Any) -> str:
    """Three significant digits for floats (0.0092, 3.86e-07), everything else as is."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.3g}"
    return str(value)


def best_lines(study: optuna.Study, metric: str, n: int = 5) -> list[str]:
    """The book's listing: `Best-1 (val acc:0.83) | lr:0.0092, weight decay:3.86e-07`."""
    label = METRIC_LABELS.get(metric, metric)
    selected = {e.trial.number: e for e in selection_estimates(study)}
    lines = []
    for rank, trial in enumerate(ranked_trials(study)[:n], start=1):
        settings = ", ".join(
            f"{DISPLAY_NAMES.get(name, name)}:{fmt(value)}" for name, value in trial.params.items()
        )
        estimate = selected.get(trial.number)
        # After a selection its finalists lead, by the mean of all their trainings.
        value = (
            f"{label}:{fmt(estimate.mean)} ± {fmt(estimate.std)} over {estimate.n}, "
            f"search {fmt(trial.value)}"
            if estimate is not None
            else f"{label}:{fmt(trial.value)}"
        )
        lines.append(f"Best-{rank} ({value}) | {settings}")
    return lines


@dataclass(frozen=True)
class StudyStatus:
    name: str
    counts: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any]
    best_number: int | None
    selected: Estimate | None = None  # the winner of the study's selection, if it has run

    @property
    def finished(self) -> int:
        c = self.counts
        return c.get("COMPLETE", 0) + c.get("PRUNED", 0) + c.get("DIVERGED", 0)


def outcome_counts(trials: Sequence[optuna.trial.FrozenTrial]) -> Counter[str]:
    """Trials by state name, with the pruned ones that diverged counted apart ("DIVERGED"):
    Optuna calls both pruned, but a study without a pruner prunes nothing, and a diverged
    trial says something else about its settings."""
    counts: Counter[str] = Counter()
    for trial in trials:
        diverged = trial.state.name == "PRUNED" and trial.user_attrs.get("diverged")
        counts["DIVERGED" if diverged else trial.state.name] += 1
    return counts


def study_status(study: optuna.Study) -> StudyStatus:
    trials = study.get_trials(deepcopy=False)
    counts = outcome_counts(trials)
    ranked = ranked_trials(study)
    best = ranked[0] if ranked else None
    return StudyStatus(
        name=study.study_name,
        counts=dict(counts),
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_number=best.number if best else None,
        selected=next(iter(selection_estimates(study)), None),
    )


def status_line(status: StudyStatus, n_trials: int | None = None) -> str:
    c = status.counts
    budget = f"/{n_trials}" if n_trials else ""
    parts = [
        f"{status.finished}{budget} finished",
        f"{c.get('COMPLETE', 0)} complete",
        f"{c.get('PRUNED', 0)} pruned",
        *([f"{c['DIVERGED']} diverged"] if c.get("DIVERGED") else []),
        f"{c.get('FAIL', 0)} failed",
        f"{c.get('RUNNING', 0)} running",
    ]
    if c.get("WAITING"):
        parts.append(f"{c['WAITING']} waiting")
    best = "no completed trial yet"
    if status.best_value is not None:
        params = ", ".join(f"{k}={fmt(v)}" for k, v in status.best_params.items())
        best = f"best {fmt(status.best_value)} (trial {status.best_number}: {params})"
    if status.selected is not None:
        won = status.selected
        best = (
            f"selected trial {status.best_number}: mean {fmt(won.mean)} ± {fmt(won.std)} over "
            f"{won.n} trainings (its search value {fmt(status.best_value)}; {params})"
        )
    return f"{status.name}: {', '.join(parts)}; {best}"


def export_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One flat row per trial: number, state, value, every parameter, epochs, duration, seed."""
    names: list[str] = []
    for trial in study.get_trials(deepcopy=False):
        names += [n for n in trial.params if n not in names]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        history = trial.user_attrs.get("history") or {}
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        diverged = trial.user_attrs.get("diverged")
        row: dict[str, Any] = {
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            **{f"param_{n}": trial.params.get(n) for n in names},
            "epochs_trained": len(history.get("val_acc", [])),
            "duration_s": duration,
            "seed": trial.user_attrs.get("seed"),
            "diverged_epoch": diverged.get("epoch") if diverged else None,
            "error": trial.user_attrs.get("error"),
        }
        rows.append(row)
    return rows
