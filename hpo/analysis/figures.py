"""The report's figures: data in, a matplotlib `Figure` out, nothing read or written here.

Our own figures (the book's Figure 6-24 and the lr-weight decay map) are `Figure` objects
built without pyplot, so no figure is ever left open in pyplot's registry and callers can
inspect a figure before `hpo.analysis.study_report` saves it. Optuna's plots draw through
pyplot: each
is drawn under `rc_context` (Optuna calls `plt.style.use("ggplot")`, which would otherwise
restyle the whole process), then closed in pyplot, and restyled where Optuna's defaults hid
what a reader looks for (the parallel coordinates' worst trials, the intermediate values'
colours). Every returned figure has an Agg canvas, whatever backend the process uses.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

import matplotlib
import numpy as np
import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.colors import Colormap
    from matplotlib.typing import ColorType, LineStyleType


class _LineStyle(TypedDict):
    color: ColorType
    linestyle: LineStyleType
    linewidth: float


BOOK_COLUMNS = 5  # Figure 6-24 of the book: 20 trials in 4 rows of 5
VAL_STYLE: _LineStyle = {"color": "tab:blue", "linestyle": "-", "linewidth": 1.4}
TRAIN_STYLE: _LineStyle = {"color": "tab:orange", "linestyle": "--", "linewidth": 1.2}


def _agg(figure: Figure) -> Figure:
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


# -- Figure 6-24 ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CurvePanel:
    """One small plot of Figure 6-24: a trial's accuracies per epoch (index 0 is epoch 1).

    `title` is the book's "Best-1 (val acc:0.83)"; `caption` the trial's parameters.
    """

    title: str
    caption: str
    val_acc: Sequence[float]
    train_acc: Sequence[float]


def figure_6_24(
    panels: Sequence[CurvePanel],
    *,
    title: str,
    columns: int = BOOK_COLUMNS,
    caption_width: int = 34,
) -> Figure:
    """The book's Figure 6-24: one small plot per trial, best first, in rows of `columns`.

    Validation accuracy solid, training accuracy dashed, as in the book's
    `ch06/hyperparameter_optimization.py`. The figure has exactly one axes per panel, in
    panel order, each with two lines (validation, then training).

    The book's y axis runs from 0 to 1; the best trials of a search all end high, so there
    their differences shrank to a few pixels. Here every panel shares the y range of the
    data (see `curve_limits`); when the first epochs fall below it, the legend says so.
    """
    if not panels:
        raise ValueError("figure_6_24 needs at least one panel, but got none")
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    captions = [_wrap_items(p.caption, caption_width) for p in panels]
    caption_lines = max(len(c) for c in captions)
    figure = Figure(
        figsize=(2.5 * columns + 0.4, (1.75 + 0.17 * caption_lines) * rows + 0.7),
        layout="constrained",
    )
    grid = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    low, high, cut = curve_limits(panels)
    for index, axes in enumerate(grid.flat):
        if index >= len(panels):
            axes.remove()  # the last row's empty places
            continue
        _draw_curve_panel(axes, panels[index], captions[index], ylim=(low, high))
        if index % columns == 0:
            axes.set_ylabel("accuracy", fontsize=7.5)
        if index >= len(panels) - columns:  # the lowest plot of its column
            axes.set_xlabel("epoch", fontsize=7.5)
            axes.xaxis.set_tick_params(labelbottom=True)
    figure.suptitle(title, fontsize=11)
    _curve_legend(figure, low, cut)
    return _agg(figure)


def _draw_curve_panel(
    axes: Axes, panel: CurvePanel, caption: list[str], *, ylim: tuple[float, float]
) -> None:
    """One trial of figure 6-24: its two curves, titled with its rank, value and parameters."""
    epochs = np.arange(1, len(panel.val_acc) + 1)
    axes.plot(epochs, panel.val_acc, **VAL_STYLE)
    axes.plot(np.arange(1, len(panel.train_acc) + 1), panel.train_acc, **TRAIN_STYLE)
    axes.set_ylim(*ylim)
    axes.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    axes.xaxis.set_major_locator(_epoch_locator(nbins=5))
    axes.grid(True, alpha=0.3)
    axes.tick_params(labelsize=7)
    axes.set_title(panel.title + "\n" + "\n".join(caption), fontsize=7.5, linespacing=1.25)


def _curve_legend(figure: Figure, low: float, cut: bool) -> None:
    """Figure 6-24's line styles, below the panels; its title says if the y axis cuts."""
    figure.legend(
        handles=[
            Line2D([], [], **VAL_STYLE, label="validation accuracy"),
            Line2D([], [], **TRAIN_STYLE, label="training accuracy"),
        ],
        loc="outside lower center",
        ncols=2,
        fontsize=8.5,
        frameon=False,
        title=f"y axis from {low:.2f}: the first epochs of some trials start below it"
        if cut
        else None,
        title_fontsize=8,
    )


def curve_limits(panels: Sequence[CurvePanel]) -> tuple[float, float, bool]:
    """Figure 6-24's y range, shared by its panels: (low, high, whether anything is cut).

    High is the highest accuracy plotted; low the lowest of the last half of each trial's
    epochs, where a trial settles and the ranking is decided. The first epochs of a good
    trial start near chance (0.1), and letting them set the range would squeeze every
    trial's end into the top few pixels again. Both ends get a margin of 5% of the range;
    without data, 0 to 1 as in the book.
    """
    every, settled = [], []
    for panel in panels:
        for curve in (panel.val_acc, panel.train_acc):
            values = np.asarray(curve, dtype=float)
            values = values[np.isfinite(values)]
            every.extend(values)
            settled.extend(values[len(values) // 2 :])
    if not settled:
        return 0.0, 1.0, False
    low, high = min(settled), max(every)
    margin = 0.05 * (high - low) or 0.05
    return low - margin, high + margin, min(every) < low - margin


MAX_COLOURS = 10  # tab10's; beyond it a colour would stand for two settings


@dataclass(frozen=True)
class SettingCurves:
    """One setting of a comparison (a grid point): its label and per-epoch history.

    `group` names the row of the figure the setting is drawn in ("" for a figure of one row),
    `label` the setting within its row (one colour per label, the same in every row), and
    `note` says why a setting has no line ("diverged in epoch 1"), or is "".
    """

    label: str
    train_loss: Sequence[float]
    train_acc: Sequence[float]
    val_acc: Sequence[float]
    group: str = ""
    note: str = ""


def settings_figure(curves: Sequence[SettingCurves], *, title: str) -> Figure:
    """The chapter's comparison figures (6-9, 6-15, 6-20 to 6-23): one line per setting.

    Left, training loss per epoch (log scale), as the book compares optimizers and initial
    weights; right, training accuracy dashed and validation accuracy solid in one colour per
    setting, which shows overfitting as the gap between them. A row of these two axes per
    group, in the order of the curves; each row's left axes has one line per setting, the
    right two (training, then validation). The y axes are shared down each column.

    The legend sits outside the axes, on the right, so that its length never takes room
    from the plots (a 32-setting grid's legend is taller than a plot). Up to `MAX_COLOURS`
    labels take tab10's distinct colours; more take evenly spaced shades of viridis in the
    curves' order, which reads as a scale when the labels are ordered values.
    """
    if not curves:
        raise ValueError("settings_figure needs at least one setting, but got none")
    groups = list(dict.fromkeys(curve.group for curve in curves))
    labels = list(dict.fromkeys(curve.label for curve in curves))
    colour_of = dict(zip(labels, _distinct_colours(len(labels)), strict=True))
    figure = Figure(figsize=(12.5, 3.5 * len(groups) + 0.9), layout="constrained")
    grid = figure.subplots(len(groups), 2, squeeze=False, sharex=True, sharey="col")
    for (loss_axes, acc_axes), group in zip(grid, groups, strict=True):
        members = [curve for curve in curves if curve.group == group]
        _draw_settings_row(loss_axes, acc_axes, members, group=group, colour_of=colour_of)
    for axes in grid[-1]:
        axes.set_xlabel("epoch")
    _settings_legend(figure, labels, colour_of)
    figure.suptitle(title)
    return _agg(figure)


def _draw_settings_row(
    loss_axes: Axes,
    acc_axes: Axes,
    members: Sequence[SettingCurves],
    *,
    group: str,
    colour_of: dict[str, Any],
) -> None:
    """One group's settings: losses left, accuracies right; its heading names the settings
    that have no line."""
    for curve in members:
        colour = colour_of[curve.label]
        loss_axes.plot(_epochs(curve.train_loss), curve.train_loss, color=colour)
        acc_axes.plot(_epochs(curve.train_acc), curve.train_acc, color=colour, linestyle="--")
        acc_axes.plot(_epochs(curve.val_acc), curve.val_acc, color=colour)
    loss_axes.set(ylabel="training loss", yscale="log")
    acc_axes.set(ylabel="accuracy", ylim=(0, 1.02))
    missing = [f"{curve.label} ({curve.note})" for curve in members if curve.note]
    heading = [group] if group else []
    if missing:
        heading.append("no line: " + ", ".join(missing))
    if heading:
        loss_axes.set_title("\n".join(heading), loc="left", fontsize="medium")
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(_epoch_locator())


def _settings_legend(figure: Figure, labels: list[str], colour_of: dict[str, Any]) -> None:
    """The settings' colours, then the two line styles, outside the axes on the right."""
    handles = [Line2D([], [], color=colour_of[label], label=label) for label in labels]
    handles += [
        Line2D([], [], linestyle="", label=" "),  # a gap between the settings and the styles
        Line2D([], [], color="grey", linestyle="--", label="training accuracy"),
        Line2D(
            [],
            [],
            color="grey",
            label="validation accuracy\n(held out; the test split\nis never used)",
        ),
    ]
    figure.legend(
        handles=handles,
        loc="outside right upper",
        fontsize="small",
        ncols=math.ceil(len(handles) / 30),
        frameon=False,
    )


def _epochs(values: Sequence[float]) -> np.ndarray:
    return np.arange(1, len(values) + 1)


def _epoch_locator(nbins: int | Literal["auto"] = "auto") -> MaxNLocator:
    """Ticks on whole epochs at round steps (5, 10, 15), never at epoch 2.5 or 8, 16, 24."""
    return MaxNLocator(nbins=nbins, integer=True, steps=[1, 2, 5, 10])


def _distinct_colours(n: int) -> list[tuple[float, float, float, float]]:
    if n <= MAX_COLOURS:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    # viridis without its pale yellow end, which vanishes on white
    return list(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, n)))


@dataclass(frozen=True)
class GridPanel:
    """One value of a grid's larger setting: a line per value of its other setting."""

    title: str
    lines: Sequence[tuple[str, Sequence[float]]]


def grid_panels_figure(
    panels: Sequence[GridPanel], *, title: str, ylabel: str, columns: int = 4
) -> Figure:
    """The book's figure 6-19 layout: one small plot per value of one setting (a weight
    scale), one line per value of the other (Batch Normalization on, off), y from 0 to 1."""
    if not panels:
        raise ValueError("grid_panels_figure needs at least one panel, but got none")
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(2.6 * columns + 0.4, 2.0 * rows + 0.8), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    styles = ["-", "--", ":", "-."]
    for index, axes in enumerate(grid.flat):
        if index >= len(panels):
            axes.remove()
            continue
        panel = panels[index]
        for line_index, (label, values) in enumerate(panel.lines):
            axes.plot(
                np.arange(1, len(values) + 1),
                values,
                linestyle=styles[line_index % len(styles)],
                color=f"C{line_index}",
                label=label,
            )
        axes.set_title(panel.title, fontsize="small")
        axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
        if any(not values for _, values in panel.lines):  # a diverged setting has no line
            axes.legend(fontsize="xx-small", loc="upper left")
    if not grid.flat[0].get_legend():
        grid.flat[0].legend(fontsize="x-small", loc="upper left")
    figure.supxlabel("epoch")
    figure.supylabel(ylabel)
    figure.suptitle(title)
    return _agg(figure)


def _wrap_items(caption: str, width: int) -> list[str]:
    """Lines of at most about `width` characters, broken only between ", "-separated items
    (so that "weight decay:1e-06" stays on one line)."""
    lines: list[str] = []
    for item in caption.split(", "):
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += ", " + item
        else:
            lines.append(item)
    return lines or [""]


# -- the learning rate against weight decay ------------------------------------------------


@dataclass(frozen=True)
class SearchPoint:
    """A finished trial in the lr-weight decay plane.

    `value`: the study's metric, final for a completed trial, the last one reported for a
    pruned trial, None for a pruned trial that reported none (a diverged one).
    """

    number: int
    lr: float
    weight_decay: float
    value: float | None
    pruned: bool


def lr_weight_decay_figure(
    points: Sequence[SearchPoint],
    *,
    metric_label: str,
    maximize: bool,
    title: str,
    log_x: bool = True,
    log_y: bool = True,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    selected: int | None = None,
) -> Figure:
    """Learning rate (x) against weight decay (y), one point per finished trial.

    Completed trials are filled points coloured by the metric (the collection with gid
    "complete": its offsets and array are the trials' parameters and values, in `points`
    order); pruned trials hollow, edged in the colour of their last value (gid "pruned");
    pruned trials without a value grey crosses (gid "no value"); the best trial is starred
    (gid "best"), or with `selected` (a selection's winner, by its mean over several
    trainings) that trial instead. Bright is good in either direction: the colour map is
    reversed for a metric that is minimised. The colour scale spans the completed trials;
    pruned values beyond it take its end colours (the colour bar's pointed ends say so).
    """
    complete = [p for p in points if not p.pruned]
    pruned = [p for p in points if p.pruned and p.value is not None and math.isfinite(p.value)]
    no_value = [p for p in points if p.pruned and p not in pruned]
    cmap = matplotlib.colormaps["viridis" if maximize else "viridis_r"]
    norm = _completed_scale(complete)

    figure = Figure(figsize=(7.5, 5.8), layout="constrained")
    axes = figure.subplots()
    if log_x:
        axes.set_xscale("log")
    if log_y:
        axes.set_yscale("log")
    mappable, best = _scatter_search(
        axes, complete, pruned, no_value, cmap, norm, maximize, selected
    )
    if x_range is not None:
        axes.set_xlim(*_padded(x_range, log_x))
    if y_range is not None:
        axes.set_ylim(*_padded(y_range, log_y))
    bar = figure.colorbar(mappable, ax=axes, extend=_beyond_scale(pruned, norm), shrink=0.9)
    bar.set_label(metric_label + ("" if maximize else " (lower is better)"))
    axes.set_xlabel("learning rate (lr)")
    axes.set_ylabel("weight decay (weight_decay_lambda)")
    axes.set_title(title, fontsize=11)
    axes.grid(True, which="major", alpha=0.3)
    _search_legend(
        axes, cmap, complete=complete, pruned=pruned, no_value=no_value, best=best,
        selected=selected is not None,
    )  # fmt: skip
    return _agg(figure)


def _completed_scale(complete: Sequence[SearchPoint]) -> Normalize:
    """The colour scale of the lr-weight decay figure: the completed trials' values (0 to 1
    without any; one value gets a range around it)."""
    values = np.array([p.value for p in complete], dtype=float)
    low, high = (values.min(), values.max()) if len(values) else (0.0, 1.0)
    if low == high:
        low, high = low - 0.5 * (abs(low) or 1.0), high + 0.5 * (abs(high) or 1.0)
    return Normalize(low, high)


def _beyond_scale(pruned: Sequence[SearchPoint], norm: Normalize) -> str:
    """The colour bar's `extend`: which of its ends pruned values fall beyond."""
    below = any(norm(_value(p)) < 0 for p in pruned)
    above = any(norm(_value(p)) > 1 for p in pruned)
    extend = {(True, True): "both", (True, False): "min", (False, True): "max"}
    return extend.get((below, above), "neither")


def _search_legend(
    axes: Axes,
    cmap: Colormap,
    *,
    complete: Sequence[SearchPoint],
    pruned: Sequence[SearchPoint],
    no_value: Sequence[SearchPoint],
    best: SearchPoint | None,
    selected: bool = False,
) -> None:
    """The lr-weight decay figure's legend, below the axes."""
    # Handles of their own: a collection's first point would give its legend entry a colour.
    handles = [
        _marker("o", f"completed ({len(complete)})", face=cmap(0.75), edge="0.25"),
        _marker("o", f"pruned, at its last value ({len(pruned)})", face="none", edge="0.3"),
    ]
    if no_value:
        handles.append(
            _marker("x", f"pruned without a value, e.g. diverged ({len(no_value)})", edge="0.55")
        )
    if best is not None:
        what = "selected (best mean)" if selected else "best"
        handles.append(_marker("*", f"{what}: trial {best.number}", edge="crimson", size=13))
    axes.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, fontsize=8
    )


def _scatter_search(
    axes: Axes,
    complete: Sequence[SearchPoint],
    pruned: Sequence[SearchPoint],
    no_value: Sequence[SearchPoint],
    cmap: Colormap,
    norm: Normalize,
    maximize: bool,
    selected: int | None = None,
) -> tuple[PathCollection, SearchPoint | None]:
    """The trials of `lr_weight_decay_figure` as points (see its docstring for the gids):
    the completed trials' collection, for the colour bar, and the best trial if any."""
    mappable = axes.scatter(
        [p.lr for p in complete],
        [p.weight_decay for p in complete],
        c=np.array([p.value for p in complete], dtype=float),
        cmap=cmap,
        norm=norm,
        s=46,
        edgecolors="0.25",
        linewidths=0.4,
        zorder=3,
        gid="complete",
        label=f"completed ({len(complete)})",
    )
    if pruned:
        axes.scatter(
            [p.lr for p in pruned],
            [p.weight_decay for p in pruned],
            facecolors="none",
            # matplotlib's stubs leave out the (n, 4) array of RGBA rows that cmap returns here
            edgecolors=cmap(norm([_value(p) for p in pruned])),  # type: ignore[arg-type]
            s=40,
            linewidths=1.3,
            zorder=2,
            gid="pruned",
            label=f"pruned, at its last value ({len(pruned)})",
        )
    if no_value:
        axes.scatter(
            [p.lr for p in no_value],
            [p.weight_decay for p in no_value],
            marker="x",
            color="0.55",
            s=30,
            linewidths=1.0,
            zorder=2,
            gid="no value",
            label=f"pruned without a value, e.g. diverged ({len(no_value)})",
        )
    if not complete:
        return mappable, None
    sign = -1.0 if maximize else 1.0  # ties go to the lower number, as in `ranked_trials`
    best = min(complete, key=lambda p: (sign * _value(p), p.number))
    best = next((p for p in complete if p.number == selected), best)
    _star(axes, best)
    return mappable, best


def _star(axes: Axes, best: SearchPoint) -> None:
    """The best trial, starred over its point (gid "best")."""
    axes.scatter(
        [best.lr],
        [best.weight_decay],
        marker="*",
        s=320,
        facecolors="none",
        edgecolors="crimson",
        linewidths=1.4,
        zorder=4,
        gid="best",
        label=f"best: trial {best.number}",
    )


def _value(point: SearchPoint) -> float:
    """A point's value where it has one: a completed trial, or a pruned one kept in `pruned`."""
    assert point.value is not None, f"trial {point.number} has no value"
    return point.value


def _marker(
    marker: str, label: str, *, edge: ColorType, face: ColorType = "none", size: float = 7
) -> Line2D:
    return Line2D(
        [],
        [],
        linestyle="",
        marker=marker,
        markersize=size,
        markerfacecolor=face,
        markeredgecolor=edge,
        markeredgewidth=1.2,
        label=label,
    )


def _padded(bounds: tuple[float, float], log: bool) -> tuple[float, float]:
    """The searched range with a margin, so points on its edges stay visible."""
    low, high = bounds
    if log and low > 0:
        factor = (high / low) ** 0.04
        return low / factor, high * factor
    margin = 0.04 * (high - low)
    return low - margin, high + margin


# -- Optuna's own plots ----------------------------------------------------------------------


@contextlib.contextmanager
def _optuna_plot() -> Iterator[None]:
    """Optuna's matplotlib plots are experimental (a warning each) and restyle pyplot."""
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # One completed trial gives a parameter axis of no height; matplotlib widens it.
        warnings.filterwarnings("ignore", "Attempting to set identical low and high ylims")
        yield


def _detach(axes: matplotlib.axes.Axes, size: tuple[float, float] | None = None) -> Figure:
    """The figure of Optuna's axes, closed in pyplot (the caller owns it), on an Agg canvas."""
    import matplotlib.pyplot as plt

    figure = axes.figure
    assert isinstance(figure, Figure)  # Optuna draws on a figure of its own, not a subfigure
    plt.close(figure)
    if size is not None:
        figure.set_size_inches(*size)
    return _agg(figure)


def optimization_history_figure(study: optuna.Study, *, metric_label: str) -> Figure:
    """Optuna's optimization history: every completed trial's value and the best so far."""
    from optuna.visualization.matplotlib import plot_optimization_history

    with _optuna_plot():
        axes = plot_optimization_history(study, target_name=metric_label)
    return _detach(axes, (8.0, 4.8))


def intermediate_values_figure(
    study: optuna.Study, *, metric_label: str, log_y: bool = False
) -> Figure:
    """Optuna's intermediate values plot: the metric per epoch of every finished trial.

    `study` must carry the epochs as intermediate values; an hpo study's trials do not (they
    store a history instead, see `hpo.analysis.study_report.history_study`).

    Restyled after Optuna draws it: Optuna gives the first 20 trials tab20's colours, half of
    them pale on its grey background, and every later trial the same last one, with a legend
    of trial numbers. Here each line takes the colour of its trial's last value on the scale
    of `value_colours` (a colour bar says which), the best drawn on top; a pruned trial's line
    ends in an x where it was stopped, and the legend counts the two kinds.
    """
    from optuna.visualization.matplotlib import plot_intermediate_values

    with _optuna_plot():
        axes = plot_intermediate_values(study)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric_label)
        axes.xaxis.set_major_locator(_epoch_locator())
        if log_y:
            axes.set_yscale("log")
        legend = axes.get_legend()
        if legend is not None:
            legend.remove()
        _colour_by_last_value(study, axes, metric_label=metric_label)
    return _detach(axes, (8.0, 4.8))


def _colour_by_last_value(
    study: optuna.Study, axes: matplotlib.axes.Axes, *, metric_label: str
) -> None:
    """Recolour Optuna's lines, which it labels "Trial<number>", by their trial's last value
    (a line labelled otherwise is left as drawn), and add the colour bar and the legend."""
    trials = {f"Trial{t.number}": t for t in study.get_trials(deepcopy=False)}
    last = {}  # line: (its trial's last value, whether the trial was pruned)
    for line in axes.get_lines():
        trial = trials.get(str(line.get_label()))
        ydata = np.asarray(line.get_ydata())
        if trial is not None and len(ydata):
            value = trial.value if trial.value is not None else ydata[-1]
            last[line] = (float(value), trial.state == optuna.trial.TrialState.PRUNED)
    if not last:
        return
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    values = np.array([value for value, _ in last.values()])
    low, high = values.min(), values.max()
    norm = Normalize(low, high) if low < high else Normalize(low - 0.5, high + 0.5)
    colours = value_colours(maximize=maximize)
    ranks = np.argsort(np.argsort(values if maximize else -values))  # 0 for the worst
    for rank, (line, (value, pruned)) in zip(ranks, last.items(), strict=True):
        line.set(color=colours(norm(value)), alpha=0.9, zorder=2 + rank / len(ranks))
        line.set(marker="x" if pruned else "", markevery=[len(np.asarray(line.get_xdata())) - 1])
    bar = axes.figure.colorbar(ScalarMappable(norm, colours), ax=axes, pad=0.02)
    bar.set_label(f"{metric_label} at the last epoch", fontsize="medium")
    n_pruned = sum(pruned for _, pruned in last.values())
    if n_pruned:
        grey = "0.35"
        axes.legend(
            handles=[
                Line2D([], [], color=grey, label=f"completed ({len(last) - n_pruned})"),
                Line2D(
                    [], [], color=grey, marker="x", label=f"pruned: x where stopped ({n_pruned})"
                ),
            ],
            fontsize="small",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
            ncols=2,
        )


def param_importances_figure(study: optuna.Study, *, metric_label: str, seed: int = 0) -> Figure:
    """Optuna's hyperparameter importances, by fANOVA with a fixed seed (the same figure for
    the same study every time). Needs at least two completed trials."""
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances

    with _optuna_plot():
        axes = plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=seed), target_name=metric_label
        )
        axes.set_title(f"Hyperparameter importances for {metric_label} (fANOVA)", loc="left")
        legend = axes.get_legend()
        if legend is not None:  # one objective: the title says what it is
            legend.remove()
    n_params = len(axes.get_yticks())
    return _detach(axes, (7.0, max(2.6, 1.2 + 0.5 * n_params)))


def parallel_coordinate_figure(study: optuna.Study, *, metric_label: str) -> Figure:
    """Optuna's parallel coordinates: each completed trial a line through its parameters.

    Restyled after Optuna draws it: its colour map runs to white at the worst value, so the
    worst trials' lines vanished on the white page; here they run from a mid blue
    (`value_colours`) to navy, the best drawn last, on top. The colour bar is moved clear
    of the last parameter axis's tick labels, which it covered.
    """
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    with _optuna_plot():
        axes = plot_parallel_coordinate(study, target_name=metric_label)
    n_params = len({name for t in study.get_trials(deepcopy=False) for name in t.params})
    figure = _detach(axes, (max(7.0, 2.0 * (n_params + 1)), 5.0))
    lines = next((c for c in axes.collections if isinstance(c, LineCollection)), None)
    if lines is None:  # no completed trial: Optuna draws empty axes
        return figure
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    values = np.asarray(lines.get_array(), dtype=float)
    order = np.argsort(values if maximize else -values, kind="stable")  # the best last
    segments = lines.get_segments()
    lines.set_segments([segments[i] for i in order])
    # A collection's styles are a list, one per line or one for all (the stub adds a lone style)
    styles = cast("list[LineStyleType]", lines.get_linestyle())
    if len(styles) == len(order):  # dotted infeasible trials, for a constrained study
        lines.set_linestyle([styles[i] for i in order])
    lines.set_array(values[order])
    lines.set_cmap(value_colours(maximize=maximize))  # the colour bar follows
    lines.set_linewidth(1.3)
    bar = lines.colorbar.ax if lines.colorbar is not None else None
    _pad_vertically([a for a in figure.axes if a is not bar])
    if bar is not None:
        _clear_of_ticks(axes, bar)
    return figure


def value_colours(*, maximize: bool) -> ListedColormap:
    """Optuna's Blues without their near-white end: the worst value a mid blue that still
    stands out on white (contrast 2:1), the best navy; reversed for a minimised metric."""
    colours = ListedColormap(matplotlib.colormaps["Blues"](np.linspace(0.45, 1.0, 256)))
    return colours if maximize else colours.reversed()


def _pad_vertically(all_axes: list[matplotlib.axes.Axes], fraction: float = 0.03) -> None:
    """Widen every parameter axis's range by the same `fraction` of its height at both ends
    (in log terms on a log axis), so the lines keep meeting the ticks they did, and a line
    at either end (the best trial, the worst) is no longer half cut by the axes' edge."""
    for axes in all_axes:
        low, high = axes.get_ylim()
        if axes.get_yscale() == "log":
            low, high = np.log10([low, high])
            margin = fraction * (high - low)
            axes.set_ylim(10 ** (low - margin), 10 ** (high + margin))
        else:
            margin = fraction * (high - low)
            axes.set_ylim(low - margin, high + margin)


def _clear_of_ticks(axes: matplotlib.axes.Axes, bar: matplotlib.axes.Axes) -> None:
    """Narrow `axes` (its twins, one per parameter, follow) until the tick labels of the
    last parameter axis end a little before the colour bar `bar` begins."""
    figure = axes.figure
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg)  # as _detach left it
    renderer = canvas.get_renderer()
    twins = [a for a in figure.axes if a is not axes and a is not bar]
    if not twins:
        return
    boxes = [twin.get_tightbbox(renderer) for twin in twins]
    right = max(bbox.x1 for bbox in boxes if bbox is not None)  # None: an invisible axes
    overlap = right + 0.15 * figure.dpi - bar.get_window_extent(renderer).x0
    if overlap > 0:
        box = axes.get_position()
        width = box.width - overlap / figure.bbox.width
        axes.set_position((box.x0, box.y0, width, box.height))
