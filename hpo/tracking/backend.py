"""The mirror process: every MLflow call of one `hpo run`, for all of its workers.

Three threads. The reader takes the workers' messages off their pipes as they come, so that a
worker's send never waits for MLflow. The run starter opens the store, sets up the study's
parent run and creates each trial's run as the trial starts (so that its id is ready when the
trial ends, whatever else is queued). The main thread sends metric values (one `log_batch`
every `flush_interval` seconds per run, and everything else at the trial's end), closes runs,
and at the end runs the closing sync.

When MLflow fails, the process warns once, stops calling it for `cooldown` seconds and
remembers the trials it could not mirror; the closing sync (or `hpo sync-mlflow`) fills them in.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from optuna.trial import FrozenTrial, TrialState

from hpo.spec.outcomes import COUNTED, completed_value
from hpo.tracking.local_store import LocalStore
from hpo.tracking.runs import (
    COMPLETE_TAG,
    DEFAULT_URI,
    MAX_BATCH,
    STATUS,
    StudyRun,
    TrackingStoreError,
    child_tags,
    ensure_parent_run,
    epoch_ms,
    final_fields,
    make_client,
    param_value,
)

logger = logging.getLogger("hpo.tracking.runs")

SETTLE_S = 30.0  # other processes' trials that ended this recently are left to them
EOF_WAIT_S = 10.0  # at the end, how long the workers' last messages may take to arrive
CLOSE_PATIENCE_S, CLOSE_RETRY_S = 15.0, 2.0  # the closing sync's tries of an MLflow that fails


@dataclass
class _RunState:
    origin: int  # the channel of the worker that runs the trial
    run_id: str | None = None
    created: threading.Event = field(default_factory=threading.Event)
    pending: list[Any] = field(default_factory=list)  # metric values not yet sent
    params: list[Any] = field(default_factory=list)  # sent with the first batch of values
    failed: bool = False


class _Down(Exception):
    """MLflow is failing: this call was not made, or failed."""


class Backend:
    """Everything one `hpo run` sends to MLflow, in the order it can be sent."""

    def __init__(self, config: dict[str, Any], channels: list[Connection]) -> None:
        self.config = config
        self.tracking, self.storage, self.spec = (
            config["tracking"],
            config["storage"],
            config["spec"],
        )
        self.study_name, self.metric = self.spec.study.name, self.spec.study.metric
        self.flush_interval, self.cooldown = config["flush_interval"], config["cooldown"]
        self.channels = channels
        self.worker_pids: dict[int, int] = {}
        self.client: Any = None
        self.local: LocalStore | None = None  # direct writes into a local SQLite store
        self.parent: StudyRun | None = None
        self.unmirrored: set[int] = set()
        self.seen: set[int] = set()  # every trial a worker of this run started or ended
        self._runs: dict[int, _RunState] = {}
        self._lock = threading.Lock()
        self._starts: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._study_ready = threading.Event()
        self._study_known = False
        self._closing = False
        self._making_client = False
        self._next_setup = 0.0
        self._down_until = 0.0
        self._warned = False
        self._maximize = self.spec.study.direction == "maximize"
        self._best: float | None = None
        self.progress: Callable[[], None] = lambda: None  # while closing: tells hpo run
        self._starter = threading.Thread(target=self._create_runs, name="runs", daemon=True)
        self._starter.start()

    # -- messages ------------------------------------------------------------------------------

    def study_ready(self) -> None:
        self._study_known = True
        self._study_ready.set()

    def start(self, origin: int, number: int, params: dict[str, Any], seed: int, at: int) -> None:
        self.seen.add(number)
        with self._lock:
            self._runs[number] = _RunState(origin)
        self._starts.put((number, params, seed, at))

    def metrics(self, number: int, values: list[tuple[str, float, int, int]]) -> None:
        _import_mlflow()
        from mlflow.entities import Metric

        with self._lock:
            state = self._runs.get(number)
            if state is not None and not state.failed:
                state.pending.extend(Metric(*value) for value in values)

    def finish(self, trial: FrozenTrial) -> None:
        _import_mlflow()
        from mlflow.entities import Metric

        self.seen.add(trial.number)
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
        status = STATUS.get(trial.state, "FAILED")
        end_time = epoch_ms(trial.datetime_complete)
        try:
            if not self._write_local(
                state.run_id, batch, params, tags, status=status, end_time=end_time
            ):
                self._finish_through_client(state.run_id, batch, params, tags, status, end_time)
            if trial.state == TrialState.COMPLETE and self._improves(trial.value):
                self._best = trial.value
                best = Metric(
                    f"best_{self.metric}", completed_value(trial), epoch_ms(), trial.number
                )
                assert self.parent is not None
                if not self._write_local(self.parent.run_id, [best]):
                    self._call(self.client.log_batch, self.parent.run_id, metrics=[best])
        except _Down:
            self.unmirrored.add(trial.number)

    def _write_local(
        self,
        run_id: str,
        metrics: list[Any],
        params: list[Any] | None = None,
        tags: dict[str, str] | None = None,
        *,
        status: str | None = None,
        end_time: int | None = None,
    ) -> bool:
        """Straight into a local SQLite store (`hpo.tracking.local_store`), when it is one
        and the values fit; False if MLflow's client must send them instead."""
        if self.local is None:
            return False
        return bool(
            self._call(
                self.local.log,
                run_id,
                metrics=metrics,
                params=params or [],
                tags=tags,
                status=status,
                end_time=end_time,
            )
        )

    def _finish_through_client(
        self,
        run_id: str,
        batch: list[Any],
        params: list[Any],
        tags: dict[str, str],
        status: str,
        end_time: int,
    ) -> None:
        from mlflow.entities import RunTag

        while len(batch) > MAX_BATCH:
            self._call(self.client.log_batch, run_id, metrics=batch[:MAX_BATCH])
            batch = batch[MAX_BATCH:]
        self._call(
            self.client.log_batch,
            run_id,
            metrics=batch,
            params=params,
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self._call(self.client.set_terminated, run_id, status, end_time=end_time)

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
            run_id = cast(str, state.run_id)
            try:
                if self._write_local(run_id, batch, params):
                    continue
                for i in range(0, max(len(batch), 1), MAX_BATCH):  # params alone, too
                    self._call(
                        self.client.log_batch,
                        run_id,
                        metrics=batch[i : i + MAX_BATCH],
                        params=params if i == 0 else [],
                    )
            except _Down:
                state.failed = True
                self.unmirrored.add(number)

    def stop_starting(self, timeout: float) -> None:
        """No more runs to create: let the run starter finish what it has."""
        self._closing = True
        self._study_ready.set()  # a setup still waiting for the study gives up
        self._starts.put(None)
        while self._making_client:  # never cut a store's creation short (see _keep_alive)
            self._starter.join(1.0)
        self._starter.join(timeout)

    # -- the end of the run --------------------------------------------------------------------

    def close(self, *, interrupted: bool) -> tuple[str, str]:
        """The closing sync: ("finished", a line for the user) or ("failed", the reason).

        MLflow that does not answer is tried again every few seconds for up to
        `CLOSE_PATIENCE_S` (a server restarting as the study ends), and then left to
        `hpo sync-mlflow`."""
        if not self._study_known:
            return "failed", "the study was not ready"
        started = time.monotonic()
        while True:
            self._down_until = 0.0  # MLflow may be back: the sync tries in any case
            try:
                return "finished", self._closing_sync(interrupted=interrupted)
            except TrackingStoreError as error:
                return "failed", str(error)
            except Exception as error:
                waited = time.monotonic() - started
                if waited + CLOSE_RETRY_S > CLOSE_PATIENCE_S:
                    return "failed", _first_line(error)
                if waited == 0 or not self._warned:
                    logger.warning(
                        "MLflow at %s does not answer (%s); trying again for up to %.0f s",
                        self.tracking.describe(),
                        _first_line(error),
                        CLOSE_PATIENCE_S,
                    )
                    self._warned = True
                time.sleep(CLOSE_RETRY_S)

    def _closing_sync(self, *, interrupted: bool) -> str:
        from hpo.storage.studies import load_existing_study
        from hpo.tracking.sync import sync_study

        _import_mlflow()
        if self.parent is None:
            self._setup()
        assert self.parent is not None
        study = load_existing_study(self.storage, self.study_name)
        report = sync_study(
            self.client,
            self.parent,
            study,
            self.metric,
            storage=self.storage,
            settle_s=SETTLE_S,
            settled=self.seen,
            progress=self.progress,
        )
        self._close_parent(study, interrupted=interrupted)
        experiment = self.client.get_experiment(self.parent.experiment_id).name
        view = "; view it with `mlflow ui` in this directory" if self.tracking.uri is None else ""
        return (
            f"MLflow ({self.tracking.describe()}, experiment {experiment!r}, parent run "
            f"{self.parent.run_id}): {report.describe()}{view}"
        )

    def _close_parent(self, study: Any, *, interrupted: bool) -> None:
        assert self.parent is not None
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = sum(s in COUNTED for s in states)
        if interrupted:
            self.client.set_terminated(self.parent.run_id, "KILLED")
        elif finished >= self.spec.study.n_trials and TrialState.RUNNING not in states:
            self.client.set_terminated(self.parent.run_id, "FINISHED")

    # -- MLflow calls --------------------------------------------------------------------------

    def _setup(self) -> None:
        """Open the store, then (once the study exists) find or create its parent run."""
        from hpo.storage.studies import load_existing_study

        if self.client is None:
            self._making_client = True
            try:
                with _keep_alive(lambda: self.progress()):  # local work: importing, the store
                    _import_mlflow()
                    self.client = make_client(self.tracking)
                    if not self.tracking.remote:
                        self.local = LocalStore.open(self.tracking.uri or DEFAULT_URI)
            finally:
                self._making_client = False
                # The collector was off for the imports (see `_serve`); what they made lives
                # as long as this process, so it need not walk it again.
                gc.freeze()
                gc.enable()
            self.progress()
        self._study_ready.wait()
        if not self._study_known:
            raise _Down  # closing before the study was ready
        study = load_existing_study(self.storage, self.study_name)
        self.parent = ensure_parent_run(self.client, self.tracking, self.storage, self.spec, study)
        self.client.update_run(self.parent.run_id, status="RUNNING")
        self.progress()
        try:
            self._best = study.best_value
        except ValueError:
            self._best = None

    def _try_setup(self) -> bool:
        if self.parent is not None:
            return True
        if time.monotonic() < self._next_setup:
            return False
        try:
            self._setup()
        except Exception as error:
            self._next_setup = time.monotonic() + self.cooldown
            if not self._closing:
                self._warn("opening the study's parent run", error)
            return False
        for channel in self.channels:  # workers may now wait briefly for their run ids
            _send(channel, ("ready",))
        return True

    def _create_runs(self) -> None:
        self._try_setup()
        while (start := self._starts.get()) is not None:
            try:
                self._create(*start)
            except Exception:  # this thread must outlive any one run
                logger.debug("creating the run of trial %s failed", start[0], exc_info=True)

    def _create(self, number: int, params: dict[str, Any], seed: int, at: int) -> None:
        _import_mlflow()
        from mlflow.entities import Param

        with self._lock:
            state = self._runs.get(number)
        if state is None:  # the trial ended and was given up on before its turn came
            self.unmirrored.add(number)
            return
        try:
            if not self._try_setup() or self.parent is None:
                raise _Down
            tags = child_tags(self.study_name, self.parent, number) | {
                "hpo.worker_host": self.config["host"],
                "hpo.worker_pid": str(self.worker_pids.get(state.origin, "")),
            }
            experiment = self.parent.experiment_id
            run_id = None
            if self.local is not None:
                run_id = self._call(self.local.create_run, experiment, start_time=at, tags=tags)
            if run_id is None:
                run = self._call(self.client.create_run, experiment, start_time=at, tags=tags)
                run_id = run.info.run_id
            state.run_id = run_id
            values = {**params, "trial_number": number, "seed": seed}
            # Sent with the run's first values (within `flush_interval`, or at its end): one
            # request fewer per trial for the store, which shares the machine.
            state.params = [Param(k, param_value(v)) for k, v in values.items()]
        except _Down:
            with self._lock:
                state.failed = True
                state.pending.clear()
            self.unmirrored.add(number)
        finally:
            state.created.set()
            _send(self.channels[state.origin], ("run_id", number, state.run_id))

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """One MLflow call; a failure pauses all calls for the cooldown."""
        if time.monotonic() < self._down_until:
            raise _Down
        try:
            return function(*args, **kwargs)
        except Exception as error:
            self._down_until = time.monotonic() + self.cooldown
            self._warn(getattr(function, "__name__", "a call"), error)
            raise _Down from error

    def _warn(self, what: str, error: BaseException) -> None:
        if self._warned:
            logger.debug("MLflow failed again (%s): %s", what, _first_line(error))
            return
        self._warned = True
        logger.warning(
            "MLflow at %s failed (%s: %s); trials go on and are kept in the Optuna storage; "
            "`hpo sync-mlflow %s` fills in what is missing (hpo run does, at its end)",
            self.tracking.describe(),
            what,
            _first_line(error),
            self.study_name,
        )

    def _improves(self, value: float | None) -> bool:
        if value is None:
            return False
        if self._best is None:
            return True
        return value > self._best if self._maximize else value < self._best


_IMPORTING = threading.Lock()


def _import_mlflow() -> None:
    """Import MLflow in one thread at a time. The mirror's threads all use it, and a thread
    that imports MLflow while another is importing it can meet a partially initialised module
    (an ImportError that reads like a circular import; seen on a loaded machine when a short
    study's first trial ended while the store was being opened)."""
    with _IMPORTING:
        import mlflow.entities  # noqa: F401
        from mlflow import MlflowClient  # noqa: F401


@contextlib.contextmanager
def _keep_alive(beat: Callable[[], None], every: float = 2.0) -> Iterator[None]:
    """Progress beats while local work runs (importing MLflow, creating or migrating a local
    store: slow on a loaded machine, but it ends, and killing it would leave the store
    half-migrated). Calls to a server get none: a server that hangs must show as a stall."""
    done = threading.Event()

    def beating() -> None:
        while not done.wait(every):
            beat()

    thread = threading.Thread(target=beating, name="keep-alive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


_SEND_LOCK = threading.Lock()  # two threads answer workers; a message is written whole


def _send(channel: Connection, message: tuple[Any, ...]) -> None:
    with _SEND_LOCK, contextlib.suppress(OSError):  # a worker gone: nobody waits for it
        channel.send(message)


def _read(control: Connection, channels: list[Connection], inbox: queue.Queue[Any]) -> None:
    """The reader thread: every message, tagged with its channel (-1: control), into `inbox`.

    A channel that closes (its worker ended) is reported once as ("eof",).
    """
    open_channels = {id(c): i for i, c in enumerate(channels)} | {id(control): -1}
    by_id = {id(c): c for c in [*channels, control]}
    while open_channels:
        # `wait` returns some of the objects it is given: connections here (typeshed says any)
        ready = cast(list[Connection], wait([by_id[k] for k in open_channels], timeout=1.0))
        for connection in ready:
            index = open_channels[id(connection)]
            try:
                message = connection.recv()
            except (EOFError, OSError):
                del open_channels[id(connection)]
                inbox.put((index, ("eof",)))
                continue
            inbox.put((index, message))


def serve(
    control: Connection,
    channels: list[Connection],
    config: dict[str, Any],
    inherited: Sequence[Connection] = (),
) -> None:
    """The mirror process: mirror the workers' trials until `hpo run` says finish, or dies.

    `inherited`: the other ends of the pipes, which a forked mirror holds copies of.
    """
    for connection in inherited:
        connection.close()
    with contextlib.ExitStack() as stack:
        _serve(control, channels, config, stack)


def _serve(
    control: Connection,
    channels: list[Connection],
    config: dict[str, Any],
    stack: contextlib.ExitStack,
) -> None:
    # Ctrl-C and SIGTERM are for hpo run and its workers, which then tell us to close (after
    # their last messages): ending here first would lose those messages.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=config["log_format"])
    # Importing MLflow and opening its store make hundreds of thousands of objects, none of
    # them garbage: with the collector on, its passes over them took a quarter of that CPU
    # time (about 0.7 of 2.8 s), taken from training. On again after (`Backend._setup`).
    gc.disable()
    parent_pid = os.getppid()
    inbox: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_read, args=(control, channels, inbox), daemon=True).start()
    backend = Backend(config, channels)
    if not config["tracking"].remote:
        # Every call to a local store is local work: slow on a loaded machine, never hung.
        # Only a server's calls are held to the stall limit of `Mirror.close`.
        stack.enter_context(_keep_alive(lambda: backend.progress()))
    ending = _Ending(open_channels=set(range(len(channels))))
    next_flush = time.monotonic() + backend.flush_interval
    while True:
        try:
            index, message = inbox.get(timeout=max(0.05, next_flush - time.monotonic()))
        except queue.Empty:
            pass  # no message: only the flush and the ending's deadline below
        else:
            _handle(backend, control, channels, ending, index, message)
        if time.monotonic() >= next_flush:
            backend.flush_all()
            next_flush = time.monotonic() + backend.flush_interval
        if os.getppid() != parent_pid and ending.how is None:
            ending.begin(("close", True, False))
        if ending.how is not None and (
            not ending.open_channels or time.monotonic() >= ending.deadline
        ):
            if not inbox.empty():
                continue  # the workers' last messages first
            _close(backend, control, interrupted=ending.how[1], sync=ending.how[2])
            return


@dataclass
class _Ending:
    """How the mirror was asked to end (`("close", interrupted, sync)`, None until then), and
    until when it waits for the workers' channels that are still open."""

    open_channels: set[int]
    how: tuple[Any, ...] | None = None
    deadline: float = 0.0

    def begin(self, how: tuple[Any, ...]) -> None:
        self.how, self.deadline = how, time.monotonic() + EOF_WAIT_S


def _handle(
    backend: Backend,
    control: Connection,
    channels: list[Connection],
    ending: _Ending,
    index: int,
    message: tuple[Any, ...],
) -> None:
    """One message from a worker (`index` >= 0) or from hpo run (-1)."""
    kind = message[0]
    if kind == "start":
        backend.start(index, *message[1:])
    elif kind == "metrics":
        backend.metrics(*message[1:])
    elif kind == "finish":
        backend.finish(message[1])
        backend.progress()
    elif kind == "worker":  # a worker's first message: its pid, for the runs' tags
        backend.worker_pids[index] = message[1]
    elif kind == "barrier":  # everything this worker sent before has been sent on
        backend.flush_all()
        _send(channels[index], message)
    elif kind == "study":
        backend.study_ready()
    elif kind == "close":
        ending.begin(message)
        backend.progress = lambda: _send(control, ("progress",))
    elif kind == "eof":
        if index == -1 and ending.how is None:  # hpo run is gone: send what we have, go
            ending.begin(("close", True, False))
        elif index >= 0:
            ending.open_channels.discard(index)


def _close(backend: Backend, control: Connection, *, interrupted: bool, sync: bool) -> None:
    backend.stop_starting(timeout=30.0)
    backend.flush_all()
    if not sync:
        return
    _send(control, backend.close(interrupted=interrupted))
