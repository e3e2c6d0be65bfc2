"""`hpo report`: the book's listing and figures of a real study, as files and MLflow artifacts.

One study is run the way users run it (`hpo run` in a subprocess) with a median pruner, so
that it has completed and pruned trials, and shared by the tests of this module. The
figures are checked as `Figure` objects, before they are saved, against the stored trials.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pytest
from matplotlib import pyplot as plt
from matplotlib.image import imread
from optuna.trial import TrialState

from hpo.analysis.figures import (
    figure_6_24,
    intermediate_values_figure,
    lr_weight_decay_figure,
    param_importances_figure,
)
from hpo.analysis.listing import best_lines, fmt, ranked_trials
from hpo.analysis.study_report import (
    FILES,
    Report,
    curve_panels,
    history_study,
    log_report,
    search_points,
)
from hpo.cli import main
from hpo.engine.launch import run_in_process
from hpo.spec.study_file import StudySpec, load_study_file
from hpo.storage.database import resolve_storage
from hpo.storage.studies import UID_ATTR, prepare_study, records, stored_spec
from hpo.tracking.runs import TrackingSettings

HPO = [sys.executable, "-m", "hpo.cli"]
PNGS = [name for name in FILES if name.endswith(".png")]

# Wide ranges on purpose: tiny learning rates learn nothing in 8 epochs, and the median
# pruner cuts them at epoch 2, so the study has both completed and pruned trials.
PRUNED_STUDY = """\
[study]
name = "pruned"
n_trials = 30
seed = 3

[data]
dataset = "digits"
n_samples = 500

[model]
hidden_size_list = [24]

[train]
optimizer = "adam"
epochs = 8
batch_size = 100

[search.lr]
type = "float"
low = 1e-5
high = 3e-1
log = true

[search.weight_decay_lambda]
type = "float"
low = 1e-8
high = 1e-1
log = true

[sampler]
name = "random"

[pruner]
name = "median"
n_startup_trials = 3
n_warmup_steps = 2
"""


def _hpo(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [*HPO, *args],
        cwd=cwd,
        env=os.environ | {"OPENBLAS_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _run(study_file: Path, storage: str, *flags: str) -> None:
    args = ("run", str(study_file), "--storage", storage, "--no-mlflow", "--no-progress")
    _hpo(*args, *flags, cwd=study_file.parent)


def _run_in_process(spec: StudySpec, storage: str) -> None:
    """What `hpo run --no-mlflow` does, in this process (no interpreter to start)."""
    settings = resolve_storage(storage)
    prepare_study(settings, spec)
    outcome = run_in_process(spec, settings)
    assert not outcome.errors, outcome


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, optuna.Study]:
    """(storage URL, study): 30 finished trials of lr and weight decay, some pruned."""
    root = tmp_path_factory.mktemp("report-study")
    study_file = root / "pruned.toml"
    study_file.write_text(PRUNED_STUDY)
    storage = f"sqlite:///{root / 'studies.db'}"
    _run(study_file, storage)
    study = optuna.load_study(study_name="pruned", storage=storage)
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.COMPLETE] >= 5, states
    assert states[TrialState.PRUNED] >= 3, states
    return storage, study


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE,))


def _report(capsys, name: str, storage: str, out_dir: Path, *flags: str) -> tuple[int, str, str]:
    """`hpo report NAME --storage STORAGE --out OUT_DIR FLAGS` in process: (status, out, err)."""
    code = main(["report", name, "--storage", storage, "--out", str(out_dir), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_report_writes_the_listing_and_every_figure(pruned, tmp_path, capsys, monkeypatch):
    # MLflow is down, as it is for anyone who never started a server: the files are written,
    # then one line says what failed, and the exit status is 1.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    storage, study = pruned
    out_dir = tmp_path / "out"
    code, out, err = _report(capsys, "pruned", storage, out_dir, "--tracking-uri", dead)
    assert code == 1
    assert err == (
        f"hpo report: MLflow at {dead} failed while logging the report (the files are in "
        f"{out_dir}): " + err.split("): ", 1)[1]
    )
    assert len(err.splitlines()) == 1, err
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(FILES)
    for name in FILES:
        assert f"  wrote {out_dir / name}\n" in out
    assert "skipped" not in out
    assert plt.get_fignums() == []  # every figure closed, none left in pyplot
    assert matplotlib.get_backend().lower() == "agg"

    for name in PNGS:
        path = out_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(path)
        height, width = image.shape[:2]
        assert 600 <= width <= 4000, (name, image.shape)
        assert 300 <= height <= 3000, (name, image.shape)
        assert image[..., :3].std() > 0.05, name  # not a blank page

    # best.txt: a header, then the book's listing of every completed trial, best first.
    complete = _complete(study)
    header, *listing = (out_dir / "best.txt").read_text().splitlines()
    states = Counter(t.state for t in study.trials)
    assert header == (
        f"study 'pruned': 30 trials ({states[TrialState.COMPLETE]} complete, "
        f"{states[TrialState.PRUNED]} pruned); ranked by val_acc (validation accuracy, maximize)"
    )
    assert listing == best_lines(study, "val_acc", n=len(complete))
    by_value = sorted(complete, key=lambda t: (-t.value, t.number))
    for rank, (line, trial) in enumerate(zip(listing, by_value, strict=True), start=1):
        assert line.startswith(f"Best-{rank} (val acc:{fmt(trial.value)}) | ")
        assert f"lr:{fmt(trial.params['lr'])}, " in line
    assert listing[0].startswith(f"Best-1 (val acc:{fmt(study.best_value)})")


def test_figure_6_24_plots_the_best_trials_stored_accuracies(pruned):
    _, study = pruned
    ranked = ranked_trials(study)
    for top, rows, columns in ((20, 2, 5), (7, 2, 5), (3, 1, 3)):
        figure = figure_6_24(curve_panels(study, "val_acc", top), title="t")
        n = min(top, len(ranked))
        assert len(figure.axes) == n
        for rank, (axes, trial) in enumerate(zip(figure.axes, ranked, strict=False), start=1):
            assert axes.get_subplotspec().get_geometry()[:2] == (rows, columns)
            history = trial.user_attrs["history"]
            validation, training = axes.get_lines()
            assert validation.get_linestyle() == "-"
            assert training.get_linestyle() == "--"
            np.testing.assert_array_equal(validation.get_ydata(), history["val_acc"])
            np.testing.assert_array_equal(training.get_ydata(), history["train_acc"])
            np.testing.assert_array_equal(validation.get_xdata(), range(1, 9))
            # One y range for every panel, holding where each trial settles (the last half
            # of its 8 epochs) and its highest accuracy (more in tests/test_figures.py).
            low, high = axes.get_ylim()
            assert (low, high) == figure.axes[0].get_ylim()
            assert low < min(history["val_acc"][4:] + history["train_acc"][4:])
            assert max(history["val_acc"] + history["train_acc"]) < high
            title = axes.get_title()
            assert title.startswith(f"Best-{rank} (val acc:{fmt(trial.value)})\n")
            assert f"lr:{fmt(trial.params['lr'])}" in title
    plt.close("all")


def test_the_lr_weight_decay_map_has_a_point_per_trial_coloured_by_its_value(pruned):
    _, study = pruned
    points = search_points(study)
    figure = lr_weight_decay_figure(
        points, metric_label="validation accuracy", maximize=True, title="t"
    )
    axes = figure.axes[0]
    assert (axes.get_xscale(), axes.get_yscale()) == ("log", "log")
    collections = {c.get_gid(): c for c in axes.collections}

    complete = _complete(study)
    dots = collections["complete"]
    np.testing.assert_array_equal(
        dots.get_offsets(), [(t.params["lr"], t.params["weight_decay_lambda"]) for t in complete]
    )
    values = np.array([t.value for t in complete])
    np.testing.assert_array_equal(dots.get_array(), values)
    figure.canvas.draw()
    np.testing.assert_allclose(dots.get_facecolors(), dots.cmap(dots.norm(values)))
    best = np.argmax(values)  # the brightest colour of the map goes to the best value
    np.testing.assert_allclose(dots.get_facecolors()[best], dots.cmap(1.0))
    np.testing.assert_array_equal(collections["best"].get_offsets(), [dots.get_offsets()[best]])

    pruned_trials = study.get_trials(states=(TrialState.PRUNED,))
    with_value = [t for t in pruned_trials if t.value is not None]
    hollow = collections["pruned"]
    assert len(hollow.get_offsets()) == len(with_value)
    assert len(hollow.get_facecolors()) == 0  # hollow markers: edges only
    np.testing.assert_allclose(
        hollow.get_edgecolors(), dots.cmap(dots.norm([t.value for t in with_value]))
    )
    assert len(with_value) == len(pruned_trials) or "no value" in collections
    colorbar = figure.axes[1]
    assert colorbar.get_ylabel() == "validation accuracy"


def test_intermediate_values_come_from_the_stored_histories(pruned):
    _, study = pruned
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    copy = history_study(study, "val_acc")
    assert [t.state for t in copy.trials] == [t.state for t in finished]
    for original, copied in zip(finished, copy.trials, strict=True):
        history = original.user_attrs["history"]["val_acc"]
        assert copied.intermediate_values == dict(enumerate(history, start=1))
        assert copied.params == original.params
    # The real trials store every epoch too (studies made before 0.2 stored at most the
    # pruned epoch, and the report draws them from the histories all the same).
    assert all(t.intermediate_values == copied.intermediate_values
               for t, copied in zip(finished, copy.trials, strict=True))  # fmt: skip
    figure = intermediate_values_figure(copy, metric_label="validation accuracy")
    lines = figure.axes[0].get_lines()
    assert len(lines) == len(finished)
    for line, trial in zip(lines, finished, strict=True):
        np.testing.assert_array_equal(line.get_ydata(), trial.user_attrs["history"]["val_acc"])
    assert plt.get_fignums() == []


def test_param_importances_are_the_same_every_time(pruned):
    _, study = pruned

    def widths() -> list[float]:
        bars = param_importances_figure(study, metric_label="v").axes[0].patches
        return [bar.get_width() for bar in bars]

    first = widths()
    assert len(first) == 2
    assert math.isclose(sum(first), 1.0)
    assert widths() == first


def test_figures_a_study_cannot_have_are_skipped_with_a_reason(tiny_study_file, tmp_path, capsys):
    # Only lr searched, one trial, and a minimised loss.
    text = tiny_study_file(n_trials=1, epochs=3).read_text()
    study_file = tmp_path / "loss.toml"
    study_file.write_text(text.replace("seed = 1\n", 'seed = 1\nmetric = "val_loss"\n'))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    out_dir = tmp_path / "out"
    spec = load_study_file(study_file)
    _run_in_process(spec, storage)
    code, out, err = _report(capsys, "tiny", storage, out_dir, "--no-mlflow")
    assert code == 0, err
    assert (
        "  skipped lr_weight_decay.png: the study does not search weight_decay_lambda "
        "(it searches lr)\n"
    ) in out
    assert (
        "  skipped param_importances.png: needs at least 2 completed trials, the study has 1\n"
    ) in out
    expected = set(FILES) - {"lr_weight_decay.png", "param_importances.png"}
    assert {p.name for p in out_dir.iterdir()} == expected

    # More trials: the importances appear; the figures rank by the loss, lowest first.
    _run_in_process(spec.with_overrides(n_trials=4), storage)
    code, out, err = _report(capsys, "tiny", storage, out_dir, "--no-mlflow")
    assert code == 0, err
    assert "param_importances.png" not in out.split("skipped", 1)[-1]
    assert {p.name for p in out_dir.iterdir()} == expected | {"param_importances.png"}
    study = optuna.load_study(study_name="tiny", storage=storage)
    losses = sorted(t.value for t in _complete(study))
    figure = figure_6_24(curve_panels(study, "val_loss", 20), title="t")
    titles = [axes.get_title() for axes in figure.axes]
    assert [t.split("\n")[0] for t in titles] == [
        f"Best-{rank} (val loss:{fmt(v)})" for rank, v in enumerate(losses, start=1)
    ]
    header = (out_dir / "best.txt").read_text().splitlines()[0]
    assert header.endswith("ranked by val_loss (validation loss, minimize)")


def test_user_mistakes_exit_2_with_one_line(tiny_study_file, tmp_path, capsys):
    # A study created as hpo run creates it, whose only trial failed.
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    prepare_study(resolve_storage(storage), load_study_file(tiny_study_file()))
    study = optuna.load_study(study_name="tiny", storage=storage)
    study.tell(study.ask(), state=TrialState.FAIL)
    out_dir = tmp_path / "out"
    for name, flags, message in (
        ("nope", (), f"no study named 'nope' in {storage}; studies there: tiny"),
        ("tiny", (), "study 'tiny' has no completed trial yet (1 failed); run it with hpo run "
                     "first"),
        ("tiny", ("--top", "0"), "--top: must be from 1 to 100, but got 0"),
    ):  # fmt: skip
        code, _, err = _report(capsys, name, storage, out_dir, "--no-mlflow", *flags)
        assert code == 2
        assert err == f"hpo report: error: {message}\n"
    assert not out_dir.exists()


def test_the_report_is_logged_to_the_studys_parent_run(
    pruned, tracking_uri, tmp_path, capsys, monkeypatch
):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # a sqlite:/// store keeps its artifacts in ./mlruns
    storage, study = pruned
    out_dir = tmp_path / "out"
    experiment = f"report-{uuid.uuid4().hex}"
    tracking = ("--tracking-uri", tracking_uri, "--experiment", experiment)
    code, out, err = _report(capsys, "pruned", storage, out_dir, *tracking)
    assert code == 0, err
    last = out.splitlines()[-1]
    assert last.startswith(f"MLflow ({tracking_uri}): 7 files logged to parent run ")
    assert last.endswith(" (created: the study was not mirrored there) under report/")
    run_id = last.split("parent run ")[1].split()[0]

    client = MlflowClient(tracking_uri)
    parent = client.get_run(run_id)
    assert parent.data.tags["hpo.role"] == "study"
    assert parent.data.tags["hpo.study_uid"] == records(study)[UID_ATTR]
    assert client.get_experiment(parent.info.experiment_id).name == experiment
    names = sorted(f"report/{name}" for name in FILES)
    assert sorted(a.path for a in client.list_artifacts(run_id, "report")) == names
    copy = client.download_artifacts(run_id, "report/best.txt", str(tmp_path))
    assert Path(copy).read_text() == (out_dir / "best.txt").read_text()

    # Logged again: the parent run is found, not made, and holds the same files.
    settings = TrackingSettings(enabled=True, uri=tracking_uri, experiment=experiment)
    report = Report(out_dir, tuple(out_dir / name for name in FILES), {})
    again, created = log_report(
        client, settings, resolve_storage(storage), stored_spec(study), study, report
    )
    assert (again.run_id, created) == (run_id, False)
    assert sorted(a.path for a in client.list_artifacts(run_id, "report")) == names


def test_diverged_trials_are_not_called_pruned_in_a_study_without_a_pruner(
    tiny_study_file, tmp_path, capsys
):
    path = tiny_study_file(n_trials=3, epochs=3)
    path.write_text(path.read_text().replace("high = 1e-1", "high = 1e20") + (
        "\n[[enqueue]]\nparams = { lr = 1e20 }\nseed = 1\n"
    ))  # fmt: skip
    spec = load_study_file(path)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    _run_in_process(spec, storage)
    code, _out, err = _report(capsys, "tiny", storage, tmp_path / "out", "--no-mlflow")
    assert code == 0, err
    header = (tmp_path / "out" / "best.txt").read_text().splitlines()[0]
    assert "(2 complete, 1 diverged)" in header, header
    assert "pruned" not in header
    assert main(["status", "--storage", storage]) == 0
    assert "0 pruned, 1 diverged" in capsys.readouterr().out
