"""Options of samplers and pruners declared as data: type, default and range, checked once.

A study file's `[sampler]` and `[pruner]` options are resolved here into the full set the
factory uses, defaults included, so that what a study compared is logged exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from hpo.errors import ConfigError
from hpo.spec.keys import has_kind, toml_repr

Options = Mapping[str, Any]


def no_check(options: Options) -> None:
    """For entries whose options need no check across options."""


@dataclass(frozen=True)
class Option:
    """One option: `kind` is "int", "bool", "str" or "fraction" (a number in (0, 1]); None as
    default means "not set"."""

    kind: str
    default: Any
    minimum: int | None = None
    choices: tuple[str, ...] = ()
    help: str = ""
    maximum: int | None = None  # where memory or time grows with the value

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(toml_repr(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "fraction":
            return "a number in (0, 1]"
        if self.minimum is not None and self.maximum is not None:
            return f"an integer from {self.minimum} to {self.maximum:,}"
        return "an integer" + (f" >= {self.minimum}" if self.minimum is not None else "")

    def describe(self) -> str:
        default = "unset" if self.default is None else toml_repr(self.default)
        return f"{self.allowed()}, default {default}"

    def is_valid(self, value: Any) -> bool:
        if value is None:
            return self.default is None  # an unset option, as resolved options carry it
        if self.kind == "fraction":
            return has_kind(value, "number") and 0 < value <= 1
        if not has_kind(value, self.kind):
            return False
        if self.choices and value not in self.choices:
            return False
        if self.maximum is not None and value > self.maximum:
            return False
        return self.minimum is None or value >= self.minimum


def lookup(registry: Mapping[str, Any], name: Any, *, what: str) -> Any:
    """The registry entry for `name`, or a ConfigError listing the valid names."""
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(
            f"unknown {what} {toml_repr(name)}; choose one of {', '.join(registry)}",
            key=f"{what}.name",
        )
    return registry[name]


def resolve(
    declared: Mapping[str, Option], given: Mapping[str, Any], *, what: str, name: str
) -> Mapping[str, Any]:
    """Every declared option, the given ones checked and the rest at their defaults."""
    valid = ", ".join(f"{k} ({o.describe()})" for k, o in declared.items())
    for key, value in given.items():
        if key == "seed":
            raise ConfigError(
                "the seed is not a file option: it comes from `seed` in [study], and each "
                "worker derives its own from it",
                key=f"{what}.seed",
            )
        if key not in declared:
            takes = f"its options are {valid}" if declared else "it takes no options"
            raise ConfigError(
                f"unknown option {key!r} for {what} {name!r}; {takes}", key=f"{what}.{key}"
            )
        if not declared[key].is_valid(value):
            raise ConfigError(
                f"must be {declared[key].allowed()} for {what} {name!r}, but got "
                f"{toml_repr(value)}; its options are {valid}",
                key=f"{what}.{key}",
            )
    return MappingProxyType({k: given.get(k, o.default) for k, o in declared.items()})


def spec_repr(kind: str, name: str, options: Options) -> str:
    """E.g. "PrunerSpec('median', n_startup_trials=5, ...)": every option, as resolved."""
    args = "".join(f", {k}={v!r}" for k, v in options.items())
    return f"{kind}({name!r}{args})"
