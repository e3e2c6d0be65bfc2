"""How `hpo run` and its workers stop: on Ctrl-C, on SIGTERM, and when their parent dies.

SIGTERM is what `timeout`, systemd, `docker stop` and Kubernetes send, so it stops a run the
way Ctrl-C does: the running trial is marked failed (it does not count, and the next run
starts it afresh), and the command exits with 128 + the signal's number (130 for SIGINT, 143
for SIGTERM), as a shell reports a command the signal ended.

A worker process watches a pipe whose other end only its `hpo run` holds. When that end
closes, however `hpo run` ended (kill -9 included), the worker stops itself as on SIGTERM,
instead of training on as an orphan.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from types import FrameType

LIFELINE_ENV = "HPO_LIFELINE_FD"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; raised where the program was, like Ctrl-C's KeyboardInterrupt,
    so that every `except KeyboardInterrupt` (mark the trial failed, stop) applies."""

    def __init__(self, signum: int, *, parent_gone: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.parent_gone = parent_gone


def signal_name(stop: BaseException) -> str:
    """SIGINT or SIGTERM: what a KeyboardInterrupt stands for."""
    return signal.Signals(getattr(stop, "signum", signal.SIGINT)).name


def exit_status(stop: BaseException) -> int:
    return 128 + int(getattr(stop, "signum", signal.SIGINT))


_parent_gone = threading.Event()


def _stop_once(signum: int, frame: FrameType | None) -> None:
    """The first stop signal stops the run; later ones are ignored, so that nothing
    interrupts the write that marks the running trial failed."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise Interrupted(signum, parent_gone=_parent_gone.is_set())


def stop_on_signals() -> None:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, _stop_once)


class Lifeline:
    """In `hpo run`: a pipe whose read end goes to each worker (`child_env`, `child_fd`)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()  # neither is inherited unless passed on purpose

    @property
    def child_fd(self) -> int:
        return self._read

    def child_env(self) -> dict[str, str]:
        return {LIFELINE_ENV: str(self._read)}

    def release_child_end(self) -> None:
        """After the workers have started: only they hold the read end now."""
        if self._read >= 0:
            os.close(self._read)
            self._read = -1

    def close(self) -> None:
        self.release_child_end()
        if self._write >= 0:
            os.close(self._write)
            self._write = -1


def watch_parent(environ: Mapping[str, str] | None = None) -> bool:
    """In a worker: stop as on SIGTERM when the `hpo run` that started it ends. False when
    this process was not started with a lifeline."""
    environ = os.environ if environ is None else environ
    text = environ.get(LIFELINE_ENV)
    if not text:
        return False
    fd = int(text)

    def wait_for_the_end() -> None:
        while True:
            try:
                if os.read(fd, 1) == b"":
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        _parent_gone.set()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_for_the_end, name="hpo-lifeline", daemon=True).start()
    return True
