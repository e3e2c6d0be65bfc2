"""The study file's vocabulary: which key lives in which section, and what type it takes.

Declared as data, so that the parser, its error messages and `studies/README.md` say the same
thing, and so that a test can check the tables against `DataConfig` and `TrainConfig`. The
names are the book's and the configs' own: one vocabulary from the trainer to the user.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
from typing import Any

from hpo.errors import ConfigError
from hpo.spec.config import TrainConfig
from hpo.spec.limits import MAX_LAYERS, MAX_WIDTH
from trainer import OPTIMIZERS

SECTIONS: tuple[str, ...] = (
    "study", "data", "model", "train", "evaluation", "selection", "paths", "activations",
    "search", "sampler", "pruner", "narrowing", "enqueue",
)  # fmt: skip

# Kinds of value, checked before any range: "int" refuses booleans (True is an int in Python)
# and floats; "number" takes integers and finite floats, never booleans.
STUDY_KEYS = {
    "name": "str",
    "kind": "str",
    "metric": "str",
    "direction": "str",
    "n_trials": "int",
    "max_epochs": "int",
    "timeout": "number",
    "seed": "int",
}
DATA_KEYS = {
    "dataset": "str",
    "data_dir": "str",
    "path": "str",
    "x_key": "str",
    "y_key": "str",
    "n_samples": "int",
    "subset": "str",
    "val_fraction": "number",
    "test_fraction": "number",
}
MODEL_KEYS = {
    "hidden_size_list": "int_list",
    "activation": "str",
    "weight_init_std": "str_or_number",
    "use_batchnorm": "bool",
    "dropout_ratio": "number",
    "weight_decay_lambda": "number",
    "dtype": "str",
    "n_hidden_layers": "int",
    "hidden_size": "int",
}
TRAIN_KEYS = {
    "optimizer": "str",
    "lr": "number",
    "momentum": "number",
    "beta1": "number",
    "beta2": "number",
    "decay_rate": "number",
    "epochs": "int",
    "batch_size": "int",
}
EVALUATION_KEYS = {"protocol": "str", "folds": "int", "repeats": "int", "refit": "bool"}
SELECTION_KEYS = {"finalists": "int", "evaluations": "int"}
# The sections of the studies that train nothing (see hpo.spec.kinds): each kind's fixed settings.
PATHS_KEYS = {"start": "number_list", "steps": "int", "lr": "table"}
ACTIVATIONS_KEYS = {"n_inputs": "int", "input_dim": "int", "bins": "int"}
SECTION_KEYS: dict[str, dict[str, str]] = {
    "study": STUDY_KEYS,
    "data": DATA_KEYS,
    "model": MODEL_KEYS,
    "train": TRAIN_KEYS,
    "evaluation": EVALUATION_KEYS,
    "selection": SELECTION_KEYS,
    "paths": PATHS_KEYS,
    "activations": ACTIVATIONS_KEYS,
}
# Written by `hpo narrow` (see hpo.analysis.narrowing), and neither defines what a trial trains, so
# neither is in a study's fingerprint: `[narrowing]` says where a stage came from (provenance
# only), each `[[enqueue]]` table is a trial to run first, e.g. a parent trial to reproduce.
NARROWING_KEYS = {"parent": "str", "rule": "str", "parent_best": "number", "created": "date"}
ENQUEUE_KEYS = {"params": "table", "seed": "int", "parent_trial": "int"}
# Not TrainConfig fields: hidden_size_list = [hidden_size] * n_hidden_layers.
VIRTUAL_KEYS: tuple[str, ...] = ("n_hidden_layers", "hidden_size")
SETTING_KINDS: dict[str, str] = {**MODEL_KEYS, **TRAIN_KEYS}

UNSEARCHABLE: dict[str, str] = {
    "epochs": "the pruner's rungs and the study's budget are counted in epochs, so every "
    "trial trains for the same number; set it in [train]",
    "dtype": "it changes speed, not the model; set it in [model]",
    "hidden_size_list": "a list cannot be a categorical choice; search n_hidden_layers and "
    "hidden_size instead",
}
# Which [search] types fit each kind of setting.
PARAM_TYPES_FOR_KIND: dict[str, tuple[str, ...]] = {
    "number": ("float", "categorical"),
    "int": ("int", "categorical"),
    "str_or_number": ("float", "categorical"),
    "str": ("categorical",),
    "bool": ("categorical",),
}
SEARCHABLE: dict[str, str] = {k: v for k, v in SETTING_KINDS.items() if k not in UNSEARCHABLE}

_KIND_TEXT = {
    "str": "a string",
    "int": "an integer",
    "number": "a finite number",
    "bool": "true or false",
    "int_list": "a list of integers",
    "number_list": "a list of numbers",
    "str_or_number": "a string or a number",
    "table": "a table",
    "date": "a date such as 2026-11-23",
}


def section_of(key: str) -> str | None:
    """The section where `key` belongs, to tell a user who put it elsewhere."""
    return next((name for name, keys in SECTION_KEYS.items() if key in keys), None)


def toml_repr(value: Any) -> str:
    """`value` as it would be written in TOML, so that messages quote the user's own text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_repr(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_repr(v)}" for k, v in value.items()) + " }"
    if isinstance(value, datetime.date):
        return value.isoformat()
    return repr(value)


def _type_name(value: Any) -> str:
    for kind, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "a list"),
        (dict, "a table"),
        (datetime.date, "a date"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    if is_int(value):  # math.isfinite would overflow on an integer past a float's range
        return abs(value) <= sys.float_info.max
    return isinstance(value, float) and math.isfinite(value)


def has_kind(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return is_int(value)
    if kind == "number":
        return is_number(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int_list":
        return isinstance(value, list) and all(is_int(v) for v in value)
    if kind == "number_list":
        return isinstance(value, list) and all(is_number(v) for v in value)
    if kind == "str_or_number":
        return isinstance(value, str) or is_number(value)
    if kind == "table":
        return isinstance(value, dict)
    if kind == "date":
        return isinstance(value, datetime.date)  # a TOML date or date-time, not a string
    raise AssertionError(f"unknown kind {kind!r}")


def check_kind(value: Any, kind: str, *, key: str) -> Any:
    """`value` itself (an int `number` as a float), or a ConfigError saying what was expected."""
    if not has_kind(value, kind):
        raise ConfigError(
            f"must be {_KIND_TEXT[kind]}, but got {toml_repr(value)} ({_type_name(value)})",
            key=key,
        )
    return float(value) if kind == "number" else value


def _optimizer_using(name: str) -> str | None:
    """An optimizer that takes hyperparameter `name`, so that it is validated as it is used."""
    default = TrainConfig().optimizer
    if name in OPTIMIZERS[default].hyperparameter_names():
        return None
    return next(
        (o for o in sorted(OPTIMIZERS) if name in OPTIMIZERS[o].hyperparameter_names()), None
    )


def setting_error(name: str, value: Any) -> str | None:
    """Why `value` is invalid for setting `name` on its own, else None.

    Checked by building a `TrainConfig` with only that setting changed (and, for an optimizer
    hyperparameter such as momentum, an optimizer that uses it), so that the rules stay the
    configs' own. Every rule there is per setting, so a setting valid alone is valid in any
    combination.
    """
    if name in VIRTUAL_KEYS:
        if not is_int(value) or value < 1:
            return f"must be a positive integer, but got {toml_repr(value)}"
        most = MAX_LAYERS if name == "n_hidden_layers" else MAX_WIDTH
        if value > most:
            return f"must be at most {most:,}, but got {toml_repr(value)}"
        changes: dict[str, Any] = {
            "hidden_size_list": (value,) if name == "hidden_size" else (100,) * value
        }
    else:
        changes = {name: value}
        optimizer = _optimizer_using(name)
        if optimizer is not None:
            changes["optimizer"] = optimizer
    try:
        TrainConfig(**changes)
    except ConfigError as error:
        return error.message
    return None
