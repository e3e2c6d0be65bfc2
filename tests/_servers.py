"""Real servers as subprocesses for the tests: a free port, and a process run until it answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    command: list[str], health_url: str, log: Path, *, timeout: float = 90.0
) -> subprocess.Popen:
    """Start `command` in its own process group, logging to `log`; return once `health_url`
    answers 200. A server that exits or stays silent is stopped and reported with its log."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.3)
    stop_server(process)
    raise RuntimeError(f"{health_url} did not answer in {timeout} s: {log.read_text()[-2000:]}")


def stop_server(process: subprocess.Popen | None) -> None:
    """SIGTERM to the server's whole process group (uvicorn and its workers), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def serving(command: list[str], health_url: str, log: Path, **kwargs: float) -> Iterator[None]:
    """Run a server for the duration of the block."""
    process = start_server(command, health_url, log, **kwargs)
    try:
        yield
    finally:
        stop_server(process)
