"""The figures of the studies that train nothing, drawn from what their trials stored.

`optimizer_paths.png` is the book's figures 6-3, 6-5, 6-6 and 6-8 side by side: one panel per
optimizer, its path over the contour lines of f(x, y) = x²/20 + y². `activations.png` is its
figures 6-10 to 6-14 in one: a row of histograms per setting, one per hidden layer. Nothing is
computed again: the paths and the counts come from the trials' user attributes (see
`hpo.engine.probes`). As in `hpo.analysis.figures`, `Figure` objects built without pyplot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from hpo.analysis.listing import fmt
from hpo.engine.probes import f
from hpo.spec.kinds import ActivationSettings, PathsSettings
from hpo.spec.search.space import same_value

if TYPE_CHECKING:
    from hpo.spec.study_file import StudySpec

PATHS_FIGURE, ACTIVATIONS_FIGURE = "optimizer_paths.png", "activations.png"
# The book's ch06/optimizer_compare_naive.py draws x in [-10, 10]; y in [-5, 5] here holds
# every path of the book's rates with the plot's aspect kept 1:1, so the ellipses are true.
X_RANGE, Y_RANGE = (-10.0, 10.0), (-5.0, 5.0)
NAMES = {
    "sgd": "SGD",
    "momentum": "Momentum",
    "nesterov": "Nesterov",
    "adagrad": "AdaGrad",
    "rmsprop": "RMSprop",
    "adam": "Adam",
}


def _agg(figure: Figure) -> Figure:
    FigureCanvasAgg(figure)
    return figure


def _in_grid_order(study: optuna.Study, spec: StudySpec) -> list[FrozenTrial]:
    """Completed trials in the order of the searched choices (the file's order), one per
    setting (the first, if a setting ran twice), rather than in the order they ran."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    grid = {p.name: list(p.choices or ()) for p in spec.space.params}
    ordered: list[FrozenTrial] = []
    for values in product(*grid.values()):
        for trial in trials:
            if all(same_value(trial.params.get(k), v) for k, v in zip(grid, values, strict=True)):
                ordered.append(trial)
                break
    rest = [t for t in trials if all(t.number != o.number for o in ordered)]
    return ordered + rest


# -- optimizer paths --------------------------------------------------------------------------


@dataclass(frozen=True)
class PathPanel:
    title: str
    x: Sequence[float]
    y: Sequence[float]


def path_panels(study: optuna.Study, spec: StudySpec) -> list[PathPanel]:
    panels = []
    for trial in _in_grid_order(study, spec):
        path = trial.user_attrs.get("path")
        if not path:
            continue
        name = trial.params.get("optimizer", "?")
        lr = trial.user_attrs.get("lr")
        title = f"{NAMES.get(name, name)} (lr {fmt(lr)})" if lr is not None else str(name)
        steps = len(path["x"]) - 1
        title += f"\nf = {trial.value:.2g} after {steps} updates"
        panels.append(PathPanel(title, path["x"], path["y"]))
    return panels


def paths_figure(panels: Sequence[PathPanel], *, title: str, columns: int = 3) -> Figure:
    """One panel per optimizer: the contour lines of f, the path as red dots joined by lines
    from the start, and the minimum at (0, 0) as a black +, as in the book's figures."""
    if not panels:
        raise ValueError("paths_figure needs at least one path, but got none")
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.8 * columns, 2.9 * rows + 0.5), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    xs = np.linspace(*X_RANGE, 401)
    ys = np.linspace(*Y_RANGE, 201)
    mesh_x, mesh_y = np.meshgrid(xs, ys)
    levels = [0.25, 0.5, 1, 2, 3, 4, 5, 7]
    for index, axes in enumerate(grid.flat):
        if index >= len(panels):
            axes.remove()
            continue
        panel = panels[index]
        axes.contour(mesh_x, mesh_y, f(mesh_x, mesh_y), levels=levels, colors="0.6",
                     linewidths=0.8)  # fmt: skip
        axes.plot(panel.x, panel.y, "o-", color="red", markersize=3.5, linewidth=1.0)
        axes.plot([panel.x[0]], [panel.y[0]], "o", color="red", markersize=6, fillstyle="none")
        axes.plot([0], [0], "+", color="black", markersize=12, markeredgewidth=1.8)
        axes.set(xlim=X_RANGE, ylim=Y_RANGE, aspect="equal")
        axes.set_title(panel.title, fontsize="medium")
        if index + columns >= len(panels):  # no panel below
            axes.set_xlabel("x")
        if index % columns == 0:
            axes.set_ylabel("y")
    figure.suptitle(title)
    return _agg(figure)


# -- activation histograms --------------------------------------------------------------------


@dataclass(frozen=True)
class HistogramRow:
    """One setting: its label and each hidden layer's stored histogram (see hpo.engine.probes)."""

    label: str
    activation: str
    edges: Sequence[float]
    layers: Sequence[dict[str, Any]]


def _std_label(value: Any) -> str:
    names = {"xavier": "Xavier", "he": "He"}
    return names[value] if value in names else f"std {fmt(float(value))}"


def histogram_rows(study: optuna.Study, spec: StudySpec) -> list[HistogramRow]:
    rows = []
    for trial in _in_grid_order(study, spec):
        stored = trial.user_attrs.get("histograms")
        if not stored:
            continue
        config = spec.space.suggest(optuna.trial.FixedTrial(dict(trial.params)), spec.base)
        label = (
            f"{config.activation}, {_std_label(config.weight_init_std)}\nentropy {trial.value:.2f}"
        )
        rows.append(HistogramRow(label, config.activation, stored["edges"], stored["layers"]))
    return rows


def activations_figure(rows: Sequence[HistogramRow], *, title: str) -> Figure:
    """A row of histograms per setting, one per hidden layer ("1-layer", "2-layer", ...),
    sharing the y axis along the row, so that each row shows how the spread changes with depth.

    ReLU's exact zeros (half its activations) would flatten everything else in the first bin's
    shadow: as the book does (its ylim 7000), the axis is cut there and the bar's count written
    on it. Activations beyond the range are counted in the panel's corner.
    """
    if not rows:
        raise ValueError("activations_figure needs at least one setting, but got none")
    n_layers = max(len(row.layers) for row in rows)
    figure = Figure(figsize=(2.3 * n_layers + 1.2, 1.45 * len(rows) + 0.8), layout="constrained")
    grid = figure.subplots(len(rows), n_layers, squeeze=False, sharey="row")
    for r, row in enumerate(rows):
        edges = np.asarray(row.edges)
        counts = [np.asarray(layer["counts"]) for layer in row.layers]
        cap = None
        if row.activation == "relu":
            rest = max(int(c[1:].max()) for c in counts)
            if rest and max(int(c[0]) for c in counts) > 3 * rest:
                cap = 1.25 * rest
        for i, axes in enumerate(grid[r]):
            if i >= len(row.layers):
                axes.remove()
                continue
            layer = row.layers[i]
            axes.stairs(counts[i], edges, fill=True, color="tab:blue", alpha=0.85)
            axes.set_xlim(edges[0], edges[-1])
            axes.tick_params(labelsize=6.5)
            if cap is not None:
                axes.set_ylim(0, cap)
                if counts[i][0] > cap:
                    axes.text(edges[0], 0.97 * cap, f" {counts[i][0]:,} ", fontsize=6,
                              va="top", ha="left", color="white",
                              bbox={"color": "tab:blue", "pad": 0.5})  # fmt: skip
            outside = [
                f"{layer[k]:,} {k} {edges[0 if k == 'below' else -1]:g}"
                for k in ("below", "above")
                if layer[k]
            ]
            if outside:
                axes.text(0.98, 0.97, "\n".join(outside), transform=axes.transAxes,
                          fontsize=6, ha="right", va="top", color="tab:red")  # fmt: skip
            if r == 0:
                axes.set_title(f"{i + 1}-layer", fontsize="medium")
            if i == 0:
                axes.set_ylabel(row.label, fontsize=7.5)
    figure.supxlabel("activation")
    figure.suptitle(title)
    return _agg(figure)


def probe_figures(study: optuna.Study, spec: StudySpec) -> dict[str, Figure]:
    """The figure of a study that trains nothing, by file name."""
    return FIGURES[spec.study.kind](study, spec)


def _paths_figures(study: optuna.Study, spec: StudySpec) -> dict[str, Figure]:
    panels = path_panels(study, spec)
    steps = spec.probe.steps if isinstance(spec.probe, PathsSettings) else "?"
    return {
        PATHS_FIGURE: paths_figure(
            panels,
            title=f"{study.study_name}: {len(panels)} optimizers, {steps} updates on "
            "f(x, y) = x²/20 + y² (figures 6-3, 6-5, 6-6, 6-8)",
        )
    }


def _activations_figures(study: optuna.Study, spec: StudySpec) -> dict[str, Figure]:
    rows = histogram_rows(study, spec)
    sizes = spec.base.hidden_size_list
    n_inputs = spec.probe.n_inputs if isinstance(spec.probe, ActivationSettings) else "?"
    return {
        ACTIVATIONS_FIGURE: activations_figure(
            rows,
            title=f"{study.study_name}: activations of {len(sizes)} hidden layers of "
            f"{sizes[0]} units for {n_inputs:,} random inputs, untrained "
            "(figures 6-10 to 6-14)",
        )
    }


# The figures of each kind that trains nothing, by the kind's name.
FIGURES: Mapping[str, Callable[[optuna.Study, StudySpec], dict[str, Figure]]] = {
    "optimizer_paths": _paths_figures,
    "activations": _activations_figures,
}
