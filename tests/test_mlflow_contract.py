"""The contract between hpo.tracking.local_store and MLflow's own SQLite store.

The mirror writes a trial's values straight into a local store's tables; these tests write the
same run once through MLflow's client and once directly, into one real store made by MLflow,
and compare everything MLflow reads back. An MLflow upgrade that changes the tables or what
their rows mean fails here first (or makes `LocalStore.open` refuse the store, also tested).
"""

from __future__ import annotations

import math
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from hpo.tracking.local_store import LocalStore, NotActive
from hpo.tracking.runs import TrackingSettings, make_client


@pytest.fixture(scope="module")
def new_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new local store, made (created and migrated) by MLflow as hpo makes it: once."""
    path = tmp_path_factory.mktemp("made") / "mlflow.db"
    make_client(TrackingSettings(enabled=True, uri=f"sqlite:///{path}"))
    return path


@pytest.fixture
def store(
    new_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[MlflowClient, str, str]:
    """(client, experiment id, uri) of a copy of the new store, for one test."""
    monkeypatch.chdir(tmp_path)  # artifacts in ./mlruns
    shutil.copy(new_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = make_client(TrackingSettings(enabled=True, uri=uri))
    return client, client.create_experiment("contract"), uri


def _batches() -> list[list[Metric]]:
    """Values that exercise every rule of the latest value: steps out of order, one step
    logged twice at different times, the same value twice, NaN and infinities, a later batch
    with older steps (which must not become the latest)."""
    first = [
        Metric("val_acc", 0.5, 1_000, 1),
        Metric("val_acc", 0.25, 1_001, 3),
        Metric("val_acc", 0.75, 1_002, 2),
        Metric("val_acc", 0.75, 1_002, 2),  # the same value twice: stored once
        Metric("val_acc", 0.125, 999, 3),  # step 3 again, earlier: not the latest
        Metric("loss", float("nan"), 1_000, 1),
        Metric("loss", float("inf"), 1_000, 2),
        Metric("loss", float("-inf"), 1_000, 2),
        Metric("ties", 1.0, 5, 1),
        Metric("ties", 2.0, 5, 1),  # same step and time: the larger value is the latest
        Metric("nan_last", 1.0, 1, 1),
        Metric("nan_last", float("nan"), 1, 2),
    ]
    second = [
        Metric("val_acc", 0.9, 2_000, 2),  # an older step logged later: not the latest
        Metric("loss", 3.0, 2_000, 4),  # a newer step: the latest
        Metric("epochs_trained", 4, 2_000, 0),
    ]
    return [first, second]


PARAMS = [Param("lr", "0.001"), Param("seed", "3"), Param("layers", "[100, 100]")]
TAGS = {
    "mlflow.runName": "trial 7 (pruned at epoch 4)",
    "mlflow.note.content": "Pruned after epoch 4: its val_acc was below the median.",
    "hpo.complete": "true",
    "hpo.study": "contract",
}
CREATE_TAGS = {"hpo.trial_number": "7", "mlflow.runName": "trial 7"}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted(
        (m.step, m.timestamp, m.value if not math.isnan(m.value) else -9e99)
        for m in client.get_metric_history(run_id, key)
    )


def test_a_run_written_directly_reads_back_as_one_logged_by_mlflow(store):
    client, experiment, uri = store
    local = LocalStore.open(uri)
    assert local is not None, "a store MLflow has just made must be one hpo writes directly"
    by_client = client.create_run(experiment, start_time=500, tags=CREATE_TAGS).info.run_id
    direct = local.create_run(experiment, start_time=500, tags=CREATE_TAGS)
    assert direct is not None
    ours, theirs = client.get_run(direct).info, client.get_run(by_client).info
    for field in ("experiment_id", "user_id", "status", "start_time", "end_time",
                  "lifecycle_stage", "run_name"):  # fmt: skip
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.artifact_uri == theirs.artifact_uri.replace(by_client, direct)
    assert client.get_run(direct).data.tags == client.get_run(by_client).data.tags
    first, second = _batches()

    client.log_batch(by_client, metrics=first, params=PARAMS)
    client.log_batch(by_client, metrics=second, tags=[RunTag(k, v) for k, v in TAGS.items()])
    client.set_terminated(by_client, "FINISHED", end_time=3_000)

    assert local.log(direct, metrics=first, params=PARAMS)
    assert local.log(direct, metrics=second, tags=TAGS, status="FINISHED", end_time=3_000)
    local.close()

    ours, theirs = client.get_run(direct), client.get_run(by_client)
    assert ours.data.metrics.keys() == theirs.data.metrics.keys()
    for key, value in theirs.data.metrics.items():
        assert _same(ours.data.metrics[key], value), key
        assert _history(client, direct, key) == _history(client, by_client, key), key
    assert theirs.data.metrics["val_acc"] == 0.25  # step 3's later value
    assert theirs.data.metrics["loss"] == 3.0
    assert ours.data.params == theirs.data.params
    assert ours.data.tags == theirs.data.tags
    assert ours.info.run_name == theirs.info.run_name == TAGS["mlflow.runName"]
    assert (ours.info.status, ours.info.end_time) == (theirs.info.status, theirs.info.end_time)
    assert (ours.info.status, ours.info.end_time) == ("FINISHED", 3_000)
    # MLflow's searches (the UI's table and filters) find both alike.
    found = client.search_runs(
        [experiment], filter_string="metrics.val_acc < 0.3 and params.seed = '3'"
    )
    assert {r.info.run_id for r in found} == {direct, by_client}
    newest = client.search_runs([experiment], order_by=["metrics.loss DESC"])
    assert {r.data.metrics["loss"] for r in newest} == {3.0}


def test_a_param_is_never_changed_and_deleted_runs_and_experiments_are_refused(store):
    client, experiment, uri = store
    run_id = client.create_run(experiment).info.run_id
    local = LocalStore.open(uri)
    assert local is not None
    assert local.log(run_id, params=[Param("lr", "0.1")])
    # Another value for a logged param: left to MLflow's client, which refuses it.
    assert not local.log(run_id, params=[Param("lr", "0.2")], metrics=[Metric("x", 1, 1, 1)])
    with pytest.raises(MlflowException):
        client.log_batch(run_id, params=[Param("lr", "0.2")])
    assert client.get_run(run_id).data.params == {"lr": "0.1"}
    assert client.get_metric_history(run_id, "x") == []  # nothing of the refused call
    client.delete_run(run_id)
    with pytest.raises(NotActive, match="deleted"):
        local.log(run_id, metrics=[Metric("x", 1.0, 1, 1)])
    with pytest.raises(MlflowException):
        client.log_batch(run_id, metrics=[Metric("x", 1.0, 1, 1)])
    with pytest.raises(NotActive, match="not found"):
        local.log("0" * 32, metrics=[Metric("x", 1.0, 1, 1)])
    assert local.create_run(experiment, start_time=1, tags={}) is None  # MLflow draws a name
    client.delete_experiment(experiment)
    with pytest.raises(NotActive, match="deleted"):
        local.create_run(experiment, start_time=1, tags=CREATE_TAGS)
    with pytest.raises(MlflowException):
        client.create_run(experiment, start_time=1, tags=CREATE_TAGS)


@pytest.mark.parametrize(
    "call",
    [
        {"tags": {"hpo.error": "x" * 8001}},
        {"params": [Param("note", "x" * 6001)]},
        {"metrics": [Metric("bad key!", 1.0, 1, 1)]},
        {"metrics": [Metric("x", "1.0", 1, 1)]},
        {"metrics": [Metric("x", 1.0, -1, 1)]},
        {"params": [Param("lr", "1"), Param("lr", "2")]},
        {"status": "PRUNED"},
    ],
    ids=["long tag", "long param", "key", "text value", "negative time", "twice", "status"],
)
def test_what_mlflow_refuses_is_left_to_its_client(store, call):
    client, experiment, uri = store
    run_id = client.create_run(experiment).info.run_id
    local = LocalStore.open(uri)
    assert local is not None
    assert local.log(run_id, **call) is False
    run = client.get_run(run_id)
    assert (run.data.metrics, run.data.params, run.info.status) == ({}, {}, "RUNNING")


def test_a_store_that_is_not_the_one_checked_is_written_through_mlflow(store, new_store, tmp_path):
    _, _, uri = store
    assert LocalStore.open(uri) is not None
    for other in ("http://127.0.0.1:5000", "postgresql://u@h/db", "sqlite://", "file:///x"):
        assert LocalStore.open(other) is None, other
    path = uri.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE metrics ADD COLUMN dataset TEXT")
    assert LocalStore.open(uri) is None  # a column more: a newer MLflow's table
    copy = tmp_path / "trigger.db"
    shutil.copy(new_store, copy)
    assert LocalStore.open(f"sqlite:///{copy}") is not None
    with sqlite3.connect(copy) as connection:
        connection.execute("CREATE TRIGGER t AFTER INSERT ON metrics BEGIN SELECT 1; END")
    assert LocalStore.open(f"sqlite:///{copy}") is None


def test_the_mirrors_threads_share_one_writer(store):
    """The mirror creates runs in one thread and ends them in another, on one writer."""
    client, experiment, uri = store
    local = LocalStore.open(uri)
    assert local is not None
    created: list[str] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            for i in range(40):
                run_id = local.create_run(experiment, start_time=i, tags={"mlflow.runName": "r"})
                assert run_id is not None
                created.append(run_id)
        except BaseException as error:
            errors.append(error)

    def end() -> None:
        try:
            done = 0
            while done < 40:
                if done < len(created):
                    assert local.log(
                        created[done], metrics=[Metric("v", float(done), 1, 1)],
                        status="FINISHED", end_time=2,
                    )  # fmt: skip
                    done += 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=create), threading.Thread(target=end)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    runs = client.search_runs([experiment], max_results=100)
    assert len(runs) == 40
    assert {r.info.status for r in runs} == {"FINISHED"}
