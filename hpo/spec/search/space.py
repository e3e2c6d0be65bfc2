"""The search space: the only place in the project that calls `trial.suggest_*`.

A `SearchSpace` turns a trial and the study's fixed `TrainConfig` into the trial's frozen
`TrainConfig`, so the space is reviewable in one place and testable with `FixedTrial`.
Parameters are named after the settings they set (`lr`, `weight_decay_lambda`, ...), the
names study files, Optuna and MLflow all use. Two names are not `TrainConfig` fields:
`n_hidden_layers` and `hidden_size` set `hidden_size_list = [hidden_size] * n_hidden_layers`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError
from hpo.spec.config import TrainConfig
from hpo.spec.keys import VIRTUAL_KEYS, is_int, is_number, toml_repr
from hpo.spec.limits import MAX_CHOICES, MAX_GRID

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.trial import BaseTrial

PARAM_TYPES: tuple[str, ...] = ("float", "int", "categorical")


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from numbers (True == 1 in Python, not here)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return a == b


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True, repr=False)
class ParamSpec:
    """One searched setting: a range (`float`, `int`) or a list of `choices` (`categorical`).

    `when` maps settings to the values under which this one is sampled, e.g.
    {"optimizer": ("momentum", "nesterov")} for `momentum`; all must hold. Errors name the
    study-file key, e.g. "search.lr.low".
    """

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        key = f"search.{self.name}"
        if self.type not in PARAM_TYPES:
            raise ConfigError(
                f"must be one of {', '.join(map(toml_repr, PARAM_TYPES))}, but got "
                f"{toml_repr(self.type)}",
                key=f"{key}.type",
            )
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        when = {k: tuple(v) if isinstance(v, list | tuple) else (v,) for k, v in self.when.items()}
        object.__setattr__(self, "when", MappingProxyType(when))
        if self.type == "categorical":
            self._check_categorical(key)
        else:
            self._check_range(key)

    def _check_categorical(self, key: str) -> None:
        for name in ("low", "high", "step"):
            if getattr(self, name) is not None:
                raise ConfigError(
                    f"{name} is for float and int ranges; a categorical takes only choices",
                    key=f"{key}.{name}",
                )
        if self.log:
            raise ConfigError("log is for float and int ranges", key=f"{key}.log")
        if not self.choices:
            raise ConfigError(
                'a categorical needs a non-empty list of choices, e.g. choices = ["sgd", "adam"]',
                key=f"{key}.choices",
            )
        if len(self.choices) > MAX_CHOICES:
            raise ConfigError(
                f"must have at most {MAX_CHOICES:,} choices, but got {len(self.choices):,}",
                key=f"{key}.choices",
            )
        for i, choice in enumerate(self.choices):
            if not (isinstance(choice, str | bool) or is_number(choice)):
                raise ConfigError(
                    f"choices must be strings, numbers or booleans (what Optuna can store), "
                    f"but got {toml_repr(choice)}",
                    key=f"{key}.choices",
                )
            if any(same_value(choice, other) for other in self.choices[:i]):
                raise ConfigError(f"{toml_repr(choice)} appears twice", key=f"{key}.choices")

    def _check_range(self, key: str) -> None:
        if self.choices is not None:
            raise ConfigError(
                f'choices are for type = "categorical"; a {self.type} takes low and high',
                key=f"{key}.choices",
            )
        number = is_int if self.type == "int" else is_number
        kind = "an integer" if self.type == "int" else "a finite number"
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is None:
                raise ConfigError(f"a {self.type} range needs {name}", key=f"{key}.{name}")
            if not number(value):
                raise ConfigError(
                    f"must be {kind}, but got {toml_repr(value)}", key=f"{key}.{name}"
                )
            if self.type == "int" and abs(value) > 2**53:  # Optuna stores it as a float
                raise ConfigError(
                    f"must be at most 2**53 in size, but got {toml_repr(value)}",
                    key=f"{key}.{name}",
                )
        low, high = self.bounds
        if low >= high:
            raise ConfigError(
                f"low must be below high, but got low = {self.low!r}, high = {self.high!r}",
                key=f"{key}.low",
            )
        if not isinstance(self.log, bool):
            raise ConfigError(
                f"must be true or false, but got {toml_repr(self.log)}", key=f"{key}.log"
            )
        if self.log and low <= 0:
            raise ConfigError(
                f"a log scale needs low > 0, but got low = {self.low!r}", key=f"{key}.low"
            )
        if self.step is not None:
            self._check_step(key, self.step, number, kind)
        if self.type == "float":
            object.__setattr__(self, "low", float(low))
            object.__setattr__(self, "high", float(high))
            if self.step is not None:
                object.__setattr__(self, "step", float(self.step))

    def _check_step(self, key: str, step: float, number: Any, kind: str) -> None:
        if self.log:
            raise ConfigError(
                "step cannot be combined with log = true (Optuna samples a log scale "
                "continuously)",
                key=f"{key}.step",
            )
        if not number(step) or step <= 0:
            raise ConfigError(
                f"must be {kind} > 0, but got {toml_repr(self.step)}", key=f"{key}.step"
            )
        # Optuna would lower `high` to the last point of the grid, with only a warning; a study
        # file should say what is searched, so ask for that `high` instead.
        import warnings

        from optuna.distributions import FloatDistribution, IntDistribution

        low, high = self.bounds
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            distribution: IntDistribution | FloatDistribution = (
                IntDistribution(int(low), int(high), step=int(step))  # ints: _check_range
                if self.type == "int"
                else FloatDistribution(low, high, step=step)
            )
        grid_high = distribution.high
        if grid_high != self.high:
            raise ConfigError(
                f"step = {self.step!r} does not divide high - low = {self.high!r} - "
                f"{self.low!r}; the last point of the grid is {grid_high!r}: set high = "
                f"{grid_high!r}",
                key=f"{key}.step",
            )

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a float or int range, both set once __post_init__ has checked them."""
        if self.low is None or self.high is None:
            raise TypeError(f"{self.name} is a categorical: it has choices, not a range")
        return self.low, self.high

    def distribution(self) -> BaseDistribution:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "categorical":
            assert self.choices is not None
            return CategoricalDistribution(self.choices)
        low, high = self.bounds
        if self.type == "int":
            # An int range holds ints (see _check_range), though `bounds` says float.
            return IntDistribution(int(low), int(high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(low, high, log=self.log, step=self.step)

    def suggest(self, trial: BaseTrial) -> Any:
        if self.type == "categorical":
            assert self.choices is not None
            return trial.suggest_categorical(self.name, self.choices)
        low, high = self.bounds
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(low), int(high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, low, high, step=self.step, log=self.log)

    def applies(self, resolved: Mapping[str, Any]) -> bool:
        """Whether every `when` condition holds for the settings' `resolved` values."""
        return all(
            any(same_value(resolved[setting], v) for v in allowed)
            for setting, allowed in self.when.items()
        )

    def describe(self) -> str:
        if self.type == "categorical":
            assert self.choices is not None
            text = f"{self.name}: one of {', '.join(_fmt(c) for c in self.choices)}"
        else:
            text = f"{self.name}: {self.type} in [{_fmt(self.low)}, {_fmt(self.high)}]"
            if self.log:
                text += ", log"
            if self.step is not None:
                text += f", step {_fmt(self.step)}"
        for setting, allowed in self.when.items():
            text += f", when {setting} in ({', '.join(_fmt(v) for v in allowed)})"
        return text

    def __repr__(self) -> str:
        return f"ParamSpec({self.describe()})"


def base_value(base: TrainConfig, setting: str) -> Any:
    """A setting's value in `base`; the virtual ones read its (uniform) hidden_size_list."""
    if setting == "n_hidden_layers":
        return len(base.hidden_size_list)
    if setting == "hidden_size":
        return base.hidden_size_list[0] if base.hidden_size_list else None
    return getattr(base, setting)


@dataclass(frozen=True, repr=False)
class SearchSpace:
    """Searched settings, ordered so that each condition refers only to earlier ones."""

    params: tuple[ParamSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        seen: set[str] = set()
        names = {p.name for p in self.params}
        for param in self.params:
            if param.name in seen:
                raise ConfigError("is searched twice", key=f"search.{param.name}")
            for setting in param.when:
                if setting in names and setting not in seen:
                    raise ConfigError(
                        f"the condition on {setting!r} must come after [search.{setting}]; "
                        "use SearchSpace.ordered to sort the parameters",
                        key=f"search.{param.name}.when",
                    )
            seen.add(param.name)

    @classmethod
    def ordered(cls, params: tuple[ParamSpec, ...] | list[ParamSpec]) -> SearchSpace:
        """The space with `params` sorted so that conditions come after what they test.

        File order is kept where the conditions allow it; a cycle is an error naming it.
        """
        by_name = {p.name: p for p in params}
        done: dict[str, ParamSpec] = {}

        def visit(param: ParamSpec, path: tuple[str, ...]) -> None:
            if param.name in done:
                return
            if param.name in path:
                cycle = " -> ".join((*path[path.index(param.name) :], param.name))
                raise ConfigError(
                    f"the when conditions form a cycle: {cycle}; a setting cannot decide, "
                    "directly or not, whether it is itself sampled",
                    key=f"search.{param.name}.when",
                )
            for setting in param.when:
                if setting in by_name:
                    visit(by_name[setting], (*path, param.name))
            done[param.name] = param

        for param in params:
            visit(param, ())
        return cls(tuple(done.values()))

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def grid(self) -> dict[str, list[Any]]:
        """Every combination of the settings' choices, as Optuna's GridSampler takes it.

        A grid enumerates choices, so every setting must be categorical and unconditional.
        """
        if not self.params:
            raise ConfigError(
                "sampler 'grid' needs at least one [search.<setting>] with choices",
                key="sampler.name",
            )
        for param in self.params:
            if param.type != "categorical":
                raise ConfigError(
                    f"sampler 'grid' enumerates choices, but this is a {param.type} range; "
                    "give it choices = [...] or use another sampler",
                    key=f"search.{param.name}",
                )
            if param.when:
                raise ConfigError(
                    "sampler 'grid' takes no conditional settings (when = ...); search the "
                    "combinations without it, or use another sampler",
                    key=f"search.{param.name}.when",
                )
        grid = {p.name: list(p.choices or ()) for p in self.params}
        size = math.prod(len(choices) for choices in grid.values())
        if size > MAX_GRID:
            raise ConfigError(
                f"the grid has {size:,} combinations; sampler 'grid' runs at most "
                f"{MAX_GRID:,}: search fewer choices, or use another sampler",
                key="sampler.name",
            )
        return grid

    def distributions(self) -> dict[str, BaseDistribution]:
        """Every parameter's distribution, conditional ones included."""
        return {p.name: p.distribution() for p in self.params}

    def suggest(self, trial: BaseTrial, base: TrainConfig) -> TrainConfig:
        """The trial's config: `base` with each applicable parameter suggested by `trial`.

        A parameter whose `when` does not hold is not suggested at all, so it is absent from
        `trial.params` and a `FixedTrial` need not carry it. Conditions read the values
        suggested so far, else `base`'s.
        """
        values: dict[str, Any] = {}
        for param in self.params:
            resolved = {s: values[s] if s in values else base_value(base, s) for s in param.when}
            if param.applies(resolved):
                values[param.name] = param.suggest(trial)
        if any(key in values for key in VIRTUAL_KEYS):
            n = values.pop("n_hidden_layers", base_value(base, "n_hidden_layers"))
            size = values.pop("hidden_size", base_value(base, "hidden_size"))
            values["hidden_size_list"] = (size,) * n
        return base.replace(**values)

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.params) or "(nothing searched)"

    def __repr__(self) -> str:
        return f"SearchSpace({'; '.join(p.describe() for p in self.params)})"
