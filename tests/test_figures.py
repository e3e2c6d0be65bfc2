"""The report's figures read at a glance: checked on real studies of the bundled digits.

Each test draws a real figure from a real study (run in this process, a few seconds) and
checks what a reader would see: axes big enough to read, legends that cover no plot, lines
that stand out from the page, y ranges that show the differences between trials, and no
matplotlib warning on the way.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba

from hpo.analysis.figures import (
    figure_6_24,
    intermediate_values_figure,
    parallel_coordinate_figure,
    settings_figure,
)
from hpo.analysis.listing import fmt
from hpo.analysis.study_report import (
    DPI,
    curve_panels,
    history_study,
    setting_curves,
    write_report,
)
from hpo.engine.launch import run_in_process
from hpo.spec.study_file import StudySpec, load_study_file
from hpo.storage.database import resolve_storage
from hpo.storage.studies import prepare_study

# The batch-norm comparison of chapter 6 (16 weight scales x on/off = 32 settings) in small:
# five layers of 40 ReLU units, 3 epochs on 300 digits. Without batch norm the two largest
# scales diverge, as they do on MNIST.
SCALES = [3.0, 1.0, 0.5412, 0.2929, 0.1585, 0.08577, 0.04642, 0.02512, 0.01359, 0.007356,
          0.003981, 0.002154, 0.001166, 0.000631, 0.0003415, 0.0001]  # fmt: skip
GRID_STUDY = """\
[study]
name = "{name}"
n_trials = {n_trials}
seed = 0

[data]
dataset = "digits"
n_samples = 300

[model]
hidden_size_list = [40, 40, 40, 40, 40]
activation = "relu"

[train]
optimizer = "sgd"
lr = 0.01
epochs = 3
batch_size = 100

[search.weight_init_std]
choices = {scales}

[search.use_batchnorm]
choices = {batchnorm}

[sampler]
name = "grid"

[pruner]
name = "none"
"""
# A median pruner that stops the slow learners of `tiny_study_file` after epoch 2.
PRUNING = "n_startup_trials = 3\nn_warmup_steps = 2\n"


def _run(path: Path, storage: str) -> tuple[optuna.Study, StudySpec]:
    """What `hpo run --no-mlflow` does, in this process: (the study, its spec)."""
    spec = load_study_file(path)
    settings = resolve_storage(storage)
    prepare_study(settings, spec)
    outcome = run_in_process(spec, settings)
    assert not outcome.errors, outcome
    return optuna.load_study(study_name=spec.study.name, storage=storage), spec


def _grid(root: Path, name: str, scales: list, batchnorm: list) -> tuple[optuna.Study, StudySpec]:
    path = root / f"{name}.toml"
    n_trials = len(scales) * len(batchnorm)
    text = GRID_STUDY.format(
        name=name,
        n_trials=n_trials,
        scales=repr(scales).replace("'", '"'),
        batchnorm=str(batchnorm).lower(),
    )
    path.write_text(text)
    return _run(path, f"sqlite:///{root / 'studies.db'}")


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def grid32(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, StudySpec]:
    return _grid(tmp_path_factory.mktemp("grid32"), "grid32", SCALES, [True, False])


@pytest.fixture
def pruned(tiny_study_file, tmp_path) -> tuple[optuna.Study, StudySpec]:
    """12 trials of lr on digits, 6 epochs: 4 completed (one barely learns), 8 pruned."""
    path = tiny_study_file(n_trials=12, epochs=6, pruner="median", extra=PRUNING)
    study, spec = _run(path, f"sqlite:///{tmp_path / 'studies.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 3, states
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 3, states
    return study, spec


def _draw(figure) -> None:
    """Save the figure as the report does, failing on any warning (matplotlib's "axes sizes
    collapsed to zero" among them), then draw it again at its own dpi, so that every
    artist's extent is measured in the same pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure.savefig(BytesIO(), dpi=DPI, bbox_inches="tight")
        figure.canvas.draw()


def _luminance(rgba) -> float:
    """WCAG relative luminance of a colour."""
    rgb = np.asarray(rgba[:3], dtype=float)
    linear = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def _contrast(rgba, background) -> float:
    """WCAG contrast ratio of a colour (with its alpha, over `background`) against it."""
    rgba, background = np.asarray(to_rgba(rgba)), np.asarray(to_rgba(background))
    seen = rgba[3] * rgba[:3] + (1 - rgba[3]) * background[:3]
    darker, lighter = sorted([_luminance(seen), _luminance(background)])
    return (lighter + 0.05) / (darker + 0.05)


# -- settings.png -------------------------------------------------------------------------


def test_a_32_setting_grid_keeps_readable_plots_and_its_legend_outside_them(grid32):
    study, spec = grid32
    figure = settings_figure(setting_curves(study, spec), title="t")
    _draw(figure)
    renderer = figure.canvas.get_renderer()
    # A row of (loss, accuracy) per value of the setting with fewer values, each plot at
    # least 3.5 x 2.5 inches however long the legend.
    assert len(figure.axes) == 4
    rows = [figure.axes[0], figure.axes[2]]
    assert [a.get_title(loc="left").splitlines()[0] for a in rows] == [
        "use_batchnorm:True",
        "use_batchnorm:False",
    ]
    boxes = [axes.get_window_extent(renderer) for axes in figure.axes]
    for axes, box in zip(figure.axes, boxes, strict=True):
        assert box.width / figure.dpi >= 3.5, box
        assert box.height / figure.dpi >= 2.5, box
        assert axes.get_legend() is None
    (legend,) = figure.legends
    legend_box = legend.get_window_extent(renderer)
    assert not any(legend_box.overlaps(box) for box in boxes)
    # One entry per weight scale, in the file's order, each in a colour of its own.
    entries = [
        (t.get_text(), h.get_color())
        for t, h in zip(legend.texts, legend.legend_handles, strict=True)
    ]
    scales = entries[: len(SCALES)]
    assert [label for label, _ in scales] == [f"weight_init_std:{fmt(s)}" for s in SCALES]
    assert len({tuple(to_rgba(colour)) for _, colour in scales}) == len(SCALES)
    # The settings that diverged have no line, and their row says so.
    assert "no line: weight_init_std:3 (diverged in epoch 1)" in rows[1].get_title(loc="left")


def test_a_small_grid_has_one_row_and_a_legend_that_covers_no_line(tmp_path):
    study, spec = _grid(tmp_path, "small", [0.01, 0.1, 1.0], [False])
    figure = settings_figure(setting_curves(study, spec), title="t")
    _draw(figure)
    renderer = figure.canvas.get_renderer()
    assert len(figure.axes) == 2
    assert all(axes.get_legend() is None for axes in figure.axes)
    legend_box = figure.legends[0].get_window_extent(renderer)
    assert not any(legend_box.overlaps(a.get_window_extent(renderer)) for a in figure.axes)
    colours = [tuple(to_rgba(line.get_color())) for line in figure.axes[0].get_lines()]
    assert len(set(colours)) == 3


# -- parallel_coordinate.png ---------------------------------------------------------------


def test_every_parallel_coordinate_line_stands_out_and_the_best_is_drawn_last(pruned):
    study, _ = pruned
    figure = parallel_coordinate_figure(study, metric_label="validation accuracy")
    _draw(figure)
    axes = figure.axes[0]
    (lines,) = [c for c in axes.collections if isinstance(c, LineCollection)]
    values = np.asarray(lines.get_array())
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(values) == sorted(t.value for t in complete)
    assert min(values) < 0.5 < max(values)  # a trial that barely learnt, and good ones
    colours = lines.to_rgba(values, alpha=lines.get_alpha())
    # Optuna's Blues end at white (contrast 1.04 on the page): every line at least 2:1.
    assert min(_contrast(c, axes.get_facecolor()) for c in colours) >= 2.0
    assert list(values) == sorted(values)  # drawn worst first: the best lie on top
    # Darker is better, on the colour bar too.
    luminances = [_luminance(c) for c in colours]
    assert luminances == sorted(luminances, reverse=True)
    bar = lines.colorbar
    assert bar.cmap is lines.get_cmap()


def test_the_parallel_coordinate_colour_bar_clears_the_last_axis_labels(grid32):
    study, _ = grid32
    figure = parallel_coordinate_figure(study, metric_label="validation accuracy")
    _draw(figure)
    renderer = figure.canvas.get_renderer()
    axes = figure.axes[0]
    (lines,) = [c for c in axes.collections if isinstance(c, LineCollection)]
    bar = lines.colorbar.ax
    twins = [a for a in figure.axes if a is not axes and a is not bar]
    assert len(twins) == 2  # use_batchnorm and weight_init_std
    right = max(twin.get_tightbbox(renderer).x1 for twin in twins)
    assert right < bar.get_window_extent(renderer).x0  # "0.0003415" no longer under the bar
    # The lines still meet the ticks they did: the objective axis and the parameter axes
    # were widened by the same fraction.
    low, high = axes.get_ylim()
    values = np.asarray(lines.get_array())
    assert low < values.min()
    assert values.max() < high


# -- figure_6_24.png --------------------------------------------------------------------------


def test_figure_6_24_y_axis_follows_the_data_and_says_what_it_cuts(pruned):
    study, _ = pruned
    panels = curve_panels(study, "val_acc", 3)  # the good trials: all end above 0.85
    figure = figure_6_24(panels, title="t")
    _draw(figure)
    limits = {axes.get_ylim() for axes in figure.axes}
    assert len(limits) == 1  # shared, so the panels compare
    ((low, high),) = limits
    every = np.concatenate([np.r_[p.val_acc, p.train_acc] for p in panels])
    settled = np.concatenate(
        [np.r_[p.val_acc[len(p.val_acc) // 2 :], p.train_acc[len(p.train_acc) // 2 :]]
         for p in panels]
    )  # fmt: skip
    assert low < settled.min()
    assert every.max() < high
    assert high - low < 0.5  # less than half the book's 0 to 1: twice the detail at least
    # Their first epochs start lower: the figure says that they run off the bottom.
    assert every.min() < low
    assert f"y axis from {low:.2f}" in figure.legends[0].get_title().get_text()

    # With a trial that barely learnt (val acc 0.2), the range reaches down to it.
    panels = curve_panels(study, "val_acc", 20)
    figure = figure_6_24(panels, title="t")
    low, high = figure.axes[0].get_ylim()
    assert low < min(min(p.val_acc[len(p.val_acc) // 2 :]) for p in panels) < 0.3


# -- intermediate_values.png --------------------------------------------------------------------


def test_intermediate_values_are_coloured_by_each_trials_last_value(pruned):
    study, _ = pruned
    figure = intermediate_values_figure(
        history_study(study, "val_acc"), metric_label="validation accuracy"
    )
    _draw(figure)
    axes = figure.axes[0]
    lines = axes.get_lines()
    finished = study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    assert len(lines) == len(finished) >= 12
    # Optuna gave trials 20 and on one colour, and half of tab20 is pale on its grey: here
    # every line stands out from the background, darker for a better last value.
    for line in lines:
        assert _contrast(line.get_color(), axes.get_facecolor()) >= 1.5
    by_value = sorted(lines, key=lambda line: line.get_ydata()[-1])
    luminances = [_luminance(to_rgba(line.get_color())) for line in by_value]
    assert luminances == sorted(luminances, reverse=True)
    assert by_value[-1].get_zorder() > by_value[0].get_zorder()  # the best on top
    # A pruned trial's line ends in an x; the legend counts both kinds.
    for line, trial in zip(lines, finished, strict=True):
        pruned = trial.state == optuna.trial.TrialState.PRUNED
        assert line.get_marker() == ("x" if pruned else "")
    n_pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in finished)
    texts = [t.get_text() for t in axes.get_legend().texts]
    assert texts == [
        f"completed ({len(finished) - n_pruned})",
        f"pruned: x where stopped ({n_pruned})",
    ]


# -- the whole report -------------------------------------------------------------------------


def test_a_report_draws_every_figure_without_a_warning(grid32, pruned, tmp_path):
    for study, spec in (grid32, pruned):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report = write_report(study, spec, tmp_path / spec.study.name)
        assert len(report.written) >= 6
