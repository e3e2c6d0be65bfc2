"""A study's report: the book's listing and figures, written to a directory, logged to MLflow.

Reads the study and never writes to it (only `log_report`, for a study never mirrored to this
tracking store, creates its parent run, which records the run's id in the study as `hpo run`
would). The figures themselves are drawn in `hpo.analysis.figures`; this module gathers their
data from the trials and saves them; `log_report` hands the files to `hpo.tracking.reports`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from hpo.analysis import figures as figures
from hpo.analysis.listing import (
    DISPLAY_NAMES,
    METRIC_LABELS,
    best_lines,
    fmt,
    outcome_counts,
    ranked_trials,
)
from hpo.spec.outcomes import COUNTED, is_selection, selection_estimates
from hpo.spec.search.space import same_value
from hpo.tracking.reports import log_files_to_parent_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hpo.spec.study_file import StudySpec
    from hpo.storage.database import StorageSettings
    from hpo.tracking.runs import StudyRun, TrackingClient, TrackingSettings

logger = logging.getLogger(__name__)

ARTIFACT_PATH = "report"  # on the study's parent run
DEFAULT_TOP = 20  # the book's Figure 6-24 shows the best 20
DPI = 150
METRIC_NAMES = {
    "val_acc": "validation accuracy",
    "val_loss": "validation loss",
    "f": "f(x, y) at the path's end",
    "entropy": "entropy of the last hidden layer's histogram",
}
LR, WEIGHT_DECAY = "lr", "weight_decay_lambda"
FILES = (
    "best.txt",
    "figure_6_24.png",
    "lr_weight_decay.png",
    "optimization_history.png",
    "intermediate_values.png",
    "param_importances.png",
    "parallel_coordinate.png",
)
SETTINGS_FIGURE = "settings.png"  # grid studies only: their few settings compared
GRID_FIGURE = "settings_grid.png"  # grids of two settings, one of them with 4 values or more
# What a training study's report may hold besides best.txt; a study that trains nothing draws
# its own figure instead (see hpo.analysis.probe_report).
TRAINING_FIGURES = (*FILES[1:], SETTINGS_FIGURE, GRID_FIGURE)
_STATE_ORDER = ("COMPLETE", "PRUNED", "DIVERGED", "FAIL", "RUNNING", "WAITING")


@dataclass(frozen=True)
class Report:
    """What `write_report` did: the files written, and the figures left out and why."""

    directory: Path
    written: tuple[Path, ...]
    skipped: dict[str, str]
    removed: tuple[Path, ...] = ()  # an earlier report's files that this one no longer has


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def _maximize(study: optuna.Study) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


# -- the data of each figure ----------------------------------------------------------------


def header_line(study: optuna.Study, metric: str) -> str:
    """`study 'x': 40 trials (14 complete, 26 pruned); ranked by val_acc (validation
    accuracy, maximize)`."""
    trials = study.get_trials(deepcopy=False)
    counts = outcome_counts(trials)
    by_state = ", ".join(f"{counts[s]} {s.lower()}" for s in _STATE_ORDER if counts[s])
    direction = "maximize" if _maximize(study) else "minimize"
    return (
        f"study {study.study_name!r}: {len(trials)} trials ({by_state or 'none'}); "
        f"ranked by {metric} ({metric_name(metric)}, {direction})"
    )


def describe(params: dict[str, object]) -> str:
    """Parameters as the book's listing prints them: `lr:0.0092, weight decay:3.86e-07`."""
    return ", ".join(f"{DISPLAY_NAMES.get(k, k)}:{fmt(v)}" for k, v in params.items())


def curve_panels(study: optuna.Study, metric: str, top: int) -> list[figures.CurvePanel]:
    """Figure 6-24's panels: the `top` best completed trials by the study's metric, each with
    its stored per-epoch accuracies (whatever the metric: the book plots accuracy)."""
    label = METRIC_LABELS.get(metric, metric)
    selected = {e.trial.number: e for e in selection_estimates(study)}
    panels = []
    for rank, trial in enumerate(ranked_trials(study)[:top], start=1):
        history = trial.user_attrs.get("history") or {}
        estimate = selected.get(trial.number)  # a finalist: its mean over every training
        value = fmt(estimate.mean if estimate is not None else trial.value)
        panels.append(
            figures.CurvePanel(
                title=f"Best-{rank} ({label}:{value}{' mean' if estimate else ''})",
                caption=describe(trial.params),
                val_acc=list(history.get("val_acc", [])),
                train_acc=list(history.get("train_acc", [])),
            )
        )
    return panels


def setting_curves(study: optuna.Study, spec: StudySpec) -> list[figures.SettingCurves]:
    """Each finished trial's history, labelled by its settings, in the grid's order (the
    file's order of choices, so that a scale of weights reads from one end to the other).

    Beyond `figures.MAX_COLOURS` settings one colour each would repeat: a grid of two
    settings, one of them with at most 4 values, is then drawn a row per value of that one
    (Batch Normalization on, off) and a colour per value of the other.
    """
    grid = spec.space.grid()
    finished = study.get_trials(deepcopy=False, states=COUNTED)
    finished = sorted(finished, key=lambda trial: _grid_position(trial.params, grid))
    rows = None
    if len(finished) > figures.MAX_COLOURS and len(grid) == 2:
        fewer = min(grid, key=lambda name: len(grid[name]))
        rows = fewer if len(grid[fewer]) <= 4 else None
    curves = []
    for trial in finished:
        history = trial.user_attrs.get("history") or {}
        diverged = trial.user_attrs.get("diverged")
        params = {k: v for k, v in trial.params.items() if k != rows}
        curves.append(
            figures.SettingCurves(
                label=describe(params) or f"trial {trial.number}",
                train_loss=list(history.get("train_loss", [])),
                train_acc=list(history.get("train_acc", [])),
                val_acc=list(history.get("val_acc", [])),
                group=describe({rows: trial.params[rows]}) if rows in trial.params else "",
                note=f"diverged in epoch {diverged['epoch']}" if diverged else "",
            )
        )
    return curves


def _grid_position(params: dict[str, object], grid: dict[str, list[object]]) -> tuple[int, ...]:
    """Where a trial's settings sit in the grid's choices; a value not there goes last."""
    position = []
    for name, values in grid.items():
        index = next((i for i, v in enumerate(values) if same_value(params.get(name), v)), None)
        position.append(len(values) if index is None else index)
    return tuple(position)


def grid_panels(study: optuna.Study, spec: StudySpec) -> list[figures.GridPanel] | None:
    """Figure 6-19's panels for a grid of two settings, or None for another grid: a panel per
    value of the setting with more values (4 at least), a line per value of the other, of
    training accuracy as the book plots it."""
    grid = spec.space.grid()
    if len(grid) != 2:
        return None
    (name_a, values_a), (name_b, values_b) = grid.items()
    if len(values_a) < len(values_b):
        (name_a, values_a), (name_b, values_b) = (name_b, values_b), (name_a, values_a)
    if len(values_a) < 4:
        return None
    finished = study.get_trials(deepcopy=False, states=COUNTED)
    panels = []
    for value in values_a:
        lines = []
        for other in values_b:
            for trial in finished:
                if same_value(trial.params.get(name_a), value) and same_value(
                    trial.params.get(name_b), other
                ):
                    history = trial.user_attrs.get("history") or {}
                    label = describe({name_b: other})
                    diverged = trial.user_attrs.get("diverged")
                    if diverged:  # no line to draw: say why in the legend
                        label += f" (diverged in epoch {diverged['epoch']})"
                    lines.append((label, list(history.get("train_acc", []))))
                    break
        panels.append(figures.GridPanel(describe({name_a: value}), lines))
    return panels


def search_points(study: optuna.Study) -> list[figures.SearchPoint]:
    """Every completed and pruned trial's lr and weight decay, with its value."""
    points = []
    for trial in study.get_trials(deepcopy=False, states=COUNTED):
        if LR not in trial.params or WEIGHT_DECAY not in trial.params or is_selection(trial):
            continue  # a re-evaluation would stack on its finalist's point
        points.append(
            figures.SearchPoint(
                number=trial.number,
                lr=float(trial.params[LR]),
                weight_decay=float(trial.params[WEIGHT_DECAY]),
                value=trial.value,
                pruned=trial.state == TrialState.PRUNED,
            )
        )
    return points


def history_study(study: optuna.Study, metric: str) -> optuna.Study:
    """An in-memory copy of the finished trials, with each epoch's `metric` as the trial's
    intermediate value at step = epoch (1, 2, ...).

    hpo's trials do not report intermediate values to the storage (the pruner decides in a
    worker's in-memory mirror, see `hpo.engine.pruning`; only a pruned trial reports its last value
    once), but each stores its whole history as the "history" attribute. Optuna's
    intermediate values plot reads `trial.intermediate_values`, so it is fed this copy.
    Non-finite values (a diverging epoch) are left out.
    """
    copy = optuna.create_study(study_name=study.study_name, direction=study.direction)
    for trial in study.get_trials(deepcopy=False, states=COUNTED):
        values = (trial.user_attrs.get("history") or {}).get(metric, [])
        copy.add_trial(
            create_trial(
                state=trial.state,
                value=trial.value if trial.state == TrialState.COMPLETE else None,
                params=trial.params,
                distributions=trial.distributions,
                intermediate_values={
                    epoch: float(v)
                    for epoch, v in enumerate(values, start=1)
                    if v is not None and math.isfinite(v)
                },
            )
        )
    return copy


def importances_refusal(study: optuna.Study) -> str | None:
    """Why hyperparameter importances cannot be computed for this study, or None if they can."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"needs at least 2 completed trials, the study has {len(complete)}"
    shared = set.intersection(*(set(t.params) for t in complete))
    varied = [n for n in sorted(shared) if len({repr(t.params[n]) for t in complete}) > 1]
    if not varied:
        return "no parameter took more than one value across the completed trials"
    return None


def _searched_range(study: optuna.Study, name: str) -> tuple[tuple[float, float] | None, bool]:
    """(low, high) of a numeric parameter's distribution, and whether it is searched in log."""
    for trial in study.get_trials(deepcopy=False):
        distribution = trial.distributions.get(name)
        if isinstance(distribution, FloatDistribution | IntDistribution):
            return (float(distribution.low), float(distribution.high)), distribution.log
    return None, True


def scatter_refusal(spec: StudySpec) -> str | None:
    """Why the lr-weight decay figure is left out, or None."""
    searched = spec.space.names()
    missing = [n for n in (LR, WEIGHT_DECAY) if n not in searched]
    if not missing:
        return None
    it = f"it searches {', '.join(searched)}" if searched else "it searches nothing"
    return f"the study does not search {' and '.join(missing)} ({it})"


# -- writing the report ---------------------------------------------------------------------


def write_report(
    study: optuna.Study, spec: StudySpec, directory: Path, *, top: int = DEFAULT_TOP
) -> Report:
    """Write the listing and the figures of `study` to `directory` (created if needed).

    The study must have a completed trial (`hpo.analysis.best.best_trial` says so otherwise).
    A file of an earlier report that this one leaves out is removed, so that the directory always
    holds one report.
    """
    from hpo.analysis.best import best_trial
    from hpo.errors import ConfigError

    if top < 1:
        raise ConfigError(f"must be at least 1, but got {top}", key="--top")
    best_trial(study)  # the "no completed trial" error, with the trials there are
    metric = spec.study.metric
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    ranked = ranked_trials(study)
    listing = directory / "best.txt"
    listing.write_text(
        "\n".join([header_line(study, metric), *best_lines(study, metric, n=len(ranked))]) + "\n"
    )
    written.append(listing)

    def save(name: str, draw: Callable[[], Figure]) -> None:
        path = directory / name
        draw().savefig(path, dpi=DPI, bbox_inches="tight")
        written.append(path)

    if not spec.trains:  # optimizer paths or activations: the book's figure, nothing else
        from hpo.analysis.probe_report import probe_figures

        for name, figure in probe_figures(study, spec).items():

            def drawn(figure: Figure = figure) -> Figure:
                return figure

            save(name, drawn)
        return Report(directory, tuple(written), {}, _remove(directory, TRAINING_FIGURES))

    drawings, skipped = _training_drawings(study, spec, top, n_ranked=len(ranked))
    for name, draw in drawings.items():
        save(name, draw)
    extras = [name for name in (SETTINGS_FIGURE, GRID_FIGURE) if name not in drawings]
    from hpo.analysis.probe_report import ACTIVATIONS_FIGURE, PATHS_FIGURE

    removed = _remove(directory, [*skipped, *extras, PATHS_FIGURE, ACTIVATIONS_FIGURE])
    logger.info("wrote %d files to %s", len(written), directory)
    return Report(directory, tuple(written), skipped, removed)


Drawings = dict[str, Callable[[], "Figure"]]


def _training_drawings(
    study: optuna.Study, spec: StudySpec, top: int, *, n_ranked: int
) -> tuple[Drawings, dict[str, str]]:
    """The figures of a training study, by file name, in the order they are drawn; and the
    ones left out, with the reason."""
    metric = spec.study.metric
    label = metric_name(metric)
    panels = curve_panels(study, metric, top)
    drawings: Drawings = {
        "figure_6_24.png": lambda: figures.figure_6_24(
            panels,
            title=f"Figure 6-24 ({study.study_name}): the best {len(panels)} of "
            f"{n_ranked} completed trials by {label}",
        )
    }
    skipped: dict[str, str] = {}
    refusal = scatter_refusal(spec)
    if refusal is None:
        drawings["lr_weight_decay.png"] = _lr_weight_decay_drawing(study, label)
    else:
        skipped["lr_weight_decay.png"] = refusal
    drawings["optimization_history.png"] = lambda: figures.optimization_history_figure(
        study, metric_label=label
    )
    drawings["intermediate_values.png"] = lambda: figures.intermediate_values_figure(
        history_study(study, metric), metric_label=label, log_y=metric.endswith("loss")
    )
    refusal = importances_refusal(study)
    if refusal is None:
        drawings["param_importances.png"] = lambda: figures.param_importances_figure(
            study, metric_label=label
        )
    else:
        skipped["param_importances.png"] = refusal
    drawings["parallel_coordinate.png"] = lambda: figures.parallel_coordinate_figure(
        study, metric_label=label
    )
    if spec.sampler.name == "grid":
        drawings.update(_grid_drawings(study, spec))
    return drawings, skipped


def _lr_weight_decay_drawing(study: optuna.Study, label: str) -> Callable[[], Figure]:
    (x_range, log_x), (y_range, log_y) = (_searched_range(study, n) for n in (LR, WEIGHT_DECAY))
    points = search_points(study)
    n_pruned = sum(p.pruned for p in points)
    winners = selection_estimates(study)
    return lambda: figures.lr_weight_decay_figure(
        points,
        metric_label=label,
        maximize=_maximize(study),
        title=f"{study.study_name}: learning rate and weight decay of "
        f"{len(points) - n_pruned} completed and {n_pruned} pruned trials",
        selected=winners[0].trial.number if winners else None,
        log_x=log_x,
        log_y=log_y,
        x_range=x_range,
        y_range=y_range,
    )


def _grid_drawings(study: optuna.Study, spec: StudySpec) -> Drawings:
    """A grid study's settings figure, and its grid of panels where the grid has one."""
    panels = grid_panels(study, spec)
    curves = setting_curves(study, spec)
    drawings: Drawings = {
        SETTINGS_FIGURE: lambda: figures.settings_figure(
            curves, title=f"{study.study_name}: {len(curves)} settings, per epoch"
        )
    }
    if panels is not None:
        drawings[GRID_FIGURE] = lambda: figures.grid_panels_figure(
            panels,
            title=f"{study.study_name}: training accuracy per epoch",
            ylabel="training accuracy",
        )
    return drawings


def _remove(directory: Path, names: list[str] | tuple[str, ...]) -> tuple[Path, ...]:
    """Delete the files of an earlier report that this one does not write."""
    removed = []
    for name in names:
        stale = directory / name
        if stale.is_file():
            stale.unlink()
            removed.append(stale)
    return tuple(removed)


# -- MLflow -----------------------------------------------------------------------------------


def log_report(
    client: TrackingClient,
    tracking: TrackingSettings,
    storage: StorageSettings,
    spec: StudySpec,
    study: optuna.Study,
    report: Report,
) -> tuple[StudyRun, bool]:
    """Log the report's files to the study's parent run under `report/`; (run, created).

    A study never mirrored to this tracking store gets its parent run created, as `hpo run`
    would have. Logging again replaces the files; only this report's files are logged, not
    everything in its directory.
    """
    return log_files_to_parent_run(
        client, tracking, storage, spec, study, report.written, artifact_path=ARTIFACT_PATH
    )
