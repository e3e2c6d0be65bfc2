"""The seam between hpo and Optuna's internals: the one place that writes Optuna's tables.

A worker's trials go through Optuna's public storage API, but the plain `RDBStorage` commits
every `suggest_*`, `set_user_attr` and `report` on its own (about 25 round trips per trial).
The adapter batches them (`batched`), writes the rows itself (`rows`), counts and sweeps
trials with one query each (`queries`), and reads what Optuna keeps private (`internals`).
Everything it relies on is Optuna 5.1's, pinned by `tests/test_optuna_adapter.py`, which runs
the same studies with the adapter on and off and compares what is stored.

`HPO_OPTUNA_ADAPTER=off` (or `hpo run --no-optuna-adapter`) turns it off: trials are then
written by Optuna's own storage, only through its public API, slower but independent of its
internals. With an Optuna outside the tested range the adapter turns itself off, with one
warning, instead of writing into tables it does not know.
"""

from __future__ import annotations

import logging
import os

import optuna

from hpo.errors import ConfigError

logger = logging.getLogger(__name__)

ADAPTER_ENV = "HPO_OPTUNA_ADAPTER"
TESTED_OPTUNA = ((5, 1), (5, 2))  # from (inclusive) .. to (exclusive), as pyproject pins it

_ON, _OFF = ("on", "1", "true", "yes", ""), ("off", "0", "false", "no")
_warned: set[str] = set()


def optuna_version() -> tuple[int, int]:
    major, minor = optuna.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def adapter_active() -> bool:
    """Whether this process writes trials through the adapter (the default), or only through
    Optuna's public storage API.

    Read at each call (cheap), so that a flag setting the environment variable before a study
    is joined takes effect, and workers inherit it.
    """
    setting = os.environ.get(ADAPTER_ENV, "on").strip().lower()
    if setting in _OFF:
        return False
    if setting not in _ON:
        raise ConfigError(
            f"{os.environ[ADAPTER_ENV]!r} is neither on nor off (the environment variable turns "
            "hpo's Optuna storage adapter on or off)",
            key=ADAPTER_ENV,
        )
    low, high = TESTED_OPTUNA
    if not low <= optuna_version() < high:
        _warn_once(
            "version",
            f"Optuna {optuna.__version__} is outside the range hpo's storage adapter is tested "
            f"with ({_dotted(low)} to before {_dotted(high)}): trials are written through "
            f"Optuna's public storage only, which is slower ({ADAPTER_ENV}=off silences this)",
        )
        return False
    return True


def _dotted(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)
