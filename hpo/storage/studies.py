"""Creating, checking and joining studies in a storage.

The schema and the study are created once, under the storage lock, before any worker runs a
trial. A study remembers what it was created from (the study file's text and a fingerprint of
everything that defines its trials), so a later run of a changed file is refused with the
differences named instead of silently mixing two searches in one study.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import tomllib
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from hpo.errors import ConfigError
from hpo.spec.evaluation import HOLDOUT
from hpo.spec.names import check_new_study_name
from hpo.spec.seeds import derive_seed, name_key
from hpo.spec.study_file import StudySpec, parse_study
from hpo.storage.database import StorageSettings, open_storage
from hpo.storage.locks import StorageLock
from hpo.storage.optuna_adapter import adapter_active
from hpo.storage.optuna_adapter.batched import BatchedTrialStorage
from hpo.storage.optuna_adapter.internals import CachedStorage
from hpo.storage.retry import RetryingStorage

logger = logging.getLogger(__name__)

# hpo's own records of a study, kept in its system attributes, which dashboards do not show
# (studies made before 0.2 kept them as user attributes: `records` reads both). The user
# attributes say in words what the study is (see `_readable`).
SPEC_ATTR = "hpo:spec"
FINGERPRINT_ATTR = "hpo:fingerprint"
WORKERS_ATTR = "hpo:workers_joined"
UID_ATTR = "hpo:uid"  # tells apart same-named studies of different storages in one MLflow
METRIC_NAMES_ATTR = "study:metric_names"  # where Study.set_metric_names keeps them
SAMPLER_STREAM = 3  # per-worker sampler seeds: see sampler_seed


def fingerprint(spec: StudySpec) -> dict[str, Any]:
    """Everything that decides what a trial of this study trains and how it is scored.

    The data directory is left out: the same data may sit in different places on different
    machines. Budget, timeout, sampler and pruner may change between runs of one study.
    """
    data = dataclasses.asdict(spec.data)
    data.pop("data_dir", None)
    base = {f.name: getattr(spec.base, f.name) for f in dataclasses.fields(spec.base) if f.init}
    base["hidden_size_list"] = list(base["hidden_size_list"])
    space = {
        name: json.loads(optuna.distributions.distribution_to_json(distribution))
        for name, distribution in spec.space.distributions().items()
    }
    conditions = {p.name: {k: list(v) for k, v in p.when.items()} for p in spec.space.params}
    result = {
        "metric": spec.study.metric,
        "direction": spec.study.direction,
        "seed": spec.study.seed,
        "data": data,
        "fixed": base,
        "space": space,
        "conditions": {k: v for k, v in conditions.items() if v},
    }
    if spec.evaluation.protocol != HOLDOUT:  # the book's holdout is what older studies did
        result["evaluation"] = spec.evaluation.as_dict()
    if spec.probe is not None:  # a study that trains nothing: its kind and its own settings
        result["kind"] = spec.study.kind
        result["probe"] = spec.probe.as_dict()
    return result


def _differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: the study has {a!r}, the file has {b!r}")
    return found


@dataclass
class JoinedStudy:
    """A worker's handle on a study: the study object, its storage and the worker's index.

    `storage` is the database itself, for the runner's own queries; the study works through
    `retrying`, which rides out a restart of the database.
    """

    study: optuna.Study
    storage: optuna.storages.RDBStorage
    study_id: int
    worker_index: int
    retrying: RetryingStorage
    batched: BatchedTrialStorage | None  # None with the Optuna adapter off

    @property
    def adapter(self) -> bool:
        """Whether this worker writes through hpo's Optuna adapter, or through Optuna's public
        storage only (see `hpo.storage.optuna_adapter`)."""
        return self.batched is not None


def prepare_study(settings: StorageSettings, spec: StudySpec) -> bool:
    """Create the schema and the study if they do not exist; True if the study is new.

    An existing study must have been made from an equivalent file (see `fingerprint`).
    """
    name = spec.study.name
    with StorageLock(settings, "setup"):
        storage = open_storage(settings)
        try:
            try:
                study_id = storage.get_study_id_from_name(name)
            except KeyError:
                check_new_study_name(name)
                _create(storage, spec)
                return True
            _name_the_metric(storage, study_id, spec)
            stored = _records_in(storage, study_id).get(FINGERPRINT_ATTR)
            if stored is None:
                raise ConfigError(
                    f"a study named {name!r} exists in {settings.redacted()} but was not "
                    "created by hpo; choose another name with --study-name",
                    key="study.name",
                )
            differences = _differences(stored, fingerprint(spec))
            if differences:
                raise ConfigError(
                    f"the study {name!r} in {settings.redacted()} was created from a different "
                    f"definition ({'; '.join(differences)}); run it under a new name with "
                    "--study-name, or restore the original settings",
                    source=str(spec.path) if spec.path else None,
                )
            return False
        finally:
            storage.engine.dispose()


def _name_the_metric(storage: optuna.storages.RDBStorage, study_id: int, spec: StudySpec) -> None:
    """Studies created before their metric was named get its name (dashboards show it)."""
    if METRIC_NAMES_ATTR not in storage.get_study_system_attrs(study_id):
        storage.set_study_system_attr(study_id, METRIC_NAMES_ATTR, [spec.study.metric])


def records(study: optuna.Study) -> dict[str, Any]:
    """hpo's own records of `study` (its definition, fingerprint, uid, ...), wherever the
    version that made it kept them."""
    return _records_in(study._storage, study._study_id)


def set_record(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


def _records_in(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, Any]:
    older = {
        k: v for k, v in storage.get_study_user_attrs(study_id).items() if k.startswith("hpo:")
    }
    return older | {
        k: v for k, v in storage.get_study_system_attrs(study_id).items() if k.startswith("hpo:")
    }


def _readable(spec: StudySpec) -> dict[str, Any]:
    """What optuna-dashboard shows of a study, in words: where it came from, what a trial
    trains and what it searches."""
    described: dict[str, Any] = {
        "study file": str(spec.path) if spec.path else "(none)",
        "metric": f"{spec.study.metric} ({spec.study.direction})",
        "seed": spec.study.seed,
    }
    if spec.trains:
        described["data"] = spec.data.describe()
        described["network"] = spec.base.describe()
    else:
        assert spec.probe is not None
        described["kind"] = f"{spec.study.kind}: {spec.probe.describe()}"
    described["search"] = "; ".join(p.describe() for p in spec.space.params)
    if spec.evaluation.protocol != HOLDOUT or spec.selection.enabled or spec.study.max_epochs:
        described["evaluation"] = spec.describe_budget()
    return described


def _create(storage: optuna.storages.RDBStorage, spec: StudySpec) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=storage, study_name=spec.study.name, direction=spec.study.direction
        )
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.study.metric])  # optuna-dashboard's name for the objective
    study_id = storage.get_study_id_from_name(spec.study.name)
    record = functools.partial(storage.set_study_system_attr, study_id)
    record(
        SPEC_ATTR,
        {
            "source_text": spec.source_text,
            "path": str(spec.path) if spec.path else None,
            # Flags can override the file; these two define the trials, so keep them.
            "name": spec.study.name,
            "seed": spec.study.seed,
        },
    )
    for key, value in _readable(spec).items():
        study.set_user_attr(key, value)
    # The [[enqueue]] trials (a narrowed stage's parent trials) are enqueued here, once, as
    # the study is created under the storage lock, so that they run before any sampled trial
    # and a resumed study never enqueues them again. Before the fingerprint: a study killed
    # half-way through is refused as "not created by hpo", never run with trials missing.
    for trial in spec.enqueue:
        study.enqueue_trial(dict(trial.params), user_attrs=trial.user_attrs())
    record(FINGERPRINT_ATTR, fingerprint(spec))
    record(UID_ATTR, uuid.uuid4().hex)
    record(WORKERS_ATTR, 0)
    logger.info("created study %r", spec.study.name)


def sampler_seed(spec: StudySpec, worker_index: int) -> int:
    """The sampler seed of one worker of one study: from the study's seed, its name and the
    worker's index, so that neither two workers nor two studies of the same seed draw alike."""
    return derive_seed(spec.study.seed, SAMPLER_STREAM, name_key(spec.study.name), worker_index)


def join_study(
    settings: StorageSettings,
    spec: StudySpec,
    *,
    worker_index: int | None = None,
    adapter: bool | None = None,
) -> JoinedStudy:
    """Open a prepared study as one worker, with that worker's own sampler seed.

    Workers that `hpo run --workers N` starts get indices 0..N-1; a worker that joins on its
    own (another terminal, another machine) takes the next free index from a counter kept in
    the study, so no two workers draw the same startup trials. `adapter` says whether this
    worker writes through hpo's Optuna adapter (default: the process's setting, see
    `hpo.storage.optuna_adapter`).
    """
    storage = open_storage(settings)
    name = spec.study.name
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        raise ConfigError(f"no study named {name!r} in {settings.redacted()}") from None
    if worker_index is None:
        with StorageLock(settings, "setup"):
            worker_index = int(_records_in(storage, study_id).get(WORKERS_ATTR, 0))
            storage.set_study_system_attr(study_id, WORKERS_ATTR, worker_index + 1)
    seed = sampler_seed(spec, worker_index)
    # With the adapter (hpo.storage.optuna_adapter): the cache Optuna puts around an
    # RDBStorage, which keeps finished trials in memory so that the sampler does not read them
    # again at every ask; around it, this worker's running trials written in two transactions
    # each. Without: Optuna's storage as its public API gives it. Around either, the retries.
    if adapter is None:
        adapter = adapter_active()
    batched = BatchedTrialStorage(CachedStorage(storage)) if adapter else None
    retrying = RetryingStorage(
        batched or storage, what=f"the storage {settings.redacted()}", patience=settings.patience
    )
    study = optuna.load_study(
        study_name=name,
        storage=retrying,
        sampler=spec.sampler.build(seed=seed, space=spec.space),
        pruner=spec.build_pruner(),
    )
    return JoinedStudy(study, storage, study_id, worker_index, retrying, batched)


def load_existing_study(settings: StorageSettings, name: str) -> optuna.Study:
    """A study for reading (status, export, replay); a missing name lists the ones there are.

    Creates nothing: a storage without studies is an error."""
    storage = open_storage(settings, heartbeat=False, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        there = f"studies there: {', '.join(names)}" if names else "it holds no studies"
        raise ConfigError(f"no study named {name!r} in {settings.redacted()}; {there}") from None


def stored_spec(study: optuna.Study) -> StudySpec:
    """The definition a study was created from, parsed again from its stored text.

    The data directory follows the current environment, as for any study file.
    """
    stored = records(study).get(SPEC_ATTR)
    if not stored:
        raise ConfigError(f"study {study.study_name!r} was not created by hpo run")
    path = Path(stored["path"]) if stored.get("path") else None
    document = tomllib.loads(stored["source_text"])
    spec = parse_study(
        document,
        source=f"the stored definition of {study.study_name!r}",
        base_dir=path.parent if path else None,
        source_text=stored["source_text"],
    )
    return spec.with_overrides(study_name=stored["name"], seed=stored["seed"])
