"""A trial's run written straight into a local MLflow SQLite store: MLflow's tables, fenced.

Why: MLflow's client costs CPU on a machine whose cores all train. Into its SQLite store,
`log_batch` builds and flushes an ORM object per value and reads the latest values back key by
key: about 30 ms of CPU for one trial of the book's 6.5 (200 values), and creating and ending
the run about 9 ms more. The same rows, written with `executemany` in one transaction at the
run's creation and one at its end, take about a millisecond each.

This is the one module of hpo that knows MLflow's tables. It is used only for a `sqlite:///`
store whose tables have exactly the columns and keys it was checked against, with no triggers,
and only for values inside MLflow's own limits; anything else goes through MLflow's client.
`tests/test_mlflow_contract.py` writes the same run both ways and compares everything MLflow
reads back (run info, histories, latest values, NaN and infinities, params, tags, run name,
status, searches), so an MLflow upgrade that changes what these rows mean fails there first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

# The tables as MLflow 3's migrations leave them: column name -> position in the primary key
# (0: not in it). A store whose tables differ in any way is written through MLflow's client.
TABLES: dict[str, dict[str, int]] = {
    "metrics": {"key": 1, "value": 5, "timestamp": 2, "run_uuid": 4, "step": 3, "is_nan": 6},
    "latest_metrics": {
        "key": 1,
        "value": 0,
        "timestamp": 0,
        "step": 0,
        "is_nan": 0,
        "run_uuid": 2,
    },
    "params": {"key": 1, "value": 0, "run_uuid": 2},
    "tags": {"key": 1, "value": 0, "run_uuid": 2},
}
RUN_COLUMNS = {
    "run_uuid": 1, "name": 0, "source_type": 0, "source_name": 0, "entry_point_name": 0,
    "user_id": 0, "status": 0, "start_time": 0, "end_time": 0, "source_version": 0,
    "lifecycle_stage": 0, "artifact_uri": 0, "experiment_id": 0, "deleted_time": 0,
}  # fmt: skip
EXPERIMENT_COLUMNS = {"experiment_id", "artifact_location", "lifecycle_stage"}  # among others
RUN_NAME_TAG = "mlflow.runName"  # MLflow keeps the name in the run's row as well
STATUSES = {"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"}

# MLflow's limits (mlflow.utils.validation); values outside them go through its client, which
# refuses them as it always does.
MAX_KEY, MAX_PARAM, MAX_TAG = 250, 6000, 8000
_KEY = re.compile(r"[\w\-. /]+")
_LARGEST = 1.7976931348623157e308  # how MLflow stores an infinity


class _LeftToClient(Exception):
    """Nothing written: MLflow's client is to make this call (and refuse it, as it may)."""


class NotActive(RuntimeError):
    """The run or experiment is gone or deleted: MLflow's client refuses to write to it, and
    so does this."""


class LocalStore:
    """Writes runs' values into one local MLflow SQLite store; `open` says if it may."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._connection = sqlite3.connect(
            path, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()  # the mirror's threads share the connection

    @classmethod
    def open(cls, tracking_uri: str) -> LocalStore | None:
        """The writer of the store at `tracking_uri`, or None: not a local SQLite file, or its
        tables are not the ones this module knows (MLflow's client is used then)."""
        if not tracking_uri.startswith("sqlite:///") or "?" in tracking_uri:
            return None
        path = tracking_uri.removeprefix("sqlite:///")
        if path in ("", ":memory:"):
            return None
        try:
            store = cls(path)
            mismatch = store._schema_mismatch()
        except sqlite3.Error as error:
            logger.debug("MLflow store %s not opened for direct writes: %s", path, error)
            return None
        if mismatch:
            logger.debug("MLflow store %s written through MLflow's client: %s", path, mismatch)
            store.close()
            return None
        return store

    def close(self) -> None:
        self._connection.close()

    def create_run(
        self, experiment_id: str, *, start_time: int, tags: Mapping[str, str]
    ) -> str | None:
        """A new run, as `MlflowClient.create_run(experiment_id, start_time, tags)` makes it:
        its id, or None if it is not one this module makes (no `mlflow.runName` tag, for
        which MLflow draws a name; tags outside MLflow's limits). Raises NotActive if the
        experiment is gone or deleted."""
        tags = dict(tags)
        if RUN_NAME_TAG not in tags or not _fits((), (), tags, None):
            return None
        run_id = uuid.uuid4().hex
        try:
            with self._transaction() as connection:
                found = connection.execute(
                    "SELECT artifact_location, lifecycle_stage FROM experiments "
                    "WHERE experiment_id = ?",
                    (int(experiment_id),),
                ).fetchone()
                if found is None or found[1] != "active":
                    raise NotActive(
                        f"experiment {experiment_id} is {'deleted' if found else 'not found'}"
                    )
                location = found[0]
                if not location or "?" in location or "#" in location:
                    raise _LeftToClient  # MLflow's own joining of such a location
                connection.execute(
                    "INSERT INTO runs (run_uuid, name, source_type, source_name, "
                    "entry_point_name, user_id, status, start_time, end_time, source_version, "
                    "lifecycle_stage, artifact_uri, experiment_id, deleted_time) VALUES "
                    "(?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, '', 'active', ?, ?, NULL)",
                    (
                        run_id,
                        tags[RUN_NAME_TAG],
                        tags.get("mlflow.user", "unknown"),
                        int(start_time),
                        f"{location.rstrip('/')}/{run_id}/artifacts",
                        int(experiment_id),
                    ),
                )
                connection.executemany(
                    "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                    [(key, value, run_id) for key, value in tags.items()],
                )
        except _LeftToClient:
            return None
        return run_id

    def log(
        self,
        run_id: str,
        *,
        metrics: Sequence[Any] = (),
        params: Sequence[Any] = (),
        tags: Mapping[str, str] | None = None,
        status: str | None = None,
        end_time: int | None = None,
    ) -> bool:
        """Log to `run_id` in one transaction, as `log_batch` (then `set_terminated`, when
        `status` is given) would; False, writing nothing, if a value is outside what this
        module writes (the caller then uses MLflow's client). Metrics and params are
        `mlflow.entities.Metric` and `Param` (or anything with their fields).

        Raises NotActive if the run is gone or deleted.
        """
        tags = dict(tags or {})
        if not _fits(metrics, params, tags, status):
            return False
        rows = [_metric_row(run_id, m) for m in metrics]
        latest: dict[str, tuple[Any, ...]] = {}
        for row in rows:  # per key, the latest by (step, timestamp, value), as MLflow picks
            key, value, timestamp, _, step, _ = row
            old = latest.get(key)
            if old is None or (step, timestamp, value) > (old[4], old[2], old[1]):
                latest[key] = row
        try:
            with self._transaction() as connection:
                stage = connection.execute(
                    "SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)
                ).fetchone()
                if stage is None or stage[0] != "active":
                    raise NotActive(f"run {run_id} is {'deleted' if stage else 'not found'}")
                if self._param_conflict(run_id, params):
                    raise _LeftToClient  # MLflow's client refuses to change a param: it says so
                self._write(connection, run_id, rows, latest, params, tags, status, end_time)
        except _LeftToClient:
            return False
        return True

    @staticmethod
    def _write(
        connection: sqlite3.Connection,
        run_id: str,
        rows: list[tuple[Any, ...]],
        latest: dict[str, tuple[Any, ...]],
        params: Sequence[Any],
        tags: dict[str, str],
        status: str | None,
        end_time: int | None,
    ) -> None:
        connection.executemany(
            "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        connection.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, run_uuid, step, is_nan) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key, run_uuid) DO UPDATE SET "
            "value = excluded.value, timestamp = excluded.timestamp, step = excluded.step, "
            "is_nan = excluded.is_nan WHERE (excluded.step, excluded.timestamp, "
            "excluded.value) > (latest_metrics.step, latest_metrics.timestamp, "
            "latest_metrics.value)",
            list(latest.values()),
        )
        connection.executemany(
            "INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?) "
            "ON CONFLICT (key, run_uuid) DO NOTHING",
            [(p.key, p.value, run_id) for p in params],
        )
        connection.executemany(
            "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?) "
            "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value",
            [(key, value, run_id) for key, value in tags.items()],
        )
        if RUN_NAME_TAG in tags:
            connection.execute(
                "UPDATE runs SET name = ? WHERE run_uuid = ?", (tags[RUN_NAME_TAG], run_id)
            )
        if status is not None:
            connection.execute(
                "UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                (status, end_time, run_id),
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction at a time: the mirror's threads share this connection."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def _param_conflict(self, run_id: str, params: Sequence[Any]) -> bool:
        """Whether a param is already logged to the run with another value."""
        if not params:
            return False
        stored = dict(
            self._connection.execute(
                "SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)
            ).fetchall()
        )
        return any(p.key in stored and stored[p.key] != p.value for p in params)

    def _schema_mismatch(self) -> str | None:
        """What differs from the tables this module writes, or None."""
        triggers = self._connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN "
            "('metrics', 'latest_metrics', 'params', 'tags', 'runs')"
        ).fetchall()
        if triggers:
            return f"triggers {[t[0] for t in triggers]}"
        for table, expected in TABLES.items():
            columns = self._columns(table)
            if columns != expected:
                return f"table {table} has {columns}, expected {expected}"
        runs = self._columns("runs")
        if runs != RUN_COLUMNS:
            return f"table runs has {runs}, expected {RUN_COLUMNS}"
        missing = EXPERIMENT_COLUMNS - set(self._columns("experiments"))
        return f"table experiments lacks {sorted(missing)}" if missing else None

    def _columns(self, table: str) -> dict[str, int]:
        rows = self._connection.execute(f"PRAGMA table_info({table})").fetchall()
        return {name: pk for _, name, _, _, _, pk in rows}


def _metric_row(run_id: str, metric: Any) -> tuple[str, float, int, str, int, int]:
    value = float(metric.value)
    if math.isnan(value):
        return (metric.key, 0.0, int(metric.timestamp), run_id, int(metric.step), 1)
    if math.isinf(value):
        value = _LARGEST if value > 0 else -_LARGEST
    return (metric.key, value, int(metric.timestamp), run_id, int(metric.step), 0)


def _fits(
    metrics: Sequence[Any], params: Sequence[Any], tags: Mapping[str, str], status: str | None
) -> bool:
    """Whether every value is one MLflow accepts and this module writes as MLflow would."""
    if status is not None and status not in STATUSES:
        return False
    keys = [m.key for m in metrics] + [p.key for p in params] + list(tags)
    if not all(isinstance(k, str) and len(k) <= MAX_KEY and _KEY.fullmatch(k) for k in keys):
        return False
    for metric in metrics:
        value, timestamp, step = metric.value, metric.timestamp, metric.step
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not isinstance(timestamp, int) or timestamp < 0 or not isinstance(step, int):
            return False
    if any(not isinstance(p.value, str) or len(p.value) > MAX_PARAM for p in params):
        return False
    if len({p.key for p in params}) != len(params):
        return False
    return all(isinstance(v, str) and len(v) <= MAX_TAG for v in tags.values())
