"""A running trial's writes, gathered into two transactions instead of one per call.

Through Optuna's RDB storage, every `suggest_*`, `set_user_attr` and `report` is a committed
transaction of its own, and `ask` and `tell` read the trial back three times: about 25 SQL
round trips per trial, 45 ms on PostgreSQL here against a 250 ms book-6.5 trial. This layer
keeps the trials this worker runs in memory and writes each in two transactions:

- when training starts (`FlushAtStart`, an observer of the objective): the sampled
  parameters, the seed and what the sampler noted in system attributes, so that a trial
  whose worker dies is retried with all of them, exactly as before;
- when it ends (`tell`): its history and other attributes, reported values, state and value.

A new trial is created in two statements where Optuna takes four, under the same lock of the
study's row. Reads of a running trial are answered from memory, and while a trial is sampled
the study's trials are read once for all of the sampler's reads. System attributes set once
training runs (a pruner's rung values, read by other workers) are written at once. The rows
are those Optuna writes, in its own tables and stored forms. The queue of a flush is kept
until it commits, so a flush that lost its connection is repeated whole: attributes and
intermediate values are upserts, and a repeat whose parameters were committed by the lost
try rolls back as a whole on their unique key.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
    json_to_distribution,
)
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from hpo.storage.optuna_adapter.internals import (
    BaseHeartbeat,
    CachedStorage,
    backend_of,
    cache_created_trial,
    stored_intermediate_value,
    stored_value,
    trial_id_of,
)
from hpo.storage.optuna_adapter.rows import RowWriter, Transaction
from hpo.storage.retry import STORAGE_METHODS
from trainer import EpochMetrics

logger = logging.getLogger(__name__)


def _intermediate_row(trial_id: int, step: int, value: float) -> dict[str, Any]:
    stored, kind = stored_intermediate_value(value)
    return {
        "trial_id": trial_id,
        "step": step,
        "intermediate_value": stored,
        "intermediate_value_type": kind,
    }


def _value_row(trial_id: int, objective: int, value: float) -> dict[str, Any]:
    stored, kind = stored_value(value)
    return {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}


@dataclass
class _Pending:
    """What a running trial has been given since its last flush."""

    params: dict[str, tuple[float, BaseDistribution]] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)  # only before the first flush
    intermediate_values: dict[int, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.params or self.user_attrs or self.system_attrs or self.intermediate_values
        )


class BatchedTrialStorage(BaseStorage, BaseHeartbeat):
    """Optuna's cached RDB storage, with this worker's running trials written in batches."""

    # BaseStorage's abstract methods not defined here, forwarded to `inner` (set below the
    # class, where mypy cannot see them): declared, so that the class is concrete to it too.
    _get_stale_trial_ids: Callable[..., Any]
    create_new_study: Callable[..., Any]
    delete_study: Callable[..., Any]
    get_all_studies: Callable[..., Any]
    get_heartbeat_interval: Callable[..., Any]
    get_heartbeat_stale_trial_callback: Callable[..., Any]
    get_study_directions: Callable[..., Any]
    get_study_id_from_name: Callable[..., Any]
    get_study_name_from_id: Callable[..., Any]
    get_study_system_attrs: Callable[..., Any]
    get_study_user_attrs: Callable[..., Any]
    record_heartbeat: Callable[..., Any]
    set_study_system_attr: Callable[..., Any]
    set_study_user_attr: Callable[..., Any]

    def __init__(self, inner: CachedStorage) -> None:
        self.inner = inner
        self.backend: optuna.storages.RDBStorage = backend_of(inner)
        self.rows = RowWriter(self.backend.engine)
        # Batching writes Optuna's tables itself; only the dialects hpo supports do upserts.
        self.enabled = self.backend.engine.dialect.name in ("postgresql", "sqlite")
        self._live: dict[int, FrozenTrial] = {}  # this worker's running trials, as they are
        self._pending: dict[int, _Pending] = {}
        self._ended: dict[int, FrozenTrial] = {}  # finished here, until tell reads it back
        self._distributions: dict[str, BaseDistribution] = {}  # one study per worker
        self._flushed: set[int] = set()  # live trials whose training has started
        self._lock = threading.Lock()
        self._thread = threading.local()

    # -- the running trial: created, read, written ---------------------------------------

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if not self.enabled or template_trial is not None:  # templates: retries, enqueues
            return self.inner.create_new_trial(study_id, template_trial)
        trial = self._insert_trial(study_id)  # `ask`
        self._adopt(trial_id_of(trial), trial)  # first: a stop from here on finds it live
        cache_created_trial(self.inner, study_id, trial)
        return trial_id_of(trial)

    def _insert_trial(self, study_id: int) -> FrozenTrial:
        """A new running trial in two statements where Optuna takes four.

        As in Optuna, the study's row is locked first, so that trials are created one at a
        time and a trial's number is the count of the study's trials before it.
        """
        started = datetime.now()
        row = {
            "study_id": study_id,
            "state": self.rows.stored("trials", "state", TrialState.RUNNING),
            "started": self.rows.stored("trials", "datetime_start", started),
        }
        with self.rows.transaction() as transaction:
            study = transaction.execute(
                "SELECT study_id FROM studies WHERE study_id = :study_id" + self.rows.for_update,
                row,
            ).fetchone()
            if study is None:
                raise KeyError(f"no study with id {study_id}")
            trial_id, number = transaction.execute(
                "INSERT INTO trials (number, study_id, state, datetime_start) VALUES ("
                "(SELECT COUNT(*) FROM trials WHERE study_id = :study_id), :study_id, :state, "
                ":started) RETURNING trial_id, number",
                row,
            ).fetchone()
        return FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=started,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=trial_id,
        )

    def _adopt(self, trial_id: int, trial: FrozenTrial) -> None:
        with self._lock:
            self._live[trial_id] = trial
            self._pending[trial_id] = _Pending()
            self._ended.pop(trial_id, None)
            self._flushed.discard(trial_id)
        self._thread.sampling = _Sampling()

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            trial = self._live.get(trial_id) or self._ended.pop(trial_id, None)
            if trial is not None:
                return copy.deepcopy(trial)
        return self.inner.get_trial(trial_id)

    # Answered from `get_trial`, so that a live trial's buffered values are seen (GridSampler
    # reads back the system attributes it set while sampling).
    get_trial_param = BaseStorage.get_trial_param
    get_trial_params = BaseStorage.get_trial_params
    get_trial_user_attrs = BaseStorage.get_trial_user_attrs
    get_trial_system_attrs = BaseStorage.get_trial_system_attrs
    get_trial_number_from_id = BaseStorage.get_trial_number_from_id

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        with self._lock:
            trial = self._live.get(trial_id)
            if trial is not None:
                if param_name in trial.distributions:
                    raise RuntimeError(f"parameter {param_name!r} is already set")
                trial.distributions = {**trial.distributions, param_name: distribution}
                trial.params = {
                    **trial.params,
                    param_name: distribution.to_external_repr(param_value_internal),
                }
                self._pending[trial_id].params[param_name] = (param_value_internal, distribution)
                return
        self.inner.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            trial = self._live.get(trial_id)
            if trial is not None:
                trial.user_attrs[key] = value
                self._pending[trial_id].user_attrs[key] = value
                return
        self.inner.set_trial_user_attr(trial_id, key, value)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        with self._lock:
            trial = self._live.get(trial_id)
            if trial is not None:
                trial.intermediate_values[step] = intermediate_value
                self._pending[trial_id].intermediate_values[step] = intermediate_value
                return
        self.inner.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        # Once training has started, at once: other workers' pruners read rung values. Before
        # it (a sampler's notes), with the parameters, which no other worker reads earlier.
        with self._lock:
            trial = self._live.get(trial_id)
            if trial is not None and trial_id not in self._flushed:
                trial.system_attrs[key] = value
                self._pending[trial_id].system_attrs[key] = value
                return
        self.inner.set_trial_system_attr(trial_id, key, value)
        with self._lock:
            if trial_id in self._live:
                self._live[trial_id].system_attrs[key] = value

    # -- flushes --------------------------------------------------------------------------

    def flush_trial(self, trial_id: int) -> None:
        """Write what a running trial has been given so far, in one transaction."""
        self._end_sampling()
        with self._lock:
            pending = self._pending.get(trial_id)
            if not pending:
                if trial_id in self._live:
                    self._flushed.add(trial_id)
                return
        self._write(trial_id, pending)
        with self._lock:
            if self._pending.get(trial_id) is pending:
                self._pending[trial_id] = _Pending()
                self._flushed.add(trial_id)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        self._end_sampling()
        with self._lock:
            live = self._live.get(trial_id)
        if live is None or not state.is_finished():
            done = self.inner.set_trial_state_values(trial_id, state, values)
            if done and state == TrialState.RUNNING and self.enabled:  # a waiting trial popped
                self._adopt(trial_id, self.inner.get_trial(trial_id))
            return done
        try:
            self._write(trial_id, self._pending[trial_id], state=state, values=values)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._forget(trial_id)  # finished elsewhere (failed as stale): the storage knows
            raise
        with self._lock:
            live.state = state
            live.values = list(values) if values is not None else None
            live.datetime_complete = datetime.now()
            self._live.pop(trial_id, None)
            self._pending.pop(trial_id, None)
            self._flushed.discard(trial_id)
            self._ended = {trial_id: live}  # for tell's read back, then from the storage
        return True

    def live_trial_ids(self) -> list[int]:
        """This worker's trials that are running and not yet told."""
        with self._lock:
            return list(self._live)

    def _forget(self, trial_id: int) -> None:
        with self._lock:
            self._live.pop(trial_id, None)
            self._pending.pop(trial_id, None)
            self._flushed.discard(trial_id)

    def _write(
        self,
        trial_id: int,
        pending: _Pending,
        *,
        state: TrialState | None = None,
        values: Sequence[float] | None = None,
    ) -> None:
        """One transaction: a statement per table that has rows to write, then the commit.

        The rows are Optuna's own (its models' tables and their stored forms of values); the
        trial's row is locked first and must still be running, as Optuna's writes check.
        """
        attrs = "trial_id, key"
        try:
            with self.rows.transaction() as transaction:
                self._lock_running_trial(transaction, trial_id, state)
                self._write_params(transaction, trial_id, pending.params)
                transaction.insert("trial_user_attributes", [
                    {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                    for key, value in pending.user_attrs.items()
                ], upsert_on=attrs)  # fmt: skip
                transaction.insert("trial_system_attributes", [
                    {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                    for key, value in pending.system_attrs.items()
                ], upsert_on=attrs)  # fmt: skip
                transaction.insert("trial_intermediate_values", [
                    _intermediate_row(trial_id, step, value)
                    for step, value in pending.intermediate_values.items()
                ], upsert_on="trial_id, step")  # fmt: skip
                if state is not None:
                    transaction.insert("trial_values", [
                        _value_row(trial_id, objective, value)
                        for objective, value in enumerate(values or ())
                    ], upsert_on="trial_id, objective")  # fmt: skip
        except sqlalchemy.exc.IntegrityError:
            # Only a repeated flush meets a unique key: its lost try had committed the
            # parameters, and with them everything else of that try.
            if not pending.params:
                raise
            logger.debug("trial id %s: this flush had been committed already", trial_id)

    def _lock_running_trial(
        self, transaction: Transaction, trial_id: int, state: TrialState | None
    ) -> None:
        """Lock the trial's row for this transaction, and end it with `state` if given;
        refuse, as Optuna does, if it is no longer running."""
        row = {
            "trial_id": trial_id,
            "running": self.rows.stored("trials", "state", TrialState.RUNNING),
        }
        if state is not None:
            row["state"] = self.rows.stored("trials", "state", state)
            row["ended"] = self.rows.stored("trials", "datetime_complete", datetime.now())
            ended = transaction.execute(
                "UPDATE trials SET state = :state, datetime_complete = :ended "
                "WHERE trial_id = :trial_id AND state = :running",
                row,
            )
            if ended.rowcount == 1:
                return
        else:
            locked = transaction.execute(
                "SELECT trial_id FROM trials WHERE trial_id = :trial_id AND state = :running"
                + self.rows.for_update,
                row,
            ).fetchone()
            if locked is not None:
                return
        found = transaction.execute(
            "SELECT state FROM trials WHERE trial_id = :trial_id", row
        ).fetchone()
        if found is None:
            raise KeyError(f"no trial with id {trial_id}")
        found_state = TrialState[found[0]]
        self.backend.check_trial_is_updatable(trial_id, found_state)  # raises: finished
        raise RuntimeError(f"trial id {trial_id} is {found_state.name}, not running")

    def _write_params(
        self,
        transaction: Transaction,
        trial_id: int,
        params: dict[str, tuple[float, BaseDistribution]],
    ) -> None:
        if not params:
            return
        if any(name not in self._distributions for name in params):
            # A parameter keeps its distribution across the study's trials.
            known = transaction.execute(
                "SELECT p.param_name, MIN(p.distribution_json) FROM trial_params p "
                "JOIN trials t ON t.trial_id = p.trial_id WHERE t.study_id = "
                "(SELECT study_id FROM trials WHERE trial_id = :trial_id) "
                "GROUP BY p.param_name",
                {"trial_id": trial_id},
            ).fetchall()
            for name, distribution_json in known:
                self._distributions.setdefault(name, json_to_distribution(distribution_json))
        for name, (_, distribution) in params.items():
            previous = self._distributions.get(name)
            if previous is not None:
                check_distribution_compatibility(previous, distribution)
        transaction.insert(
            "trial_params",
            [
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": internal,
                    "distribution_json": distribution_to_json(distribution),
                }
                for name, (internal, distribution) in params.items()
            ],
        )
        for name, (_, distribution) in params.items():
            self._distributions.setdefault(name, distribution)

    # -- everything else goes to the cached storage ---------------------------------------

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        # `ask` looks for a waiting trial at every claim, reading every trial updated since
        # the last one; usually there is none, and the claim's count under the lock said so.
        # `states` is only a Container in Optuna's signature: ask it, rather than iterate it.
        asked = set(TrialState) if states is None else {s for s in TrialState if s in states}
        waiting_only = asked == {TrialState.WAITING}
        expected, self._thread.waiting = getattr(self._thread, "waiting", None), None
        if self.enabled and waiting_only and expected == 0:
            return []
        sampling: _Sampling | None = getattr(self._thread, "sampling", None)
        if sampling is None:
            return self.inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        # While a trial is sampled, a sampler reads the study two or three times within
        # milliseconds (TPE: the search space, then the trials); one read answers them all,
        # as Optuna's own cache does for some of them.
        if sampling.trials is None:
            sampling.trials = self.inner.get_all_trials(study_id, deepcopy=False)
        with self._lock:
            live = {trial.number: trial for trial in self._live.values()}
        trials = [live.get(trial.number, trial) for trial in sampling.trials]
        if states is not None:
            trials = [trial for trial in trials if trial.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def _end_sampling(self) -> None:
        self._thread.sampling = None

    def expect_waiting(self, count: int) -> None:
        """The number of waiting trials, just counted: the next look for them in this thread
        takes it instead of reading the trials. (One that appears in between, a dead
        worker's trial queued for retry, is taken by a later claim.)"""
        self._thread.waiting = count

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class _Sampling:
    """A trial is being sampled in this thread; the study's trials as read for it."""

    trials: list[FrozenTrial] | None = None


def _forward(name: str) -> Any:
    def method(self: BatchedTrialStorage, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


for _name in STORAGE_METHODS:
    if _name not in BatchedTrialStorage.__dict__:
        setattr(BatchedTrialStorage, _name, _forward(_name))
BatchedTrialStorage.__abstractmethods__ = frozenset()


class FlushAtStart:
    """An objective's observer: the trial's parameters and seed reach the storage as its
    training starts, so that a retry after a crash has both."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage  # a BatchedTrialStorage, or a wrapper of one

    def trial_started(self, trial: optuna.trial.BaseTrial, seed: int) -> None:
        if isinstance(trial, optuna.Trial):
            self.storage.flush_trial(trial_id_of(trial))

    def epoch_ended(
        self, trial: optuna.trial.BaseTrial, epoch: int, metrics: EpochMetrics
    ) -> None:
        pass

    def trial_ending(self, trial: optuna.trial.BaseTrial) -> None:
        pass
