"""`hpo best`: the best trial shown, retrained bit for bit, tested once, published to MLflow.

Studies are run the way users run them (`hpo run` in a subprocess); the MLflow tests run
against a local sqlite:/// store and the real server, each in an experiment of its own.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from threadpoolctl import threadpool_limits

from hpo.analysis.best import best_trial, retrain
from hpo.cli import main
from hpo.spec.study_file import load_study_file
from hpo.storage.database import resolve_storage
from hpo.storage.studies import prepare_study, stored_spec
from hpo.tracking.best_model import register_model
from hpo.tracking.lookup import find_run_id
from hpo.tracking.runs import StudyRun, TrackingSettings

HPO = [sys.executable, "-m", "hpo.cli"]


def _hpo(*args: str, cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run(
        [*HPO, *args],
        cwd=cwd,
        env=os.environ | {"OPENBLAS_NUM_THREADS": "1"} | (env or {}),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _run_study(study_file: Path, storage: str, cwd: Path, *tracking: str) -> optuna.Study:
    args = ("run", str(study_file), "--storage", storage, "--no-progress", *tracking)
    result = _hpo(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return optuna.load_study(study_name="tiny", storage=storage)


def _printed_best(study: optuna.Study, stdout: str) -> int:
    """The trial `hpo best` printed, checked against Optuna's best value (ties: lowest number)."""
    found = re.search(r"is trial (\d+): val_acc (\S+)\n", stdout)
    assert found, stdout
    number, value = int(found[1]), float(found[2])
    assert value == study.best_value
    ties = [t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert number == min(n for n in ties if study.trials[n].value == study.best_value)
    return number


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def default_tracking_uri(monkeypatch: pytest.MonkeyPatch):
    """Point the fluent MLflow API (`mlflow.pyfunc.load_model("runs:/...")`) at a store, for
    one test; the previous environment comes back afterwards."""
    import mlflow

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    def use(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)

    yield use
    mlflow.set_tracking_uri(None)  # unsets the variable; monkeypatch then restores it


# The model loaded where the project is not installed. `-I` drops the working directory and
# user site from sys.path and ignores PYTHON* variables; `-S` skips site.py, so the venv's .pth
# files, among them the editable install's import hook, never run; the venv's third-party
# packages (MLflow, NumPy) are then put back on sys.path by hand. `hpo` and `trainer` must be
# unimportable until MLflow adds the model's code/ directory.
_CLEAN_LOAD = """\
import importlib.util, sys
site_packages, tracking_uri, x_file, out_file, *uris = sys.argv[1:]
sys.path.append(site_packages)
assert importlib.util.find_spec("hpo") is None, "hpo importable before loading"
assert importlib.util.find_spec("trainer") is None, "trainer importable before loading"
import numpy as np
import mlflow
mlflow.set_tracking_uri(tracking_uri)
x = np.load(x_file)
predictions = [mlflow.pyfunc.load_model(uri).predict(x) for uri in uris]
np.save(out_file, np.stack(predictions))
import trainer
print(trainer.__file__)
print("hpo" in sys.modules)
"""


def _assert_loads_without_the_project(
    tracking_uri: str, model_uris: list[str], x: np.ndarray, expected: np.ndarray, tmp_path: Path
) -> None:
    """Load the models where neither hpo nor trainer can be imported, from an empty directory,
    and compare their predictions with `expected`."""
    empty = tmp_path / "empty"
    empty.mkdir()
    np.save(tmp_path / "x.npy", x)
    loaded = subprocess.run(
        [
            sys.executable, "-I", "-S", "-c", _CLEAN_LOAD,
            sysconfig.get_paths()["purelib"], tracking_uri, str(tmp_path / "x.npy"),
            str(tmp_path / "labels.npy"), *model_uris,
        ],
        cwd=empty,
        env=os.environ | {"PYTHONNOUSERSITE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    trainer_file, hpo_loaded = loaded.stdout.splitlines()[-2:]
    assert Path(trainer_file).parent.parent.name == "code"  # the model's copy of trainer
    assert hpo_loaded == "False"
    for labels in np.load(tmp_path / "labels.npy"):
        assert np.array_equal(labels, expected)


@pytest.mark.slow
def test_retrain_publishes_and_registers_a_model_that_predicts_like_the_trainer(
    tracking_uri, tiny_study_file, tmp_path, default_tracking_uri
):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    tracking = ("--tracking-uri", tracking_uri, "--experiment", f"best-{uuid.uuid4().hex}")
    model_name = f"tiny-{uuid.uuid4().hex[:12]}"
    study = _run_study(tiny_study_file(n_trials=4, epochs=3), storage, tmp_path, *tracking)

    result = _hpo(
        "best", "tiny", "--storage", storage, *tracking, "--retrain", "--register", model_name,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    number = _printed_best(study, out)
    best = study.trials[number]
    run_id = re.search(r"MLflow run: (\w+)\n", out)[1]
    assert best.user_attrs.get("mlflow_run_id", run_id) == run_id
    recorded, retrained = re.search(r"val_acc (\S+) \(recorded (\S+)\): identical\n", out).groups()
    assert float(retrained) == float(recorded) == best.value
    parent_id = re.search(r"parent run (\w+)", out)[1]
    model_uri = f"runs:/{parent_id}/best_model_trial_{number}"
    assert f"model: {model_uri}\n" in out
    assert f"registered: {model_name!r} version 1\n" in out

    # The parent run: the study's, with the test figures and the best trial's tags.
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_id)
    child = client.get_run(run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.tags["hpo.trial_number"] == str(number)
    assert parent.data.tags["hpo.best_trial"] == str(number)
    assert parent.data.tags["hpo.best_seed"] == str(best.user_attrs["seed"])
    assert {"test_acc", "test_loss"} <= parent.data.metrics.keys()

    # A trial without the recorded run id is found under the parent run by its tags.
    unrecorded = copy.deepcopy(best)
    unrecorded.user_attrs.pop("mlflow_run_id", None)
    settings = TrackingSettings(enabled=True, uri=tracking_uri, experiment=tracking[3])
    assert find_run_id(client, settings, study, unrecorded) == child.info.run_id

    # The registry: one version of the model, from the parent run.
    versions = client.search_model_versions(f"name = '{model_name}'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", parent_id)]
    assert versions[0].source.endswith(f"/best_model_trial_{number}")

    # The model predicts exactly as the trainer does, retrained here as hpo trains (1 thread).
    spec = stored_spec(study)
    with threadpool_limits(limits=1):
        again = retrain(spec, best_trial(study))
    assert again.identical
    x_val = again.splits.x_val
    expected = again.network.predict(x_val).argmax(axis=1)
    default_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    labels = model.predict(x_val)
    assert labels.dtype == np.int64
    assert np.array_equal(labels, expected)
    assert np.array_equal(model.predict(pd.DataFrame(x_val)), expected)
    registered = mlflow.pyfunc.load_model(f"models:/{model_name}/1")
    assert np.array_equal(registered.predict(x_val), expected)

    # Its signature, and an input example drawn from the validation split.
    signature = mlflow.models.get_model_info(model_uri).signature
    [inputs], [outputs] = signature.inputs.inputs, signature.outputs.inputs
    assert (inputs.type, inputs.shape) == (np.dtype(np.float32), (-1, 64))
    assert (outputs.type, outputs.shape) == (np.dtype(np.int64), (-1,))
    local = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "model"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert np.array_equal(example, x_val[: len(example)])

    # The logged test accuracy is the model's on the held-out split.
    x_test, t_test = again.splits.test()
    assert parent.data.metrics["test_acc"] == np.mean(model.predict(x_test) == t_test)

    # Elsewhere: a machine without this project pulls the model from the server. (The
    # model's files are the same in either store; once is enough for the slowest check.)
    if tracking_uri.startswith("http"):
        uris = [model_uri, f"models:/{model_name}/1"]
        _assert_loads_without_the_project(tracking_uri, uris, x_val, expected, tmp_path)

    # Registering the same trial's model again adds no version.
    run = StudyRun(parent.info.experiment_id, parent_id, parent.data.tags["hpo.study_uid"])
    again = register_model(client, model_name, run, trial_number=number)
    assert again.version == versions[0].version
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 1


@pytest.mark.slow
def test_retrain_without_mlflow_and_when_things_go_wrong(tiny_study_file, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = _run_study(tiny_study_file(n_trials=4, epochs=3), storage, tmp_path, "--no-mlflow")
    assert main(["best", "tiny", "--storage", storage, "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    number = _printed_best(study, out)
    assert f"  seed: {study.trials[number].user_attrs['seed']}\n" in out
    assert "MLflow run: not looked up (--no-mlflow)\n" in out

    # --no-mlflow --retrain: the test figures, and nothing else.
    result = _hpo("best", "tiny", "--storage", storage, "--no-mlflow", "--retrain", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"\(recorded \S+\): identical\n", result.stdout)
    test_line = re.search(
        r"test split \(1197 samples, leftover\): loss \S+, acc \S+\n", result.stdout
    )
    assert test_line
    assert result.stdout.endswith(test_line[0])
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "mlflow.db").exists()

    # MLflow down: the same results, then one line, and exit status 1.
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = _hpo(
        "best", "tiny", "--storage", storage, "--tracking-uri", dead, "--retrain",
        cwd=tmp_path, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "MLflow run: unknown (MLflow at http://127.0.0.1:" in result.stdout
    assert test_line[0] in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hpo best: MLflow at {dead} failed while logging the model: ")
    assert "Traceback" not in result.stderr

    # A record the retrained trial does not reproduce: said loudly, exit 1, no test figures.
    with sqlite3.connect(tmp_path / "studies.db") as db:
        db.execute(
            "UPDATE trial_values SET value = value + 1e-9 WHERE trial_id = "
            "(SELECT trial_id FROM trials WHERE number = ?)",
            (number,),
        )
    assert main(["best", "tiny", "--storage", storage, "--no-mlflow", "--retrain"]) == 1
    out, err = capsys.readouterr()
    assert re.search(r"\(recorded \S+\): DIFFERENT\n$", out)
    assert err.startswith(f"hpo best: REPRODUCIBILITY BUG: trial {number} retrained to val_acc ")
    assert err.endswith("the test split was not used\n")


def _error(capsys, *args: str) -> str:
    """Run `hpo ARGS` in process; it must exit 2 with one line on stderr: return that line."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err.strip()


def test_user_mistakes_exit_2_with_one_line(tiny_study_file, tmp_path, capsys):
    # A study created as hpo run creates it, whose only trial failed.
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    prepare_study(resolve_storage(storage), load_study_file(tiny_study_file()))
    study = optuna.load_study(study_name="tiny", storage=storage)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    err = _error(capsys, "best", "tiny", "--storage", storage, "--no-mlflow")
    assert err == (
        "hpo best: error: study 'tiny' has no completed trial yet (1 failed); "
        "run it with hpo run first"
    )
    err = _error(capsys, "best", "nope", "--storage", storage)
    assert err == f"hpo best: error: no study named 'nope' in {storage}; studies there: tiny"

    err = _error(capsys, "best", "tiny", "--storage", storage, "--no-mlflow", "--register", "m")
    assert err == "hpo best: error: --register needs MLflow; drop --no-mlflow"
    err = _error(capsys, "best", "tiny", "--storage", storage, "--register", "m")
    assert err.endswith("--register registers the model that --retrain logs; add --retrain")
    err = _error(capsys, "best", "tiny", "--storage", storage, "--retrain", "--register", "a/b")
    assert "must not be blank or contain '/', ':' or '%', but got --register 'a/b'" in err


def test_retrain_refuses_data_without_a_test_split(tiny_study_file, tmp_path, capsys):
    # All of digits, no test_fraction: every sample is in training or validation.
    text = tiny_study_file(n_trials=1, epochs=1).read_text().replace("n_samples = 600\n", "")
    study_file = tmp_path / "no-test.toml"
    study_file.write_text(text)
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    _run_study(study_file, storage, tmp_path, "--no-mlflow")
    err = _error(capsys, "best", "tiny", "--storage", storage, "--no-mlflow", "--retrain")
    assert err.startswith("hpo best: error: hpo best --retrain evaluates on the test split, but "
                          "the data of study 'tiny' has none")  # fmt: skip
    assert "test_fraction" in err
    assert "n_samples smaller than the dataset" in err
