"""Every name hpo takes from Optuna's private modules, and every private attribute it reads.

Optuna 5.1's internals, as `tests/test_optuna_adapter.py` pins them: the cache Optuna puts
around an RDB storage (`_CachedStorage`, its lock, its per-study records), the SQLAlchemy
models of its tables (their stored forms of values), the heartbeat base class, the stale-trial
query, and the trial id a live trial carries. Nothing else in hpo imports `optuna.*._*` or
reads an Optuna object's private attribute (`tests/test_layers.py` checks).
"""

from __future__ import annotations

import copy
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial

from hpo.storage.optuna_adapter import adapter_active

__all__ = [
    "PRIVATE_STORAGE_METHODS",
    "BaseHeartbeat",
    "CachedStorage",
    "WrappedHeartbeat",
    "backend_of",
    "cache_created_trial",
    "initial_user_attrs",
    "stale_trial_ids",
    "stored_intermediate_value",
    "stored_value",
    "table_columns",
    "trial_id_of",
]

# The heartbeat base class: Optuna sweeps stale trials (`fail_stale_trials`) and starts
# heartbeats only for storages that are instances of it, so hpo's storage wrappers are.
BaseHeartbeat = BaseHeartbeat

# Storage methods Optuna calls on a storage although they are private (its stale-trial sweep
# does): wrappers of a storage forward them too.
PRIVATE_STORAGE_METHODS = ("_get_stale_trial_ids",)


class WrappedHeartbeat(BaseHeartbeat):
    """Optuna's heartbeat interface for a storage that wraps another (`inner`): the private
    stale-trial query that Optuna's own sweep calls is forwarded too (a wrapper may forward
    it its own way, as hpo's retries do)."""

    inner: Any

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.inner._get_stale_trial_ids(study_id)


CachedStorage = _CachedStorage  # what `optuna.load_study` itself puts around an RDBStorage


def backend_of(cached: _CachedStorage) -> optuna.storages.RDBStorage:
    """The RDB storage inside Optuna's cache."""
    return cached._backend


def cache_created_trial(cached: _CachedStorage, study_id: int, trial: FrozenTrial) -> None:
    """Record a trial created past the cache as the cache records those it creates itself."""
    with cached._lock:
        cached._studies.setdefault(study_id, _StudyInfo())
        cached._add_trials_to_cache(study_id, [copy.deepcopy(trial)])


def stale_trial_ids(storage: BaseStorage, study_id: int) -> list[int]:
    """RUNNING trials whose last heartbeat is older than the storage's grace period."""
    return list(storage._get_stale_trial_ids(study_id))  # type: ignore[attr-defined]


def trial_id_of(trial: optuna.trial.BaseTrial | FrozenTrial) -> int:
    """The storage's id of a live or frozen trial (Optuna keeps it private)."""
    return int(trial._trial_id)  # type: ignore[union-attr]


def initial_user_attrs(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """The user attributes a live trial started with, without a query.

    A live `optuna.Trial` holds the trial as it was when claimed (`_cached_frozen_trial`);
    anything else (a FixedTrial), or any trial with the adapter off, is asked the public way.
    """
    cached = getattr(trial, "_cached_frozen_trial", None) if adapter_active() else None
    return cached.user_attrs if cached is not None else trial.user_attrs


def stored_intermediate_value(value: float) -> tuple[float | None, Any]:
    """An intermediate value as Optuna stores it: (value, its type tag for inf and NaN)."""
    return models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)


def stored_value(value: float) -> tuple[float | None, Any]:
    """An objective value as Optuna stores it: (value, its type tag for infinities)."""
    return models.TrialValueModel.value_to_stored_repr(value)


def table_columns(table: str) -> Any:
    """The SQLAlchemy columns of one of Optuna's tables, with their bind processors."""
    return models.BaseModel.metadata.tables[table].columns
