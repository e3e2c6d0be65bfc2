"""Riding out a database that restarts or is briefly unreachable, instead of dying with it.

A worker that has reached its database once treats a lost connection as transient: the call
is repeated with exponential backoff (0.5 s, 1 s, 2 s, ... up to 30 s between tries) for up to
five minutes, with one warning when the outage starts and one line when it ends. Errors that
a retry cannot mend (a constraint violated, a trial already finished, a bad query) pass
through at once, and so does an unreachable database at start-up: a wrong URL must fail fast.

Optuna turns every SQLAlchemy error inside a storage call into `StorageInternalError`; the
SQLAlchemy error it wraps (`__cause__`) tells whether the connection was at fault.
"""

from __future__ import annotations

import abc
import errno
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import optuna
from optuna.storages import BaseStorage
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from hpo.storage.optuna_adapter.internals import PRIVATE_STORAGE_METHODS, WrappedHeartbeat

logger = logging.getLogger(__name__)

PATIENCE_S = 300.0  # the default of HPO_STORAGE_PATIENCE
FIRST_DELAY_S = 0.5
LONGEST_DELAY_S = 5.0  # a database that is back is used again within 5 s
_T = TypeVar("_T")


class StorageUnreachable(Exception):
    """The storage stayed unreachable for the whole patience: the run ends here, and its
    trials are safe in the storage (a running one is failed and retried by the next run)."""

    def __init__(self, what: str, seconds: float, error: BaseException) -> None:
        self.what, self.seconds = what, seconds
        super().__init__(
            f"{what} was unreachable for {seconds:.0f} s ({describe_error(error)}); gave up "
            "(HPO_STORAGE_PATIENCE sets how long to wait). The study is safe in it: once it is "
            "back, run the same command to resume"
        )


class Outages:
    """What this process knows of storage outages, for the sweep for dead workers' trials.

    During an outage every worker misses its heartbeats, so right after one, every running
    trial looks stale. A sweep therefore judges nothing until the storage has been back for a
    whole grace period, which gives live workers time to beat again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down = False
        self._back_at = -math.inf

    @property
    def down(self) -> bool:
        return self._down

    def unreachable(self) -> None:
        with self._lock:
            self._down = True

    def reachable(self) -> None:
        with self._lock:
            if self._down:
                self._down = False
                self._back_at = time.monotonic()

    def settled(self, grace_period: float) -> bool:
        """Whether the storage has been reachable for `grace_period` s (or never failed)."""
        return not self._down and time.monotonic() - self._back_at >= grace_period


OUTAGES = Outages()


# SQLSTATE classes a retry can mend: connection exceptions (08), transaction rollbacks such
# as deadlocks and serialization failures (40), the server shutting down or starting (57P).
_TRANSIENT_SQLSTATES = ("08", "40", "57P")


def is_transient(error: BaseException) -> bool:
    """True for a lost or refused connection, a server going down or coming up, a deadlock,
    or SQLite's "database is locked"; False for everything a retry would only repeat."""
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, InterfaceError | DisconnectionError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if not isinstance(error, OperationalError):
        return False
    original = error.orig
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(_TRANSIENT_SQLSTATES)
    if isinstance(original, sqlite3.OperationalError):
        return "locked" in str(original) or "busy" in str(original)
    return True  # psycopg gives no SQLSTATE when the connection itself failed


def is_disk_full(error: BaseException) -> bool:
    """True when the storage (or a file being written) ran out of space: the user's to fix."""
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    if not isinstance(error, DBAPIError):
        return False
    original = error.orig
    if getattr(original, "sqlstate", None) == "53100":  # PostgreSQL's disk_full
        return True
    return isinstance(original, sqlite3.OperationalError) and "disk is full" in str(original)


class Backoff:
    """The waits between tries of one call; `wait(error)` re-raises once patience runs out."""

    def __init__(self, *, patience: float = PATIENCE_S, what: str = "the database") -> None:
        self.patience, self.what = patience, what
        self.started = time.monotonic()
        self.delay = FIRST_DELAY_S
        self.tries = 0

    def wait(self, error: BaseException) -> None:
        OUTAGES.unreachable()
        elapsed = time.monotonic() - self.started
        if elapsed + self.delay > self.patience:
            raise StorageUnreachable(self.what, elapsed, error) from error
        if self.tries == 0:
            logger.warning(
                "%s is unreachable (%s); retrying for up to %.0f s",
                self.what,
                describe_error(error),
                self.patience,
            )
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, LONGEST_DELAY_S)
        self.tries += 1

    def recovered(self) -> None:
        OUTAGES.reachable()
        if self.tries:
            elapsed = time.monotonic() - self.started
            logger.warning("%s is reachable again after %.1f s", self.what, elapsed)


def call_with_retry(
    function: Callable[..., _T],
    *args: Any,
    what: str = "the database",
    patience: float = PATIENCE_S,
    **kwargs: Any,
) -> _T:
    """`function(*args, **kwargs)`, repeated with backoff while its errors are transient, for
    up to `patience` seconds (then `StorageUnreachable`)."""
    backoff = Backoff(what=what, patience=patience)
    while True:
        try:
            result = function(*args, **kwargs)
        except Exception as error:
            if not is_transient(error):
                raise
            backoff.wait(error)
            continue
        backoff.recovered()
        return result


def describe_error(error: BaseException) -> str:
    """The first line of the error underneath (Optuna's wrapper says only "during the commit")."""
    cause = error.__cause__ if error.__cause__ is not None else error
    text = str(getattr(cause, "orig", None) or cause).strip()
    return text.splitlines()[0][:200] if text else type(cause).__name__


_RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "record_heartbeat",
    *PRIVATE_STORAGE_METHODS,
    # hpo.storage.optuna_adapter.batched: a running trial's parameters and seed, at once
    "flush_trial",
)
_PASSED_THROUGH = (
    "remove_session",
    "get_heartbeat_interval",
    "get_heartbeat_stale_trial_callback",
    "get_failed_trial_callback",
)


# Every storage method a wrapper of a storage forwards (see also optuna_adapter.batched).
STORAGE_METHODS = _RETRIED + _PASSED_THROUGH


def _delegate(name: str, *, retried: bool) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        target = getattr(self.inner, name)
        if not retried or self._suspended():
            return target(*args, **kwargs)
        return call_with_retry(target, *args, what=self.what, patience=self.patience, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def _delegating(cls: type[_T]) -> type[_T]:
    for name in _RETRIED:
        setattr(cls, name, _delegate(name, retried=True))
    for name in _PASSED_THROUGH:
        setattr(cls, name, _delegate(name, retried=False))
    abc.update_abstractmethods(cls)
    return cls


@_delegating
class RetryingStorage(BaseStorage, WrappedHeartbeat):
    """An Optuna storage that repeats a call whose connection failed, until it succeeds.

    Wraps the storage Optuna itself would use (its cache around an `RDBStorage`), so that
    `study.ask`, `trial.suggest_*`, `study.tell` and the heartbeat survive a database restart.
    Inside `suspended()` the current thread's calls are not retried: the runner then retries
    its whole claim, lock included, because a lock held on a lost connection is lost too.
    """

    # BaseStorage's abstract methods, delegated to `inner` by @_delegating (where mypy cannot
    # see them): declared, so that the class is concrete to it too.
    create_new_study: Callable[..., Any]
    create_new_trial: Callable[..., Any]
    delete_study: Callable[..., Any]
    get_all_studies: Callable[..., Any]
    get_all_trials: Callable[..., Any]
    get_heartbeat_interval: Callable[..., Any]
    get_heartbeat_stale_trial_callback: Callable[..., Any]
    get_study_directions: Callable[..., Any]
    get_study_id_from_name: Callable[..., Any]
    get_study_name_from_id: Callable[..., Any]
    get_study_system_attrs: Callable[..., Any]
    get_study_user_attrs: Callable[..., Any]
    get_trial: Callable[..., Any]
    record_heartbeat: Callable[..., Any]
    set_study_system_attr: Callable[..., Any]
    set_study_user_attr: Callable[..., Any]
    set_trial_intermediate_value: Callable[..., Any]
    set_trial_param: Callable[..., Any]
    set_trial_system_attr: Callable[..., Any]
    set_trial_user_attr: Callable[..., Any]

    def __init__(
        self, inner: BaseStorage, *, what: str = "the database", patience: float = PATIENCE_S
    ) -> None:
        self.inner, self.what, self.patience = inner, what, patience
        self._local = threading.local()

    def _suspended(self) -> bool:
        return getattr(self._local, "suspended", False)

    @contextmanager
    def suspended(self) -> Iterator[None]:
        self._local.suspended = True
        try:
            yield
        finally:
            self._local.suspended = False

    def set_trial_state_values(
        self, trial_id: int, state: optuna.trial.TrialState, values: Any = None
    ) -> bool:
        if self._suspended():
            return self.inner.set_trial_state_values(trial_id, state, values)
        tries = 0

        def finish() -> bool:
            nonlocal tries
            tries += 1
            try:
                return self.inner.set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if tries == 1:
                    raise
                return True  # the try that lost its connection had committed: it is finished

        return call_with_retry(finish, what=self.what, patience=self.patience)

    def __repr__(self) -> str:
        return f"RetryingStorage({self.inner!r})"
