"""Study files: TOML in, a frozen and fully validated `StudySpec` out, before anything runs.

Every mistake is a `ConfigError` naming the file, the key ("search.lr.low"), the value and
what is allowed. The format is documented, key by key, in `studies/README.md`. Environment
variables are read here and nowhere below: `HPO_DATA_DIR` picks the IDX data directory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError
from hpo.spec.config import DataConfig, TrainConfig
from hpo.spec.data import DATA_DIR_ENV, default_data_dir
from hpo.spec.evaluation import HOLDOUT, KFOLD, RESHUFFLED, EvaluationSpec, SelectionSpec
from hpo.spec.keys import (
    ENQUEUE_KEYS,
    MODEL_KEYS,
    NARROWING_KEYS,
    SECTION_KEYS,
    SECTIONS,
    SETTING_KINDS,
    VIRTUAL_KEYS,
    check_kind,
    is_int,
    is_number,
    section_of,
    setting_error,
    toml_repr,
)
from hpo.spec.kinds import KINDS, STUDY_KINDS, TRAINING, Direction, StudyKind
from hpo.spec.limits import MAX_SEED, MAX_TIMEOUT_S, MAX_TOTAL_EPOCHS, MAX_TRIALS
from hpo.spec.probe_settings import ProbeSettings
from hpo.spec.search.pruners import BY_FOLD
from hpo.spec.search.samplers import PRUNERS, SAMPLERS, PrunerSpec, SamplerSpec
from hpo.spec.search.space import ParamSpec, SearchSpace, same_value
from hpo.spec.search.tables import hidden_sizes, parse_search
from trainer.data import DATASETS

if TYPE_CHECKING:
    from optuna.pruners import BasePruner

IDX_DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "kmnist")
DEFAULT_SAMPLER, DEFAULT_PRUNER = "tpe", "none"


@dataclass(frozen=True)
class StudySettings:
    """The `[study]` section: what a trial does (`kind`, see `hpo.spec.kinds`), what is
    optimised, how many trials, and the one seed."""

    name: str
    kind: str = TRAINING
    metric: str = "val_acc"
    direction: Direction = "maximize"
    n_trials: int = 100
    timeout: float | None = None
    seed: int = 0
    max_epochs: int | None = None  # every trial's training, summed (see `StudySpec.max_epochs`)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(
                f"must be a non-empty string, but got {toml_repr(self.name)}", key="study.name"
            )
        if self.kind not in KINDS:
            raise ConfigError(
                f"must be one of {', '.join(map(toml_repr, KINDS))}, but got "
                f"{toml_repr(self.kind)}",
                key="study.kind",
            )
        metrics = STUDY_KINDS[self.kind].metrics
        if self.metric not in metrics:
            # The default kind goes without saying.
            of_kind = f" for kind = {toml_repr(self.kind)}" if self.kind != TRAINING else ""
            raise ConfigError(
                f"must be one of {', '.join(map(toml_repr, metrics))}{of_kind}, but got "
                f"{toml_repr(self.metric)}",
                key="study.metric",
            )
        if self.direction != metrics[self.metric]:
            raise ConfigError(
                f"metric {toml_repr(self.metric)} is to {metrics[self.metric]}, but got "
                f"direction = {toml_repr(self.direction)}; remove direction (it follows from "
                "metric) or make it agree",
                key="study.direction",
            )
        if not is_int(self.n_trials) or not 1 <= self.n_trials <= MAX_TRIALS:
            raise ConfigError(
                f"must be an integer from 1 to {MAX_TRIALS:,} (finished trials, complete or "
                f"pruned), but got {toml_repr(self.n_trials)}",
                key="study.n_trials",
            )
        if self.timeout is not None:
            if not is_number(self.timeout) or not 0 < self.timeout <= MAX_TIMEOUT_S:
                raise ConfigError(
                    f"must be a number of seconds > 0 and at most {MAX_TIMEOUT_S:,}, but got "
                    f"{toml_repr(self.timeout)}",
                    key="study.timeout",
                )
            object.__setattr__(self, "timeout", float(self.timeout))
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(
                f"must be an integer from 0 to 2**63 - 1, but got {toml_repr(self.seed)}",
                key="study.seed",
            )
        if self.max_epochs is not None and (
            not is_int(self.max_epochs) or not 1 <= self.max_epochs <= MAX_TOTAL_EPOCHS
        ):
            raise ConfigError(
                f"must be an integer from 1 to {MAX_TOTAL_EPOCHS:,} (epochs trained by all "
                f"trials together), but got {toml_repr(self.max_epochs)}",
                key="study.max_epochs",
            )


@dataclass(frozen=True, repr=False)
class EnqueuedTrial:
    """An `[[enqueue]]` table: a trial to run before any sampled one, with these parameters
    and this seed.

    `hpo narrow` writes one for each parent trial worth re-running, so that the next stage
    starts from the parent's best trials reproduced exactly (same parameters, seed and, the
    study seed being the same, split). `parent_trial` is that trial's number, for the record.
    A searched setting missing from `params` is sampled as usual.
    """

    params: Mapping[str, Any]
    seed: int
    parent_trial: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(
                f"must be an integer from 0 to 2**63 - 1, but got {toml_repr(self.seed)}",
                key="enqueue.seed",
            )
        if self.parent_trial is not None and (
            not is_int(self.parent_trial) or not 0 <= self.parent_trial < 2**31
        ):
            raise ConfigError(
                f"must be a trial number (an integer >= 0), but got "
                f"{toml_repr(self.parent_trial)}",
                key="enqueue.parent_trial",
            )

    def __repr__(self) -> str:
        parent = f", parent_trial={self.parent_trial}" if self.parent_trial is not None else ""
        return f"EnqueuedTrial({dict(self.params)!r}, seed={self.seed}{parent})"

    def user_attrs(self) -> dict[str, Any]:
        """The Optuna user attributes the trial starts with: its seed, which
        `hpo.engine.objective.trial_seed` then uses as is, and the parent trial's number."""
        attrs: dict[str, Any] = {"seed": self.seed}
        if self.parent_trial is not None:
            attrs["parent_trial"] = self.parent_trial
        return attrs


@dataclass(frozen=True, repr=False)
class StudySpec:
    """A whole study file, validated: everything `hpo run` needs except the storage.

    `enqueue` and `narrowing` come from `hpo narrow`'s stages: trials to run first, and where
    the stage came from. Neither defines what a trial trains (see
    `hpo.storage.studies.fingerprint`).
    `probe` holds the settings of a study that trains nothing (`[paths]` or `[activations]`,
    see `hpo.spec.kinds`), and is None for a training study; `data` and `base` are then the
    defaults, apart from the `[model]` of an activations study.
    """

    path: Path | None
    source_text: str
    study: StudySettings
    data: DataConfig
    base: TrainConfig
    space: SearchSpace
    sampler: SamplerSpec
    pruner: PrunerSpec
    enqueue: tuple[EnqueuedTrial, ...] = ()
    narrowing: Mapping[str, Any] | None = None
    probe: ProbeSettings | None = None
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    selection: SelectionSpec = field(default_factory=SelectionSpec)

    def __post_init__(self) -> None:
        self.sampler.check_space(self.space)
        _check_pruner(self.kind, self.pruner)
        if self.probe is not None:
            self.probe.check_space(self.space)
        if self.prunes_by_fold and self.evaluation.protocol != KFOLD:
            raise ConfigError(
                f"pruner {toml_repr(self.pruner.name)} compares a trial's fold scores with the "
                "best trial's on the same folds, so it needs [evaluation] protocol = "
                f'"kfold", but the protocol is {toml_repr(self.evaluation.protocol)}',
                key="pruner.name",
            )
        self._check_budget()

    @property
    def prunes_by_fold(self) -> bool:
        """The pruner decides between folds (trained one after another), not between epochs."""
        return self.pruner.name in BY_FOLD

    def _check_budget(self) -> None:
        """A budget of epochs must hold at least one trial, and the selection's trials."""
        epochs = self.study.max_epochs
        if epochs is None:
            return
        if not self.trains:
            raise ConfigError(
                f"counts epochs trained, but the trials of kind = {toml_repr(self.study.kind)} "
                "train nothing; bound the study with n_trials",
                key="study.max_epochs",
            )
        if epochs < self.trial_epochs + self.selection_epochs:
            need = self.trial_epochs + self.selection_epochs
            trial = (
                f"one trial ({self.trial_epochs:,} epochs: {self.evaluation.trainings} "
                f"trainings of {self.base.epochs})"
                if self.evaluation.trainings > 1
                else f"one trial ({self.trial_epochs:,} epochs)"
            )
            selection = (
                f" and the selection ({self.selection_epochs:,}), {need:,} in all"
                if self.selection_epochs
                else ""
            )
            raise ConfigError(
                f"must hold at least {trial}{selection}, but got {epochs:,}",
                key="study.max_epochs",
            )

    @property
    def trial_epochs(self) -> int:
        """The most epochs one trial trains: each of its trainings to the end."""
        return self.evaluation.trainings * self.base.epochs

    @property
    def selection_epochs(self) -> int:
        """The most epochs the selection's re-evaluations train, kept out of the search."""
        return self.selection.trials * self.trial_epochs

    @property
    def search_epochs(self) -> int | None:
        """The search's share of `max_epochs` (None: the budget is in trials only)."""
        if self.study.max_epochs is None:
            return None
        return self.study.max_epochs - self.selection_epochs

    def describe_budget(self) -> str:
        """The budget and the protocol in words, for `hpo run`'s header."""
        if self.study.max_epochs is not None:
            budget = f"at most {self.study.max_epochs:,} epochs"
            if self.study.n_trials < MAX_TRIALS:
                budget += f" and {self.study.n_trials:,} trials"
        else:
            budget = f"{self.study.n_trials} trials"
        if self.evaluation.protocol != HOLDOUT:
            budget += f", each scored by {self.evaluation.describe()}"
        if self.selection.enabled:
            budget += (
                f", then the {self.selection.finalists} best re-evaluated "
                f"{self.selection.evaluations} more times each"
            )
        return budget

    @property
    def pools_validation(self) -> bool:
        """Whether trials split the search pool (training + validation) themselves."""
        return self.evaluation.protocol in (KFOLD, RESHUFFLED)

    @functools.cached_property
    def decision_epochs(self) -> frozenset[int]:
        """The epochs at which this study's pruner can stop a trial (empty: it never does);
        computed once, here, for every part of a run that needs them."""
        return self.pruner.decision_epochs(self.base.epochs)

    def build_pruner(self) -> BasePruner:
        """The study's Optuna pruner, for its epochs: built once per worker, in
        `hpo.storage.studies.join_study`; the pruning mirror uses the study's own."""
        return self.pruner.build(epochs=self.base.epochs)

    @property
    def kind(self) -> StudyKind:
        """What a trial of this study does (see `hpo.spec.kinds`)."""
        return STUDY_KINDS[self.study.kind]

    @property
    def trains(self) -> bool:
        """Whether a trial trains a network on data (kind = "training")."""
        return self.kind.trains

    def require_training(self, command: str) -> None:
        """Refuse `command`, which trains networks, for a study whose trials train nothing."""
        if not self.trains:
            raise ConfigError(
                f"{command} works on studies that train a network, but study "
                f"{self.study.name!r} is of kind = {toml_repr(self.study.kind)}: its trials "
                "train nothing; hpo run, status, export and report work on it"
            )

    def require_search(self) -> None:
        """Refuse to run a study that searches nothing (an empty file parses to defaults)."""
        if not self.space.params:
            raise ConfigError(
                "the study searches nothing: add a [search.<setting>] table for each setting "
                'to tune, e.g. [search.lr] with type = "float", low = 1e-4, high = 1e-1, '
                "log = true (studies/README.md lists the settings)",
                key="search",
                source=str(self.path) if self.path else None,
            )

    def with_data_dir(self, data_dir: str) -> StudySpec:
        """This spec reading its IDX files from `data_dir` (`hpo run --data-dir`)."""
        if self.data.dataset not in IDX_DATASETS:
            raise ConfigError(
                f"--data-dir is for the IDX datasets ({', '.join(IDX_DATASETS)}), but this "
                f"study's dataset is {toml_repr(self.data.dataset)}",
                key="--data-dir",
            )
        data = dataclasses.replace(self.data, data_dir=str(Path(data_dir).expanduser()))
        return dataclasses.replace(self, data=data)

    def with_overrides(
        self,
        *,
        study_name: str | None = None,
        sampler: str | None = None,
        pruner: str | None = None,
        n_trials: int | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> StudySpec:
        """This spec with command-line overrides, validated as the file is.

        A sampler or pruner named here gets that name's default options: the file's options
        were written for the file's choice, and apply only if the name is unchanged.
        """
        changes: dict[str, Any] = {  # the keyword arguments of dataclasses.replace
            "name": study_name,
            "n_trials": n_trials,
            "seed": seed,
            "timeout": timeout,
        }
        try:
            study = dataclasses.replace(
                self.study, **{k: v for k, v in changes.items() if v is not None}
            )
            new_sampler = self.sampler
            if sampler is not None and sampler != self.sampler.name:
                new_sampler = SamplerSpec(sampler)
            new_pruner = self.pruner
            if pruner is not None and pruner != self.pruner.name:
                new_pruner = PrunerSpec(pruner).for_epochs(self.base.epochs)
                _check_pruner(self.kind, new_pruner)
        except ConfigError as error:
            raise ConfigError(error.message, key=error.key, source="override") from None
        return dataclasses.replace(self, study=study, sampler=new_sampler, pruner=new_pruner)

    def __repr__(self) -> str:
        what = f"dataset={self.data.dataset!r}" if self.trains else f"kind={self.study.kind!r}"
        return (
            f"StudySpec({self.study.name!r}, path={str(self.path) if self.path else None!r}, "
            f"{self.study.metric} ({self.study.direction}), n_trials={self.study.n_trials}, "
            f"seed={self.study.seed}, {what}, "
            f"searching [{', '.join(self.space.names())}], {self.sampler!r}, {self.pruner!r}"
            + (f", {len(self.enqueue)} enqueued" if self.enqueue else "")
            + ")"
        )


def _check_pruner(kind: StudyKind, pruner: PrunerSpec) -> None:
    if not kind.trains and pruner.name != DEFAULT_PRUNER:
        raise ConfigError(
            f"must be {toml_repr(DEFAULT_PRUNER)} for a study of kind = {toml_repr(kind.name)}: "
            f"its trials train nothing, so there is nothing to prune, but got "
            f"{toml_repr(pruner.name)}",
            key="pruner.name",
        )


def load_study_file(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> StudySpec:
    """Read and validate the study file at `path`; nothing is loaded or run."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the study file: {error}", source=source) from None
    try:
        document = tomllib.loads(text)
    except ValueError as error:  # TOMLDecodeError, or an integer of over 4,300 digits
        raise ConfigError(f"invalid TOML: {error}", source=source) from None
    absolute = Path(os.path.abspath(path))
    spec = parse_study(
        document, source=source, base_dir=absolute.parent, environ=environ, source_text=text
    )
    return dataclasses.replace(spec, path=absolute)


def parse_study(
    document: Mapping[str, Any],
    *,
    source: str,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    source_text: str = "",
) -> StudySpec:
    """Validate a parsed study file; `source` names it in errors and gives the default name.

    Relative paths resolve against `base_dir` (the file's directory); `environ` (default:
    os.environ) is read only for HPO_DATA_DIR.
    """
    environ = os.environ if environ is None else environ
    try:
        return _parse(document, source, base_dir, environ, source_text)
    except ConfigError as error:
        raise ConfigError(error.message, key=error.key, source=source) from None


def _tables(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every section but `[[enqueue]]` (an array of tables, see `_enqueued`), keys checked."""
    tables: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS if name != "enqueue"}
    for name, value in document.items():
        if name not in SECTIONS:
            home = section_of(name)
            hint = f"{name} belongs in [{home}]" if home else f"unknown section [{name}]"
            headers = ", ".join(f"[[{s}]]" if s == "enqueue" else f"[{s}]" for s in SECTIONS)
            raise ConfigError(f"{hint}; the sections are {headers}", key=name)
        if name == "enqueue":
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"must be a section [{name}], but got {toml_repr(value)}", key=name)
        tables[name] = dict(value)
    for name, keys in {**SECTION_KEYS, "narrowing": NARROWING_KEYS}.items():
        for key in tables[name]:
            if key not in keys:
                home = section_of(key)
                hint = (
                    f"{key} belongs in [{home}], not [{name}]"
                    if home
                    else f"unknown key {key!r}; the keys of [{name}] are {', '.join(keys)}"
                )
                raise ConfigError(hint, key=f"{name}.{key}")
            check_kind(tables[name][key], keys[key], key=f"{name}.{key}")
    return tables


def _parse(
    document: Mapping[str, Any],
    source: str,
    base_dir: Path | None,
    environ: Mapping[str, str],
    source_text: str,
) -> StudySpec:
    tables = _tables(document)
    study = tables["study"]
    kind_name = study.get("kind", TRAINING)
    # An unknown kind is refused by StudySettings, before its defaults matter.
    kind = STUDY_KINDS.get(kind_name, STUDY_KINDS[TRAINING])
    metric = study.get("metric", kind.default_metric)
    settings = StudySettings(
        name=study.get("name", Path(source).stem),
        kind=kind_name,
        metric=metric,
        direction=study.get("direction", kind.direction_of(metric)),
        n_trials=study.get("n_trials", 100 if "max_epochs" not in study else MAX_TRIALS),
        timeout=study.get("timeout"),
        seed=study.get("seed", 0),
        max_epochs=study.get("max_epochs"),
    )
    kind.check_sections(document)
    data = _data_config(tables["data"], base_dir, environ)
    fixed = {
        name: (section, value)
        for section in ("model", "train")
        for name, value in tables[section].items()
    }
    for name, (section, value) in fixed.items():
        error = setting_error(name, value) if name != "hidden_size_list" else None
        if error is not None:
            raise ConfigError(error, key=f"{section}.{name}")
    search = tables["search"]
    hidden = hidden_sizes(fixed, set(search))
    values = {k: v for k, (_, v) in fixed.items() if k not in VIRTUAL_KEYS}
    if hidden is not None:
        values["hidden_size_list"] = hidden
    base = _train_config(values)
    space = parse_search(search, fixed=fixed, base=base)
    provenance = dict(tables["narrowing"])
    if "parent_best" in provenance:
        provenance["parent_best"] = float(provenance["parent_best"])
    return StudySpec(
        path=None,
        source_text=source_text,
        study=settings,
        data=data,
        base=base,
        space=space,
        sampler=SamplerSpec(*_named(tables["sampler"], "sampler", DEFAULT_SAMPLER)),
        pruner=PrunerSpec(*_named(tables["pruner"], "pruner", DEFAULT_PRUNER)).for_epochs(
            base.epochs
        ),
        enqueue=_enqueued(document.get("enqueue"), space),
        narrowing=MappingProxyType(provenance) if "narrowing" in document else None,
        probe=kind.read_settings(tables),
        evaluation=EvaluationSpec(**tables["evaluation"]),
        selection=SelectionSpec(**tables["selection"]),
    )


def _enqueued(value: Any, space: SearchSpace) -> tuple[EnqueuedTrial, ...]:
    """The `[[enqueue]]` tables, each parameter a searched setting with a value it can take."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(table, dict) for table in value):
        raise ConfigError(
            "must be an array of tables: one [[enqueue]] header per trial, with "
            "params = { ... } and seed = ... under it",
            key="enqueue",
        )
    searched = {param.name: param for param in space.params}
    trials = []
    for index, table in enumerate(value):
        key = f"enqueue[{index}]"
        for name in table:
            if name not in ENQUEUE_KEYS:
                raise ConfigError(
                    f"unknown key {name!r}; the keys of [[enqueue]] are {', '.join(ENQUEUE_KEYS)}",
                    key=f"{key}.{name}",
                )
            check_kind(table[name], ENQUEUE_KEYS[name], key=f"{key}.{name}")
        for name in ("params", "seed"):
            if name not in table:
                raise ConfigError(
                    "needs params = { <searched setting> = <value>, ... } and seed = <integer "
                    f">= 0>, but {name} is missing",
                    key=f"{key}.{name}",
                )
        params = {}
        for name, param_value in table["params"].items():
            if name not in searched:
                there = ", ".join(searched) or "none"
                raise ConfigError(
                    f"{name} is not a searched setting of this study, so a trial cannot be "
                    f"given a value for it; the searched settings are: {there}",
                    key=f"{key}.params.{name}",
                )
            params[name] = _enqueued_value(searched[name], param_value, key=f"{key}.params.{name}")
        try:
            trials.append(EnqueuedTrial(params, table["seed"], table.get("parent_trial")))
        except ConfigError as error:
            field = (error.key or "").removeprefix("enqueue.")
            raise ConfigError(error.message, key=f"{key}.{field}") from None
    return tuple(trials)


def _enqueued_value(param: ParamSpec, value: Any, *, key: str) -> Any:
    """`value` as the trial will be given it, if `param` can take it; else a ConfigError."""
    if param.type == "categorical":
        assert param.choices is not None
        for choice in param.choices:
            if same_value(value, choice):
                return choice
    elif (is_int(value) if param.type == "int" else is_number(value)) and (
        param.bounds[0] <= value <= param.bounds[1]
    ):
        if param.step is None:
            return float(value) if param.type == "float" else value
        steps = (value - param.low) / param.step
        if math.isclose(steps, round(steps), rel_tol=0, abs_tol=1e-9):
            return float(value) if param.type == "float" else value
    raise ConfigError(
        f"{toml_repr(value)} is not a value the study searches: {param.describe()}", key=key
    )


def _named(table: Mapping[str, Any], what: str, default: str) -> tuple[str, dict[str, Any]]:
    """[sampler] or [pruner] as (name, options); a key of another section is named as such."""
    options = {k: v for k, v in table.items() if k != "name"}
    registry = SAMPLERS if what == "sampler" else PRUNERS
    name = table.get("name", default)
    for key in options:
        home = section_of(key)
        entry = registry.get(name)
        if home and key != "seed" and entry is not None and key not in entry.options:
            raise ConfigError(f"{key} belongs in [{home}], not [{what}]", key=f"{what}.{key}")
    return name, options


def _train_config(values: Mapping[str, Any]) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except ConfigError as error:
        # Architecture errors come from the trainer without a key, as "<name> must be ...".
        match = re.match(r"\w+", error.message)
        name = error.key or (match.group(0) if match else "")
        section = "model" if name in MODEL_KEYS else "train"
        key = f"{section}.{name}" if name in SETTING_KINDS else section
        raise ConfigError(error.message, key=key) from None


def _data_config(
    table: Mapping[str, Any], base_dir: Path | None, environ: Mapping[str, str]
) -> DataConfig:
    values = dict(table)
    dataset = values.get("dataset", "digits")
    for key, applies in (
        ("data_dir", dataset in IDX_DATASETS),
        ("path", dataset == "npz"),
        ("x_key", dataset == "npz"),
        ("y_key", dataset == "npz"),
    ):
        if key in values and not applies and dataset in DATASETS:
            used = "the IDX datasets " + ", ".join(IDX_DATASETS) if key == "data_dir" else "npz"
            raise ConfigError(
                f"{key} applies only to {used}, not to dataset = {toml_repr(dataset)}",
                key=f"data.{key}",
            )
    if dataset in IDX_DATASETS:
        root = environ.get(DATA_DIR_ENV)
        if root or "data_dir" not in values:
            # $HPO_DATA_DIR/<dataset> overrides the file, so one machine's layout needs no edit.
            values["data_dir"] = str(
                default_data_dir(dataset, {DATA_DIR_ENV: root} if root else {})
            )
        else:
            values["data_dir"] = str(_resolve(values["data_dir"], base_dir))
    if dataset == "npz" and "path" in values:
        values["path"] = str(_resolve(values["path"], base_dir))
    try:
        return DataConfig(**values)
    except ConfigError as error:
        raise ConfigError(
            error.message, key=f"data.{error.key}" if error.key else "data"
        ) from None


def _resolve(path: str, base_dir: Path | None) -> Path:
    expanded = Path(path).expanduser()
    return base_dir / expanded if base_dir is not None and not expanded.is_absolute() else expanded
