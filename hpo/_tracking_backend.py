"""The process that talks to MLflow for one worker: runs created, metrics sent, runs closed.

Measured on a book-6.5 trial: the MLflow client's own work (requests, JSON, entities) cost
the training process about 16 ms of CPU per trial when it ran on threads beside training. In
a process of its own it costs training nothing but a few small messages. Inside, one thread
creates runs as trials start (so a run id is ready when the trial ends, whatever else is
queued) and the main loop sends metric values (one `log_batch` every `flush_interval`
seconds per run, and at the end) and closes runs.

When MLflow fails, the process warns once, stops calling it for `cooldown` seconds and
reports the trials it could not mirror; `hpo sync-mlflow` fills them in later.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ._tracking import (
    COMPLETE_TAG,
    MAX_BATCH,
    STATUS,
    StudyRun,
    TrackingSettings,
    _ms,
    _param_value,
    child_tags,
    final_fields,
    make_client,
)

logger = logging.getLogger("hpo._tracking")


@dataclass
class _RunState:
    run_id: str | None = None
    created: threading.Event = field(default_factory=threading.Event)
    pending: list[Any] = field(default_factory=list)  # metric values not yet sent
    params: list[Any] = field(default_factory=list)  # sent with the first batch of values
    failed: bool = False


class _Down(Exception):
    """MLflow is failing: this call was not made, or failed."""


class Backend:
    """Everything one worker sends to MLflow, in the order it can be sent."""

    def __init__(self, config: dict[str, Any], replies: Any) -> None:
        self.client = make_client(TrackingSettings(True, config["uri"], None))
        self.parent = StudyRun(*config["parent"])
        self.study_name, self.metric = config["study_name"], config["metric"]
        self.maximize, self._best = config["maximize"], config["best"]
        self.host, self.pid = config["host"], config["pid"]
        self.flush_interval, self.cooldown = config["flush_interval"], config["cooldown"]
        self.replies = replies
        self.unmirrored: set[int] = set()
        self._runs: dict[int, _RunState] = {}
        self._lock = threading.Lock()
        self._starts: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._down_until = 0.0
        self._warned = False
        self._starter = threading.Thread(target=self._create_runs, name="runs", daemon=True)
        self._starter.start()

    # -- messages from the worker --------------------------------------------------------------

    def start(self, number: int, params: dict[str, Any], seed: int, start_ms: int) -> None:
        with self._lock:
            self._runs[number] = _RunState()
        self._starts.put((number, params, seed, start_ms))

    def metrics(self, number: int, values: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        with self._lock:
            state = self._runs.get(number)
            if state is not None and not state.failed:
                state.pending.extend(Metric(*value) for value in values)

    def finish(self, trial: FrozenTrial) -> None:
        from mlflow.entities import Metric, RunTag

        with self._lock:
            state = self._runs.get(trial.number)
        if state is not None:
            state.created.wait(min(self.cooldown, 10.0))  # its run may still be on the way
        with self._lock:
            self._runs.pop(trial.number, None)  # from here on, its start is ignored
        if state is None or state.failed or state.run_id is None:
            self.unmirrored.add(trial.number)
            return
        with self._lock:
            pending, state.pending = state.pending, []
            params, state.params = state.params, []
        metrics, tags = final_fields(trial, self.metric)
        tags[COMPLETE_TAG] = "true"
        batch = pending + metrics  # the last values and the final fields in one call
        try:
            while len(batch) > MAX_BATCH:
                self._call(
                    "log_batch", self.client.log_batch, state.run_id, metrics=batch[:MAX_BATCH]
                )
                batch = batch[MAX_BATCH:]
            self._call(
                "log_batch",
                self.client.log_batch,
                state.run_id,
                metrics=batch,
                params=params,
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
            self._call(
                "set_terminated",
                self.client.set_terminated,
                state.run_id,
                STATUS.get(trial.state, "FAILED"),
                end_time=_ms(trial.datetime_complete),
            )
            if trial.state == TrialState.COMPLETE and self._improves(trial.value):
                self._best = trial.value
                best = Metric(f"best_{self.metric}", trial.value, _ms(), trial.number)
                self._call("log_batch", self.client.log_batch, self.parent.run_id, metrics=[best])
        except _Down:
            self.unmirrored.add(trial.number)

    def flush_all(self) -> None:
        with self._lock:
            items = [
                (n, s)
                for n, s in self._runs.items()
                if (s.pending or s.params) and not s.failed and s.run_id is not None
            ]
        for number, state in items:
            with self._lock:
                batch, state.pending = state.pending, []
                params, state.params = state.params, []
            try:
                for i in range(0, len(batch), MAX_BATCH):
                    self._call(
                        "log_batch",
                        self.client.log_batch,
                        state.run_id,
                        metrics=batch[i : i + MAX_BATCH],
                        params=params if i == 0 else [],
                    )
            except _Down:
                state.failed = True
                self.unmirrored.add(number)

    def stop(self, timeout: float) -> set[int]:
        self._starts.put(None)
        self._starter.join(timeout)
        self.flush_all()
        with self._lock:
            left = {n for n, s in self._runs.items() if s.run_id is None or s.pending}
        return self.unmirrored | left

    # -- MLflow calls ------------------------------------------------------------------------

    def _create_runs(self) -> None:
        while (start := self._starts.get()) is not None:
            try:
                self._create(*start)
            except Exception:  # this thread must outlive any one run
                logger.debug("creating the run of trial %s failed", start[0], exc_info=True)

    def _create(self, number: int, params: dict[str, Any], seed: int, start_ms: int) -> None:
        from mlflow.entities import Param

        with self._lock:
            state = self._runs.get(number)
        if state is None:  # the trial ended and was given up on before its turn came
            self.unmirrored.add(number)
            self.replies.put(("run_id", number, None))
            return
        try:
            tags = child_tags(self.study_name, self.parent, number) | {
                "hpo.worker_host": self.host,
                "hpo.worker_pid": str(self.pid),
            }
            run = self._call(
                "create_run",
                self.client.create_run,
                self.parent.experiment_id,
                start_time=start_ms,
                tags=tags,
            )
            state.run_id = run.info.run_id
            self.replies.put(("run_id", number, state.run_id))
            values = {**params, "trial_number": number, "seed": seed}
            # Sent with the run's first values (within `flush_interval`, or at its end): one
            # request fewer per trial for the server, which shares the machine.
            state.params = [Param(k, _param_value(v)) for k, v in values.items()]
            state.created.set()
        except _Down:
            with self._lock:
                state.failed = True
                state.pending.clear()
            self.unmirrored.add(number)
            self.replies.put(("run_id", number, None))
        finally:
            state.created.set()

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        """One MLflow call; a failure pauses all calls for the cooldown."""
        if time.monotonic() < self._down_until:
            raise _Down
        try:
            return function(*args, **kwargs)
        except Exception as error:
            self._down_until = time.monotonic() + self.cooldown
            if not self._warned:
                self._warned = True
                logger.warning(
                    "MLflow at %s failed (%s: %s); trials go on and are kept in the Optuna "
                    "storage; `hpo sync-mlflow %s` fills in what is missing (hpo run does, "
                    "at its end)",
                    self.client.tracking_uri,
                    what,
                    str(error).splitlines()[0][:200],
                    self.study_name,
                )
            raise _Down from error

    def _improves(self, value: float | None) -> bool:
        if value is None:
            return False
        if self._best is None:
            return True
        return value > self._best if self.maximize else value < self._best


def serve(inbox: Any, replies: Any, config: dict[str, Any]) -> None:
    """The tracking process: read the worker's messages until it says stop, or dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker; it stops us
    logging.basicConfig(level=logging.WARNING, format=config["log_format"])
    parent_pid = os.getppid()
    backend = Backend(config, replies)
    replies.put(("ready",))
    next_flush = time.monotonic() + backend.flush_interval
    while True:
        try:
            message = inbox.get(timeout=max(0.05, next_flush - time.monotonic()))
        except queue.Empty:
            message = ("tick",)
        kind = message[0]
        if kind == "start":
            backend.start(*message[1:])
        elif kind == "metrics":
            backend.metrics(*message[1:])
        elif kind == "finish":
            backend.finish(message[1])
        elif kind == "barrier":
            backend.flush_all()
            replies.put(("barrier", message[1]))
        elif kind == "stop":
            replies.put(("stopped", backend.stop(timeout=message[1])))
            return
        if time.monotonic() >= next_flush:
            backend.flush_all()
            next_flush = time.monotonic() + backend.flush_interval
        if os.getppid() != parent_pid:  # the worker died: send what we have, then go
            backend.stop(timeout=10)
            replies.cancel_join_thread()  # nobody will read them
            return
