"""The MLflow mirror of one `hpo run`: one process beside all of the run's workers.

Why a process of its own, and one per run: MLflow's work costs CPU, and on a machine whose
cores all train, all of it is taken from training. One process per `hpo run`, however many
workers, imports MLflow once, opens the store once and runs the closing sync once; workers
never import MLflow. Each worker has a pipe of its own to the mirror and never waits for it
(`TrialMirror`); the mirror process is `hpo.tracking.backend.serve`, forked where that is safe.
For the book's 6.5 study with 2 workers it takes about 2.7 s of CPU in all: importing MLflow
and creating a new local store 2 s, each trial's run about 4 ms in a local SQLite store
(`hpo.tracking.local_store`; 40 ms through MLflow's client).
"""

from __future__ import annotations

import copyreg
import logging
import multiprocessing
import os
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import optuna

from hpo.storage.database import StorageSettings
from hpo.tracking.runs import RUN_ID_ATTR, TrackingSettings, epoch_ms

if TYPE_CHECKING:
    from hpo.spec.study_file import StudySpec
    from trainer import EpochMetrics

logger = logging.getLogger(__name__)

MIRROR_FD_ENV = "HPO_MIRROR_FD"  # a worker process's end of its pipe to the mirror


def _mapping(items: dict[str, Any]) -> MappingProxyType[str, Any]:
    return MappingProxyType(items)


# A study spec is frozen with read-only mappings; the mirror process gets it pickled.
copyreg.pickle(MappingProxyType, lambda m: (_mapping, (dict(m),)))


class Mirror:
    """The mirror process of one `hpo run`, started before its workers, closed after them.

    `channels` is the number of workers: each gets its own pipe (`worker_end(i)`), used in this
    process (one worker) or handed to a worker process (`worker_fd(i)`).
    """

    def __init__(
        self,
        tracking: TrackingSettings,
        storage: StorageSettings,
        spec: StudySpec,
        *,
        channels: int = 1,
        flush_interval: float = 2.0,
        cooldown: float = 30.0,
    ) -> None:
        from hpo.tracking.backend import serve

        self.tracking, self.study_name = tracking, spec.study.name
        fork = _fork_is_safe()
        context = (
            multiprocessing.get_context("fork") if fork else multiprocessing.get_context("spawn")
        )
        pairs = [context.Pipe(duplex=True) for _ in range(channels)]
        self._worker_ends: list[Connection | None] = [ours for ours, _ in pairs]
        self._control, control_end = context.Pipe(duplex=True)
        # A forked mirror holds copies of this process's ends of the pipes: it closes them
        # first, or it would never see a worker's channel (or hpo run) close.
        inherited = [*(ours for ours, _ in pairs), self._control] if fork else []
        config = {
            "tracking": tracking,
            "storage": storage,
            "spec": spec,
            "host": socket.gethostname(),
            "flush_interval": flush_interval,
            "cooldown": cooldown,
            "log_format": "%(levelname)s %(name)s: %(message)s",
        }
        self._process = context.Process(
            target=serve,
            args=(control_end, [theirs for _, theirs in pairs], config, inherited),
            name="hpo-mlflow",
            daemon=True,
        )
        self._process.start()
        control_end.close()
        for _, theirs in pairs:
            theirs.close()

    def worker_end(self, index: int) -> Connection:
        end = self._worker_ends[index]
        assert end is not None, "that end was released"
        return end

    def worker_fd(self, index: int) -> int:
        """The file descriptor to hand to worker process `index` (`pass_fds`)."""
        return self.worker_end(index).fileno()

    def release_worker_ends(self) -> None:
        """Close this process's copies of the workers' ends: the mirror sees a worker's end
        when the worker closes its own."""
        for index, end in enumerate(self._worker_ends):
            if end is not None:
                end.close()
                self._worker_ends[index] = None

    def study_ready(self) -> None:
        """The study exists: the mirror may set up its parent run."""
        self._tell(("study",))

    def close(self, *, interrupted: bool, stall_timeout: float = 20.0) -> str | None:
        """Mirror what is left and run the closing sync; a line for the user, or None.

        Waits while the mirror makes progress, and at most `stall_timeout` s for any one step:
        a slow or dead tracking server delays the end of the run by that much, not more.
        """
        self.release_worker_ends()
        if not self._tell(("close", interrupted, True)):
            self._gave_up("its process ended early")
            return None
        answer = self._answer(stall_timeout)
        if answer is None:
            self._gave_up(f"no answer within {stall_timeout:.0f} s")
            return None
        if answer[0] == "finished":
            return str(answer[1])
        if answer[0] == "ended":
            self._gave_up("its process ended without a word; see above")
            return None
        self._gave_up(str(answer[1]))
        return None

    def abandon(self, stall_timeout: float = 20.0) -> None:
        """Stop the mirror without a closing sync (the run never started). It may be creating
        the store, which it reports as progress: waited for, since a kill would leave the
        store half-migrated."""
        if self._control.closed:
            return
        self.release_worker_ends()
        if self._tell(("close", False, False)):
            self._answer(stall_timeout)

    def _answer(self, stall_timeout: float) -> tuple[Any, ...] | None:
        """The mirror's last word ("finished" or "failed", or ("ended",) when it ends
        without one), waiting while it reports progress and at most `stall_timeout` s for
        any one step; None if it stalled (it is then killed)."""
        deadline = time.monotonic() + stall_timeout
        answer: tuple[Any, ...] | None = None
        try:
            while self._control.poll(max(0.0, deadline - time.monotonic())):
                message = self._control.recv()
                if message[0] == "progress":
                    deadline = time.monotonic() + stall_timeout
                elif message[0] in ("finished", "failed"):
                    answer = message
                    break
        except (EOFError, OSError):  # it ended, with nothing more to say
            answer = ("ended",)
        self._stop(timeout=5.0 if answer is not None else 0.5)
        return answer

    def _tell(self, message: tuple[Any, ...]) -> bool:
        try:
            self._control.send(message)
        except OSError:
            return False
        return True

    def _stop(self, timeout: float) -> None:
        """Wait `timeout` s for the mirror to end, then kill it (it ignores SIGTERM, which a
        whole process group gets from systemd or a terminal, so as to finish its work)."""
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        if not self._control.closed:
            self._control.close()

    def _gave_up(self, reason: str) -> None:
        logger.warning(
            "could not finish mirroring the study to MLflow at %s (%s); run `hpo sync-mlflow "
            "%s` later",
            self.tracking.describe(),
            reason,
            self.study_name,
        )
        return None


def _fork_is_safe() -> bool:
    """Whether the mirror may be forked rather than spawned. Forked, it starts with what this
    process has imported (half a second of CPU less, taken from training otherwise); that is
    safe only on Linux and from a process with no other thread (a thread's locks would be
    copied held). `hpo run` starts the mirror before any thread of its own."""
    return sys.platform == "linux" and threading.active_count() == 1


class TrialMirror:
    """A worker's side of the mirror: follows its trials and sends them, never waiting.

    Implements the objective's `TrialObserver` (trial_started, epoch_ended, trial_ending) and
    the runner's end-of-trial listener (trial_finished). Epoch values go out at most once per
    `send_interval` s. When a trial ends, its MLflow run id is recorded on it if the mirror has
    sent it; while the mirror is known to be working, a missing one is waited for up to
    `run_id_wait` s, and never again once such a wait comes back empty (MLflow slowed down).
    """

    def __init__(
        self, connection: Connection, *, send_interval: float = 1.0, run_id_wait: float = 0.25
    ) -> None:
        self.connection = connection
        self.send_interval, self.run_id_wait = send_interval, run_id_wait
        self._unsent: dict[int, list[tuple[str, float, int, int]]] = {}
        self._next_send = 0.0
        self._run_ids: dict[int, str | None] = {}
        self._ready = False
        self._patient = True
        self._broken = False
        self._barrier: str | None = None
        self._send(("worker", os.getpid()))

    @classmethod
    def from_fd(cls, fd: int) -> TrialMirror:
        """In a worker process: the end of the pipe `hpo run` handed it."""
        return cls(Connection(fd))

    def wait_ready(self, timeout: float) -> bool:
        """Until the mirror has opened the store and the study's parent run (for tests and
        benchmarks that want every trial mirrored from the first); False after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not self._ready and self._read(deadline - time.monotonic()):
            pass
        return self._ready

    def wait_idle(self, timeout: float) -> bool:
        """Until the mirror has sent everything this worker sent it so far (benchmarks)."""
        token = os.urandom(8).hex()
        self._send(("barrier", token))
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            if self._barrier == token:
                return True
        return False

    # -- called by the objective and the runner ----------------------------------------------

    def trial_started(self, trial: optuna.trial.BaseTrial, seed: int) -> None:
        self._send(("start", trial.number, dict(trial.params), seed, epoch_ms()))

    def epoch_ended(
        self, trial: optuna.trial.BaseTrial, epoch: int, metrics: EpochMetrics
    ) -> None:
        now = epoch_ms()
        values = self._unsent.setdefault(trial.number, [])
        values += [(k, v, now, epoch) for k, v in metrics.as_dict().items()]
        if time.monotonic() >= self._next_send:  # one message a second, not one an epoch
            self._send_values()

    def trial_ending(self, trial: optuna.trial.BaseTrial) -> None:
        """Before Optuna hears how the trial ended: record its run id on the trial."""
        self._send_values()
        number = trial.number
        while self._read(0.0):  # every reply that has come
            pass
        if number not in self._run_ids and self._ready and self._patient:
            deadline = time.monotonic() + self.run_id_wait
            while number not in self._run_ids and self._read(deadline - time.monotonic()):
                pass
            self._patient = number in self._run_ids
        run_id = self._run_ids.pop(number, None)
        if len(self._run_ids) > 100:  # replies that came after their trial ended
            self._run_ids.clear()
        if run_id:
            trial.set_user_attr(RUN_ID_ATTR, run_id)

    def trial_finished(self, trial: optuna.trial.FrozenTrial) -> None:
        self._send(("finish", trial))

    def close(self) -> None:
        self.connection.close()

    # -- the pipe ------------------------------------------------------------------------------

    def _send_values(self) -> None:
        for number, values in self._unsent.items():
            if values:
                self._send(("metrics", number, values))
        self._unsent.clear()
        self._next_send = time.monotonic() + self.send_interval

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._broken:
            return
        try:
            self.connection.send(message)
        except OSError as error:  # the mirror died: the closing sync or sync-mlflow fills in
            self._broken = True
            logger.warning("the MLflow mirror process is gone (%s); trials go on", error)

    def _read(self, timeout: float) -> bool:
        """Take one reply if one comes within `timeout` s; False if none did."""
        if self._broken:
            return False
        try:
            if not self.connection.poll(max(0.0, timeout)):
                return False
            message = self.connection.recv()
        except (EOFError, OSError):
            self._broken = True
            return False
        if message[0] == "ready":
            self._ready = True
        elif message[0] == "run_id":
            self._run_ids[message[1]] = message[2]
        elif message[0] == "barrier":
            self._barrier = message[1]
        return True
