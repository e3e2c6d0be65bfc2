"""A study file's `[search.<setting>]` tables, checked against the settings they search.

Every range end and every choice is checked by the same rules `TrainConfig` applies (see
`setting_error`), and every `when` condition must be able to hold, so that a trial can never
be handed a config that fails to build, and no parameter is silently never sampled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpo.errors import ConfigError
from hpo.spec.config import TrainConfig
from hpo.spec.keys import (
    DATA_KEYS,
    PARAM_TYPES_FOR_KIND,
    SEARCHABLE,
    SECTION_KEYS,
    SETTING_KINDS,
    UNSEARCHABLE,
    VIRTUAL_KEYS,
    is_int,
    is_number,
    setting_error,
    toml_repr,
)
from hpo.spec.search.space import ParamSpec, SearchSpace, base_value, same_value

PARAM_KEYS: tuple[str, ...] = ("type", "low", "high", "log", "step", "choices", "when")

# A fixed setting as the file gives it: name -> (section, value).
Fixed = Mapping[str, tuple[str, Any]]


def hidden_sizes(fixed: Fixed, searched: set[str]) -> tuple[int, ...] | None:
    """The fixed hidden_size_list for `base`, from it or from the two virtual keys.

    With only one of n_hidden_layers and hidden_size fixed (the other searched), the list is
    uniform at the default's length or size, so that `SearchSpace.suggest` reads the fixed one
    back from it. None: neither is given; the default stands.
    """
    given = [k for k in VIRTUAL_KEYS if k in fixed or k in searched]
    if given and "hidden_size_list" in fixed:
        raise ConfigError(
            f"hidden_size_list cannot be combined with {' and '.join(given)}, which set "
            "hidden_size_list = [hidden_size] * n_hidden_layers; keep one of the two ways",
            key="model.hidden_size_list",
        )
    if len(given) == 1:
        (present,) = given
        (other,) = (k for k in VIRTUAL_KEYS if k != present)
        where = "model" if present in fixed else "search"
        raise ConfigError(
            f"{present} needs {other} too, set in [model] or searched: "
            "hidden_size_list = [hidden_size] * n_hidden_layers",
            key=f"{where}.{present}",
        )
    if "hidden_size_list" in fixed:
        return tuple(fixed["hidden_size_list"][1])
    default = TrainConfig().hidden_size_list
    n = fixed["n_hidden_layers"][1] if "n_hidden_layers" in fixed else None
    size = fixed["hidden_size"][1] if "hidden_size" in fixed else None
    if n is None and size is None:
        return None
    return (size or default[0],) * (n or len(default))


def _check_name(name: str, spec: Any, fixed: Fixed) -> None:
    key = f"search.{name}"
    if name in UNSEARCHABLE:
        raise ConfigError(f"{name} cannot be searched: {UNSEARCHABLE[name]}", key=key)
    if name in DATA_KEYS or name in SECTION_KEYS["study"]:
        section = "data" if name in DATA_KEYS else "study"
        raise ConfigError(
            f"{name} is a [{section}] setting, and only [model] and [train] settings can be "
            f"searched: {', '.join(SEARCHABLE)}",
            key=key,
        )
    if name not in SEARCHABLE:
        raise ConfigError(
            f"unknown setting {name!r}; the settings that can be searched are "
            f"{', '.join(SEARCHABLE)}",
            key=key,
        )
    if not isinstance(spec, dict):
        raise ConfigError(
            f"must be a table: write [search.{name}] with type, low and high (or choices) "
            f"under it, but got {toml_repr(spec)}",
            key=key,
        )
    for param_key in spec:
        if param_key not in PARAM_KEYS:
            raise ConfigError(
                f"unknown key {param_key!r}; the keys of a searched setting are "
                f"{', '.join(PARAM_KEYS)}",
                key=f"{key}.{param_key}",
            )
    if name in fixed:
        section, value = fixed[name]
        raise ConfigError(
            f"{name} is both set in [{section}] ({name} = {toml_repr(value)}) and searched "
            f"in [search.{name}]; remove one of them",
            key=key,
        )


def _param(name: str, spec: Mapping[str, Any]) -> ParamSpec:
    key = f"search.{name}"
    kind = SETTING_KINDS[name]
    type_ = spec.get("type", "categorical" if "choices" in spec else None)
    if type_ is None:
        raise ConfigError(
            'needs type = "float", "int" or "categorical" (or just choices = [...])',
            key=f"{key}.type",
        )
    if type_ in ("float", "int", "categorical") and type_ not in PARAM_TYPES_FOR_KIND[kind]:
        allowed = " or ".join(f'"{t}"' for t in PARAM_TYPES_FOR_KIND[kind])
        raise ConfigError(
            f"{name} is searched as type = {allowed}, but got {toml_repr(type_)}",
            key=f"{key}.type",
        )
    choices = spec.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise ConfigError(f"must be a list, but got {toml_repr(choices)}", key=f"{key}.choices")
    when = spec.get("when", {})
    if not isinstance(when, dict):
        raise ConfigError(
            'must be a table such as when = { optimizer = ["momentum", "nesterov"] }, '
            f"but got {toml_repr(when)}",
            key=f"{key}.when",
        )
    param = ParamSpec(
        name=name,
        type=type_,
        low=spec.get("low"),
        high=spec.get("high"),
        log=spec.get("log", False),
        step=spec.get("step"),
        choices=tuple(choices) if choices is not None else None,
        when=when,
    )
    ends = (
        {"choices": param.choices} if param.choices else {"low": [param.low], "high": [param.high]}
    )
    for field, values in ends.items():
        for value in values or ():
            error = setting_error(name, value)
            if error is not None:
                raise ConfigError(error, key=f"{key}.{field}")
    return param


def _possible(param: ParamSpec, value: Any) -> bool:
    if param.type == "categorical":
        return any(same_value(value, c) for c in param.choices or ())
    number = is_int if param.type == "int" else is_number
    low, high = param.bounds
    return number(value) and low <= value <= high


def _check_when(
    param: ParamSpec, params: Mapping[str, ParamSpec], base: TrainConfig, fixed: Fixed
) -> None:
    for setting, values in param.when.items():
        key = f"search.{param.name}.when.{setting}"
        if setting not in SETTING_KINDS:
            raise ConfigError(
                f"unknown setting {setting!r}; a condition can test {', '.join(SETTING_KINDS)}",
                key=key,
            )
        for value in values:
            if not (isinstance(value, str | bool) or is_number(value)):
                raise ConfigError(
                    f"must be a value or a list of values, but got {toml_repr(value)}", key=key
                )
        if setting in params:
            searched = params[setting]
            for value in values:
                if not _possible(searched, value):
                    raise ConfigError(
                        f"{toml_repr(value)} is never a value of {setting}, which is searched "
                        f"as {searched.describe()}",
                        key=key,
                    )
            continue
        if setting in VIRTUAL_KEYS and setting not in fixed:
            raise ConfigError(
                f"{setting} is neither searched nor set in [model], so it has no value to test",
                key=key,
            )
        for value in values:
            error = setting_error(setting, value)
            if error is not None:
                raise ConfigError(
                    f"{toml_repr(value)} is never a value of {setting}: {error}", key=key
                )
        current = base_value(base, setting)
        if not any(same_value(current, v) for v in values):
            where = f"set in [{fixed[setting][0]}]" if setting in fixed else "the default"
            raise ConfigError(
                f"the condition never holds: {setting} is not searched, and is "
                f"{toml_repr(current)} ({where}), so {param.name} would never be sampled; "
                f"search {setting}, or remove [search.{param.name}]",
                key=key,
            )


def parse_search(table: Mapping[str, Any], *, fixed: Fixed, base: TrainConfig) -> SearchSpace:
    """The `[search]` section as a `SearchSpace`, ordered so that conditions come after what
    they test; `base` holds the fixed settings (and defaults) that conditions may test."""
    params: dict[str, ParamSpec] = {}
    for name, spec in table.items():
        _check_name(name, spec, fixed)
        params[name] = _param(name, spec)
    for param in params.values():
        _check_when(param, params, base, fixed)
    return SearchSpace.ordered(list(params.values()))
