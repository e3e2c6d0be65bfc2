"""A lock shared by every process that works on one storage, on one machine or many.

Two things need it. Creating Optuna's schema and a study is not safe when several workers
start together on an empty database ("table already exists", unique-key violations). And an
exact trial budget needs "count the trials, then create one" to happen atomically.

PostgreSQL: a session-level advisory lock, held on a connection of its own (advisory locks
block nothing but each other, so Optuna's own connections keep working), released by the
server if the holder dies. SQLite: `flock` on a file of its own per lock name, in a folder
beside the database (`<db>.hpo-locks/`), released by the kernel if the holder dies. An in-memory
SQLite database lives in one process: a thread lock per name. Locks of different names never
block each other, so a slow holder of one (a tracking server that does not answer, while the
MLflow parent run is looked up) never holds up the claims of trials.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from pathlib import Path
from types import TracebackType

import sqlalchemy

from hpo.storage.database import StorageSettings, StorageUnavailable, engine_kwargs, first_line

_THREAD_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_POLL_S = 0.02
_RECONNECT_S = 0.5


class LockTimeout(TimeoutError):
    pass


def _key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock from a lock name."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class StorageLock:
    """`with StorageLock(settings, "claim:my-study"):` holds the named lock for this storage.

    Reentrant use is not supported; `timeout` bounds the wait (a holder is expected to keep
    it for milliseconds). A lock taken once gives its connection back on release; one taken
    at every claim keeps it (`reuse=True`) until `close()`.
    """

    def __init__(
        self,
        settings: StorageSettings,
        name: str,
        *,
        timeout: float = 120.0,
        reuse: bool = False,
    ):
        self.settings, self.name, self.timeout, self.reuse = settings, name, timeout, reuse
        self._engine: sqlalchemy.Engine | None = None
        self._connection: sqlalchemy.Connection | None = None
        self._file: int | None = None
        self._connected_once = False

    def __enter__(self) -> StorageLock:
        deadline = time.monotonic() + self.timeout
        while not self._try_acquire():
            if time.monotonic() > deadline:
                raise LockTimeout(
                    f"waited {self.timeout:.0f} s for the lock {self.name!r} on "
                    f"{self.settings.redacted()}; is another worker hung?"
                )
            time.sleep(_POLL_S)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()
        if not self.reuse:
            self.close()

    @property
    def connection(self) -> sqlalchemy.Connection | None:
        """The PostgreSQL connection holding the lock (autocommit), for reads under it."""
        return self._connection

    def _try_acquire(self) -> bool:
        if self.settings.backend == "postgresql":
            return self._try_postgres()
        path = self.settings.sqlite_path
        if path is None:
            key = (self.settings.url, self.name)
            return _THREAD_LOCKS.setdefault(key, threading.Lock()).acquire(blocking=False)
        folder = path.with_name(path.name + ".hpo-locks")
        return self._try_file(folder, f"{_key(self.name) & 0xFFFFFFFFFFFFFFFF:016x}")

    def _try_postgres(self) -> bool:
        if self._engine is None:
            # Autocommit: a session-level advisory lock needs no transaction around it.
            kwargs = engine_kwargs(self.settings) | {
                "pool_size": 1,
                "max_overflow": 0,
                "isolation_level": "AUTOCOMMIT",
            }
            self._engine = sqlalchemy.create_engine(self.settings.url, **kwargs)
        statement = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
                self._connected_once = True
            acquired = self._connection.execute(statement, {"key": _key(self.name)}).scalar()
            self._connection.commit()
        except sqlalchemy.exc.DBAPIError as error:
            if not self._connected_once:  # never reached: a wrong URL or a server that is down
                raise StorageUnavailable(
                    f"cannot open {self.settings.redacted()}: {first_line(error)}",
                    key="storage",
                ) from None
            # A restarted server: reconnect on the next try, until the timeout, without
            # hammering a server that is still down.
            if self._connection is not None:
                self._connection.invalidate()
                self._connection = None
            time.sleep(_RECONNECT_S)
            return False
        return bool(acquired)

    def _try_file(self, folder: Path, name: str) -> bool:
        if self._file is None:
            try:
                folder.mkdir(exist_ok=True)
                self._file = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise StorageUnavailable(
                    f"cannot create the lock file {folder / name} beside the database "
                    f"({error.strerror}); the database's directory must be writable",
                    key="storage",
                ) from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _release(self) -> None:
        if self.settings.backend == "postgresql":
            if self._connection is not None:
                statement = sqlalchemy.text("SELECT pg_advisory_unlock(:key)")
                try:
                    self._connection.execute(statement, {"key": _key(self.name)})
                    self._connection.commit()
                except (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.PendingRollbackError):
                    # The connection died (now, or under a query made while the lock was
                    # held), and with it the lock; start afresh next time, and let the error
                    # that killed it be the one the caller sees.
                    self._connection.invalidate()
                    self._connection = None
        elif self.settings.sqlite_path is None:
            _THREAD_LOCKS[(self.settings.url, self.name)].release()
        elif self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def close(self) -> None:
        """Give back the connection or file the lock keeps between uses."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._file is not None:
            os.close(self._file)
            self._file = None
