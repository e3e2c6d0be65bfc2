"""The comparison's figures: pure functions from rows to matplotlib Figures (no I/O)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from hpo.analysis.comparison.studies import Row


def _curves(rows: list[Row]) -> dict[str, dict[int, list[Row]]]:
    by_arm: dict[str, dict[int, list[Row]]] = {}
    for r in rows:
        if r.kind == "trial" and r.index is not None:
            by_arm.setdefault(r.arm, {}).setdefault(r.seed, []).append(r)
    for seeds in by_arm.values():
        for seed_rows in seeds.values():
            seed_rows.sort(key=lambda r: r.finished_index)
    return by_arm


def _band(ax, x, runs: list[np.ndarray], label: str) -> None:
    stacked = np.vstack(runs)
    with warnings.catch_warnings():  # where every seed has ended, the band simply stops
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(stacked, axis=0)
        q1, q3 = np.nanpercentile(stacked, [25, 75], axis=0)
    (line,) = ax.plot(x, median, label=label, linewidth=1.8)
    ax.fill_between(x, q1, q3, color=line.get_color(), alpha=0.2, linewidth=0)


def best_so_far_vs_trials(rows: list[Row], n_trials: int, metric: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(1, n_trials + 1)
    for arm, seeds in _curves(rows).items():
        runs = []
        for seed_rows in seeds.values():
            curve = np.full(n_trials, np.nan)
            for r in seed_rows:
                if r.finished_index <= n_trials and r.best_so_far is not None:
                    curve[r.finished_index - 1] = r.best_so_far
            runs.append(curve)
        _band(ax, x, runs, arm)
    ax.set_xlabel("trials")
    ax.set_ylabel(f"best {metric} so far")
    ax.set_title("Best so far against trials (median over seeds, interquartile band)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def best_so_far_vs_epochs(rows: list[Row], metric: str, points: int = 400) -> Figure:
    """The same, against epochs trained: where pruning's saving shows."""
    curves = _curves(rows)
    most = max(
        (seed_rows[-1].cumulative_epochs or 0)
        for seeds in curves.values()
        for seed_rows in seeds.values()
    )
    grid = np.linspace(1, max(most, 1), points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, seeds in curves.items():
        runs = []
        for seed_rows in seeds.values():
            xs = np.array([r.cumulative_epochs for r in seed_rows], dtype=float)
            ys = np.array([np.nan if r.best_so_far is None else r.best_so_far for r in seed_rows])
            at = np.searchsorted(xs, grid, side="right") - 1  # the last trial ended by then
            curve = np.where(at >= 0, ys[np.clip(at, 0, None)], np.nan)
            curve[grid > xs[-1]] = np.nan  # this seed's run had ended
            runs.append(curve)
        _band(ax, grid, runs, arm)
    ax.set_xlabel("epochs trained (cumulative)")
    ax.set_ylabel(f"best {metric} so far")
    ax.set_title("Best so far against epochs trained")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _last_best(seed_rows: list[Row], budget: int) -> float:
    """The best so far at the budget's last trial (a budget of epochs: the last finished)."""
    within = [r for r in seed_rows if r.index is not None and r.index <= budget]
    last = max(within, key=lambda r: r.finished_index, default=None)
    return last.best_so_far if last is not None and last.best_so_far is not None else np.nan


def final_values(
    rows: list[Row],
    n_trials: int | Mapping[str, int],
    metric: str,
    noise: tuple[float, float] | None,
) -> Figure:
    """Each seed's final best per arm (at the arm's budget: `n_trials`, or its entry when
    file arms have their own), with the noise check's spread for scale."""
    curves = _curves(rows)
    arms = list(curves)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(arms)), 4.5))
    data = []
    for arm in arms:
        budget = n_trials if isinstance(n_trials, int) else n_trials[arm]
        finals = [_last_best(seed_rows, budget) for seed_rows in curves[arm].values()]
        data.append([v for v in finals if v is not None and not np.isnan(v)])
    ax.boxplot(data, tick_labels=arms, widths=0.5)
    for i, values in enumerate(data, start=1):
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
        ax.scatter(np.full(len(values), i) + jitter, values, s=18, zorder=3)
    if noise is not None:
        ax.axhspan(noise[0], noise[1], color="grey", alpha=0.15,
                   label="one configuration, different seeds")  # fmt: skip
        ax.legend(loc="lower right")
    ax.set_ylabel(f"final best {metric}")
    ax.set_title("Final best per seed")
    ax.grid(alpha=0.3, axis="y")
    return fig


def _test(row: Row | None) -> float:
    return row.test_acc if row is not None and row.test_acc is not None else np.nan


def test_accuracy(rows: list[Row], reference: str | None) -> Figure:
    """Each seed's retrained test accuracy per arm, the seeds joined across arms (the gains are
    paired by seed); a refit arm's configurations before the refit as hollow markers."""
    arms: list[str] = []
    by_arm: dict[str, dict[int, Row]] = {}
    for r in rows:
        if r.kind == "trial" and r.test_acc is not None:
            if r.arm not in by_arm:
                arms.append(r.arm)
            by_arm.setdefault(r.arm, {})[r.seed] = r
    fig, ax = plt.subplots(figsize=(max(5, 2.0 * len(arms)), 4.5))
    seeds = sorted({seed for runs in by_arm.values() for seed in runs})
    x = np.arange(len(arms))
    for seed in seeds:
        joined = [_test(by_arm[a].get(seed)) for a in arms]
        ax.plot(x, joined, color="grey", alpha=0.35, linewidth=0.8, zorder=1)
    for i, arm in enumerate(arms):
        runs = by_arm[arm]
        values = [_test(r) for r in runs.values()]
        (points,) = ax.plot(np.full(len(values), i), values, "o", zorder=3, label=None)
        ax.hlines(np.median(values), i - 0.25, i + 0.25, color=points.get_color(), linewidth=2.5)
        before = [
            r.test_acc_without_refit for r in runs.values() if r.test_acc_without_refit is not None
        ]
        if before:
            label = f"{arm} before its refit"
            ax.plot(np.full(len(before), i + 0.18), before, "o", markerfacecolor="none",
                    color=points.get_color(), zorder=2, label=label)  # fmt: skip
    ax.set_xticks(x, arms)
    ax.set_ylabel("test accuracy of the chosen configuration")
    against = f", paired against {reference}" if reference else ""
    ax.set_title(f"Held-out test accuracy per seed (lines join a seed{against}; bar: median)")
    ax.grid(alpha=0.3, axis="y")
    if any(
        r.test_acc_without_refit is not None for runs in by_arm.values() for r in runs.values()
    ):
        ax.legend(loc="lower right")
    return fig
