"""The settings of the studies that train nothing, each from its own section of a study file.

`[paths]` (kind optimizer_paths) and `[activations]` (kind activations): see `hpo.spec.kinds`
for what each kind does, and `hpo.engine.probes` for how a trial computes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError
from hpo.spec.keys import is_int, toml_repr
from trainer import OPTIMIZERS, make_optimizer

if TYPE_CHECKING:
    from hpo.spec.search.space import SearchSpace


@dataclass(frozen=True)
class PathsSettings:
    """`[paths]`: the book's ch06/optimizer_compare_naive.py, from `start`, `steps` updates.

    `lr` maps each compared optimizer to its learning rate (the book gives each its own); the
    other hyperparameters are the trainer's defaults, which are the book's.
    """

    lr: Mapping[str, float]
    start: tuple[float, float] = (-7.0, 2.0)
    steps: int = 30

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> PathsSettings:
        """From `[paths]` (its keys' types checked already), which must give the rates."""
        if "lr" not in table:
            raise ConfigError(
                'a study of kind = "optimizer_paths" needs a learning rate per optimizer: '
                "add [paths] with lr = { sgd = 0.95, ... }",
                key="paths.lr",
            )
        return cls(**table)

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

    def check_space(self, space: SearchSpace) -> None:
        """The searched optimizers are those with a learning rate here."""
        (optimizer,) = (p for p in space.params if p.name == "optimizer")
        self.check_optimizers(tuple(optimizer.choices or ()))

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

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> ActivationSettings:
        """From `[activations]` (its keys' types checked already); every key has a default."""
        return cls(**table)

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

    def check_space(self, space: SearchSpace) -> None:
        """Nothing to check: `[search]` holds only [model] settings (see `StudyKind`)."""

    def as_dict(self) -> dict[str, Any]:
        return {"n_inputs": self.n_inputs, "input_dim": self.input_dim, "bins": self.bins}

    def describe(self) -> str:
        return (
            f"{self.n_inputs} random inputs of {self.input_dim} features, histograms of "
            f"{self.bins} bins"
        )


ProbeSettings = PathsSettings | ActivationSettings
