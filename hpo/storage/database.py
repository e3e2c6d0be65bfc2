"""Storage URLs become Optuna storages here, and only here.

SQLite runs in WAL mode with `synchronous=NORMAL` and a busy timeout: a commit then costs a
fraction of a millisecond instead of an fsync, and a crash of the process loses nothing that
was committed (only a power failure can lose the last transactions, and the database stays
consistent). PostgreSQL connections are health-checked before use and pooled modestly: a
worker needs one connection for trials and one for the heartbeat thread.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from hpo.errors import ConfigError

logger = logging.getLogger(__name__)

STORAGE_ENV = "HPO_STORAGE"
DEFAULT_STORAGE = "sqlite:///hpo.db"
# A worker's heartbeat every 5 s; a trial silent for 20 s (four missed beats) is stale.
HEARTBEAT_INTERVAL_S = 5
GRACE_PERIOD_S = 20
PATIENCE_S = 300
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


class StorageUnavailable(ConfigError):
    """The storage URL is well-formed but the database cannot be reached or opened."""


@dataclass(frozen=True)
class StorageSettings:
    """Where studies live and how liveness is checked."""

    url: str
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S
    grace_period: int = GRACE_PERIOD_S
    patience: int = PATIENCE_S  # how long a worker waits for a storage that went away

    @property
    def backend(self) -> str:
        return make_url(self.url).get_backend_name()

    @property
    def sqlite_path(self) -> Path | None:
        """The database file for a file-backed SQLite URL, else None."""
        url = make_url(self.url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return Path(url.database).resolve()

    def redacted(self) -> str:
        """The URL without its password, fit for logs, tags and messages."""
        return redact(self.url)


def redact(url: str) -> str:
    """`url` with any password replaced by ***: database URLs, HTTP URLs, and text that is
    neither (a mistyped URL is quoted in its error message, and must not show a password)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        pass
    return _CREDENTIALS.sub(r"\1***@", url)


# "scheme://user:password@" or "scheme:/user:password@" (a slash missing): keep the user.
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:/*[^/:@\s]*:)[^@\s]*@")


def resolve_storage(flag: str | None, environ: Mapping[str, str] | None = None) -> StorageSettings:
    """`--storage`, else `$HPO_STORAGE`, else `sqlite:///hpo.db` in the working directory.

    `HPO_HEARTBEAT_INTERVAL` and `HPO_GRACE_PERIOD` (seconds) tune stale-trial detection;
    `HPO_STORAGE_PATIENCE` (seconds) is how long a worker waits for a database that went away.
    """
    environ = os.environ if environ is None else environ
    url = flag or environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    try:
        parsed: URL = make_url(url)
    except ValueError:  # sqlalchemy's int() of the port
        raise ConfigError(
            f"{redact(url)!r}: the port is not a number; use e.g. "
            "postgresql+psycopg://user@host:5432/dbname",
            key="storage",
        ) from None
    except ArgumentError:
        raise ConfigError(
            f"{redact(url)!r} is not a database URL; use e.g. sqlite:///hpo.db or "
            "postgresql+psycopg://user@host/dbname",
            key="storage",
        ) from None
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise ConfigError(
            f"{redact(url)}: the backend must be one of {list(SUPPORTED_BACKENDS)}, "
            f"but got {parsed.get_backend_name()!r}",
            key="storage",
        )
    interval = _positive_seconds(environ, "HPO_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL_S, 3600)
    grace = _positive_seconds(environ, "HPO_GRACE_PERIOD", GRACE_PERIOD_S, 86400)
    patience = _positive_seconds(environ, "HPO_STORAGE_PATIENCE", PATIENCE_S, 86400)
    if grace <= interval:
        raise ConfigError(
            f"HPO_GRACE_PERIOD ({grace} s) must exceed HPO_HEARTBEAT_INTERVAL ({interval} s), "
            "or live trials would be declared stale",
            key="HPO_GRACE_PERIOD",
        )
    settings = StorageSettings(
        url=url, heartbeat_interval=interval, grace_period=grace, patience=patience
    )
    if settings.sqlite_path is not None and not settings.sqlite_path.parent.is_dir():
        raise StorageUnavailable(
            f"{settings.redacted()}: the directory {settings.sqlite_path.parent} does not exist",
            key="storage",
        )
    return settings


def _positive_seconds(environ: Mapping[str, str], name: str, default: int, most: int) -> int:
    text = environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise ConfigError(
            f"must be a whole number of seconds from 1 to {most}, but got {text!r}", key=name
        )
    return value


def engine_kwargs(settings: StorageSettings) -> dict[str, Any]:
    if settings.backend == "sqlite":
        return {"connect_args": {"timeout": 30}}
    return {
        "pool_pre_ping": True,
        "pool_size": 2,
        "max_overflow": 2,
        "pool_recycle": 1800,
        "connect_args": {"connect_timeout": 5},
    }


def _tune_sqlite(engine: sqlalchemy.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    engine.dispose()  # connections opened while Optuna created its tables lack the pragmas


def open_storage(
    settings: StorageSettings, *, heartbeat: bool = True, create: bool = True
) -> optuna.storages.RDBStorage:
    """The Optuna storage for `settings`, its schema created if the database is new.

    `create=False`, for commands that only read: a database that does not exist, or holds
    no studies, is an error instead of being created (a mistyped --storage creates nothing).

    With `heartbeat`, running trials send a heartbeat and a trial whose worker died is failed
    and retried once, with the same parameters (and, through its copied user attributes, the
    same seed).
    """
    if not create:
        _require_studies(settings)
    kwargs: dict[str, Any] = {}
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        kwargs = {
            "heartbeat_interval": settings.heartbeat_interval,
            "grace_period": settings.grace_period,
            "heartbeat_stale_trial_callback": retry,
        }
    try:
        with warnings.catch_warnings():
            # Heartbeats and the retry callback are marked experimental since Optuna 2.8.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                settings.url, engine_kwargs=engine_kwargs(settings), **kwargs
            )
    except (OperationalError, NoSuchModuleError) as error:
        raise StorageUnavailable(
            f"cannot open {settings.redacted()}: {first_line(error)}", key="storage"
        ) from None
    if settings.backend == "sqlite":
        _tune_sqlite(storage.engine)
    return storage


def _require_studies(settings: StorageSettings) -> None:
    path = settings.sqlite_path
    if path is not None and not path.is_file():
        raise StorageUnavailable(
            f"{settings.redacted()}: there is no database at {path}; this command reads "
            "studies and creates no database (check --storage, or $HPO_STORAGE)",
            key="storage",
        )
    kwargs = {k: v for k, v in engine_kwargs(settings).items() if k in ("connect_args",)}
    engine = sqlalchemy.create_engine(settings.url, poolclass=sqlalchemy.pool.NullPool, **kwargs)
    try:
        tables = sqlalchemy.inspect(engine).get_table_names()
    except (OperationalError, NoSuchModuleError) as error:
        raise StorageUnavailable(
            f"cannot open {settings.redacted()}: {first_line(error)}", key="storage"
        ) from None
    finally:
        engine.dispose()
    if "studies" not in tables:
        raise StorageUnavailable(
            f"{settings.redacted()} holds no studies (no Optuna tables); this command reads "
            "studies and creates none (check --storage, or $HPO_STORAGE)",
            key="storage",
        )


def first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
