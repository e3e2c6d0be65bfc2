"""Study kinds: what one trial of a study does, and which sections of a study file it takes.

    training         the default: a trial trains the chapter's network on data ([data],
                     [model], [train]); every study before these two kinds
    optimizer_paths  a trial runs one of the chapter's optimizers on f(x, y) = x²/20 + y² and
                     records its path (sections 6.1.3 to 6.1.7): [paths]
    activations      a trial draws the hidden-layer activations of an untrained network for
                     random inputs (section 6.2.2): [model] (the architecture), [activations]

The last two train nothing, so they take no [data] or [train], and nothing can be pruned. Their
trials are computed in `hpo.engine.probes`; what they compare is searched like any setting
(`[search.optimizer]`, `[search.weight_init_std]`, ...), usually with the grid sampler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from hpo.errors import ConfigError
from hpo.spec.keys import is_int, toml_repr
from trainer import OPTIMIZERS, make_optimizer

TRAINING = "training"
KINDS: tuple[str, ...] = (TRAINING, "optimizer_paths", "activations")

# The metric a trial of each kind returns, and the direction that improves it; the first is
# the kind's default. f: f(x, y) at the path's last point. entropy: how evenly the last hidden
# layer's activations spread over their histogram (see hpo.engine.probes.spread_entropy).
Direction = Literal["maximize", "minimize"]  # Optuna's names, and a study file's
METRICS: dict[str, dict[str, Direction]] = {
    TRAINING: {"val_acc": "maximize", "val_loss": "minimize"},
    "optimizer_paths": {"f": "minimize"},
    "activations": {"entropy": "maximize"},
}

# What a study of each kind that trains nothing takes, besides [study], [search.<setting>],
# [sampler] and [pruner]: its sections, and the [model]/[train] settings it may fix or search.
_ALWAYS = ("study", "search", "sampler", "pruner")
KIND_SECTIONS: dict[str, tuple[str, ...]] = {
    "optimizer_paths": ("paths",),
    "activations": ("model", "activations"),
}
KIND_SETTINGS: dict[str, tuple[str, ...]] = {
    "optimizer_paths": ("optimizer",),  # searched: the other hyperparameters are the book's
    "activations": (
        "hidden_size_list", "n_hidden_layers", "hidden_size", "activation", "weight_init_std",
        "dtype",
    ),
}  # fmt: skip
_WHY = {
    "optimizer_paths": "it runs optimizers on f(x, y) = x²/20 + y², with no network and no data",
    "activations": "it draws the activations of an untrained network for random inputs, "
    "with no data, no training, batch norm, dropout or weight decay",
}


def default_metric(kind: str) -> str:
    return next(iter(METRICS.get(kind, METRICS[TRAINING])))


def _first_key(section: str, table: Any) -> str:
    """`section.key` of the section's first key, so that an error names a key and its value."""
    if isinstance(table, dict) and table:
        return f"{section}.{next(iter(table))}"
    return section


def _given(table: Any) -> str:
    if isinstance(table, dict) and table:
        key, value = next(iter(table.items()))
        return f"{key} = {toml_repr(value)}"
    return f"[{table}]" if isinstance(table, str) else "the section"


def check_kind_sections(kind: str, document: Mapping[str, Any]) -> None:
    """Refuse the sections and settings that a study of `kind` does not use.

    A [paths] or [activations] section belongs to its kind only; a kind that trains nothing
    takes no [data] or [train], and of [model] and [search.<setting>] only its own settings.
    """
    if kind == TRAINING:
        for name, owner in (("paths", "optimizer_paths"), ("activations", "activations")):
            if name in document:
                raise ConfigError(
                    f"[{name}] applies only to a study of kind = {toml_repr(owner)}, but this "
                    f"study is of kind = {toml_repr(TRAINING)} and got {_given(document[name])}; "
                    f"set [study] kind = {toml_repr(owner)} or remove [{name}]",
                    key=_first_key(name, document[name]),
                )
        return
    sections = (*_ALWAYS, *KIND_SECTIONS[kind])
    for name, table in document.items():
        if name in sections:
            continue
        headers = ", ".join(f"[{s}]" for s in sections)
        raise ConfigError(
            f"[{name}] does not apply to a study of kind = {toml_repr(kind)} ({_WHY[kind]}), "
            f"but got {_given(table)}; its sections are {headers}",
            key=_first_key(name, table),
        )
    settings = KIND_SETTINGS[kind]
    for section in ("model", "search"):
        table = document.get(section)
        if not isinstance(table, dict):
            continue
        for name, value in table.items():
            if name in settings:
                continue
            shown = f"{name} = {toml_repr(value)}" if section == "model" else f"[search.{name}]"
            raise ConfigError(
                f"{name} does not apply to a study of kind = {toml_repr(kind)} ({_WHY[kind]}), "
                f"but got {shown}; the settings it takes are {', '.join(settings)}",
                key=f"{section}.{name}",
            )
    if kind == "optimizer_paths" and "optimizer" not in (document.get("search") or {}):
        raise ConfigError(
            'a study of kind = "optimizer_paths" compares optimizers, but it searches none; '
            'add [search.optimizer] with choices = ["sgd", "momentum", ...]',
            key="search.optimizer",
        )


@dataclass(frozen=True)
class PathsSettings:
    """`[paths]`: the book's ch06/optimizer_compare_naive.py, from `start`, `steps` updates.

    `lr` maps each compared optimizer to its learning rate (the book gives each its own); the
    other hyperparameters are the trainer's defaults, which are the book's.
    """

    lr: Mapping[str, float]
    start: tuple[float, float] = (-7.0, 2.0)
    steps: int = 30

    def __post_init__(self) -> None:
        if not isinstance(self.lr, Mapping) or not self.lr:
            raise ConfigError(
                "must be a table of learning rates by optimizer, e.g. "
                "{ sgd = 0.95, adam = 0.3 }, one for each optimizer searched",
                key="paths.lr",
            )
        for name, value in self.lr.items():
            if name not in OPTIMIZERS:
                raise ConfigError(
                    f"must be one of {sorted(OPTIMIZERS)}, but got {name!r}",
                    key=f"paths.lr.{name}",
                )
            try:
                make_optimizer(name, lr=value)
            except ValueError as error:
                raise ConfigError(str(error), key=f"paths.lr.{name}") from None
        object.__setattr__(self, "lr", MappingProxyType({k: float(v) for k, v in self.lr.items()}))
        start = self.start
        if not isinstance(start, list | tuple) or len(start) != 2:
            raise ConfigError(
                f"must be a point [x, y], but got {toml_repr(start)}", key="paths.start"
            )
        object.__setattr__(self, "start", (float(start[0]), float(start[1])))
        if not is_int(self.steps) or not 1 <= self.steps <= 10_000:
            raise ConfigError(
                f"must be an integer from 1 to 10,000 (updates; the book makes 30), but got "
                f"{toml_repr(self.steps)}",
                key="paths.steps",
            )

    def check_optimizers(self, choices: tuple[Any, ...]) -> None:
        """Every searched optimizer has a learning rate here, and every rate is used."""
        for choice in choices:
            if choice not in self.lr:
                raise ConfigError(
                    f"{choice} is searched but has no learning rate: add {choice} = <lr> to "
                    f"paths.lr (it sets {', '.join(self.lr)})",
                    key=f"paths.lr.{choice}",
                )
        for name in self.lr:
            if name not in choices:
                raise ConfigError(
                    f"{name} has a learning rate, but it is not among search.optimizer.choices "
                    f"({', '.join(map(str, choices))}); remove it, or search it",
                    key=f"paths.lr.{name}",
                )

    def as_dict(self) -> dict[str, Any]:
        return {"start": list(self.start), "steps": self.steps, "lr": dict(self.lr)}

    def describe(self) -> str:
        rates = ", ".join(f"{k} {v:g}" for k, v in self.lr.items())
        x, y = self.start
        return f"f(x, y) = x²/20 + y² from ({x:g}, {y:g}), {self.steps} updates; lr {rates}"


@dataclass(frozen=True)
class ActivationSettings:
    """`[activations]`: the book's ch06/weight_init_activation_histogram.py.

    `n_inputs` random inputs of `input_dim` standard-normal features (the book's
    `np.random.randn(1000, 100)`) go through the hidden layers of `[model]`; each layer's
    activations are counted in `bins` bins (the book's `plt.hist(a.flatten(), 30)`).
    """

    n_inputs: int = 1000
    input_dim: int = 100
    bins: int = 30

    def __post_init__(self) -> None:
        # The book: 1000 inputs of 100 features, 30 bins.
        for name, low, high in (("n_inputs", 1, 100_000), ("input_dim", 1, 10_000),
                                ("bins", 2, 1_000)):  # fmt: skip
            value = getattr(self, name)
            if not is_int(value) or not low <= value <= high:
                raise ConfigError(
                    f"must be an integer from {low} to {high:,}, but got {toml_repr(value)}",
                    key=f"activations.{name}",
                )

    def as_dict(self) -> dict[str, Any]:
        return {"n_inputs": self.n_inputs, "input_dim": self.input_dim, "bins": self.bins}

    def describe(self) -> str:
        return (
            f"{self.n_inputs} random inputs of {self.input_dim} features, histograms of "
            f"{self.bins} bins"
        )


ProbeSettings = PathsSettings | ActivationSettings


def probe_settings(kind: str, document: Mapping[str, Any]) -> ProbeSettings | None:
    """The kind's own settings from its section (checked for types already), or None."""
    if kind == "optimizer_paths":
        table = dict(document.get("paths") or {})
        if "lr" not in table:
            raise ConfigError(
                'a study of kind = "optimizer_paths" needs a learning rate per optimizer: '
                "add [paths] with lr = { sgd = 0.95, ... }",
                key="paths.lr",
            )
        return PathsSettings(**table)
    if kind == "activations":
        return ActivationSettings(**dict(document.get("activations") or {}))
    return None
