"""Frozen, validated settings for one training run: the data, the network and its training.

Field names are the book's (`hidden_size_list`, `weight_init_std`, `weight_decay_lambda`, ...)
and the same names appear in study files and in MLflow, so one vocabulary runs from the
trainer to the user. Every setting is checked when the object is built, before any data is
loaded or any trial runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from hpo.errors import ConfigError
from hpo.spec.limits import MAX_EPOCHS, MAX_LAYERS, MAX_SAMPLES, MAX_WIDTH
from trainer import OPTIMIZERS, MultiLayerNet, Optimizer, make_optimizer, validate_architecture
from trainer.data import DATASETS


def _positive_int(key: str, value: Any, *, most: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be a positive integer, but got {value!r}", key=key)
    if most is not None and value > most:
        raise ConfigError(f"must be at most {most:,}, but got {value!r}", key=key)
    return value


def _fraction(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f"must be a number in (0, 1), but got {value!r}", key=key)
    return float(value)


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how it is cut into training, validation and (held-out) test sets."""

    dataset: str = "digits"
    data_dir: str | None = None
    path: str | None = None
    x_key: str = "x"
    y_key: str = "y"
    n_samples: int | None = None
    subset: str = "first"
    val_fraction: float = 0.2
    test_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(
                f"must be one of {list(DATASETS)}, but got {self.dataset!r}", key="dataset"
            )
        if self.dataset == "npz" and not self.path:
            raise ConfigError("the npz dataset needs `path` to its .npz file", key="path")
        if self.n_samples is not None:
            _positive_int("n_samples", self.n_samples, most=MAX_SAMPLES)
        if self.subset not in ("first", "random"):
            raise ConfigError(
                f"must be 'first' or 'random', but got {self.subset!r}", key="subset"
            )
        _fraction("val_fraction", self.val_fraction)
        if self.test_fraction is not None:
            _fraction("test_fraction", self.test_fraction)

    def describe(self) -> str:
        """One line: which data, and how it is split."""
        parts = [self.dataset if self.dataset != "npz" else f"npz {self.path}"]
        if self.n_samples is not None:
            parts.append(f"{self.subset} {self.n_samples:,} samples")
        if self.test_fraction is not None:
            parts.append(f"test {self.test_fraction:.0%}")
        parts.append(f"validation {self.val_fraction:.0%}")
        return ", ".join(parts)


@dataclass(frozen=True)
class TrainConfig:
    """The network's architecture and how it is trained: everything a trial may vary."""

    hidden_size_list: tuple[int, ...] = (100, 100)
    activation: str = "relu"
    weight_init_std: str | float = "he"
    use_batchnorm: bool = False
    dropout_ratio: float = 0.0
    weight_decay_lambda: float = 0.0
    optimizer: str = "adam"
    lr: float = 0.001
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    decay_rate: float = 0.99
    epochs: int = 20
    batch_size: int = 100
    dtype: str = "float32"
    _optimizer_keys: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.hidden_size_list, list):
            object.__setattr__(self, "hidden_size_list", tuple(self.hidden_size_list))
        _check_hidden_sizes(self.hidden_size_list)
        try:
            validate_architecture(**self.architecture())
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"must be one of {sorted(OPTIMIZERS)}, but got {self.optimizer!r}",
                key="optimizer",
            )
        keys = OPTIMIZERS[self.optimizer].hyperparameter_names()
        object.__setattr__(self, "_optimizer_keys", keys)
        try:
            self.build_optimizer()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        _positive_int("epochs", self.epochs, most=MAX_EPOCHS)
        _positive_int("batch_size", self.batch_size)

    def architecture(self) -> dict[str, Any]:
        """The keyword arguments of `MultiLayerNet` that this config fixes."""
        return {
            "hidden_size_list": list(self.hidden_size_list),
            "activation": self.activation,
            "weight_init_std": self.weight_init_std,
            "use_batchnorm": self.use_batchnorm,
            "dropout_ratio": self.dropout_ratio,
            "weight_decay_lambda": self.weight_decay_lambda,
            "dtype": self.dtype,
        }

    def optimizer_hyperparameters(self) -> dict[str, float]:
        """Only the hyperparameters the chosen optimizer takes (momentum only for momentum...)."""
        return {key: getattr(self, key) for key in self._optimizer_keys}

    def build_network(self, input_size: int, output_size: int, *, seed: int) -> MultiLayerNet:
        architecture = self.architecture()
        hidden = architecture.pop("hidden_size_list")
        return MultiLayerNet(input_size, hidden, output_size, seed=seed, **architecture)

    def build_optimizer(self) -> Optimizer:
        return make_optimizer(self.optimizer, **self.optimizer_hyperparameters())

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed, validated again."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for logs: architecture, optimizer and its settings."""
        sizes = "-".join(str(h) for h in self.hidden_size_list)
        extras = [self.activation, f"init={self.weight_init_std}"]
        if self.use_batchnorm:
            extras.append("batchnorm")
        if self.dropout_ratio:
            extras.append(f"dropout={self.dropout_ratio:g}")
        if self.weight_decay_lambda:
            extras.append(f"weight_decay_lambda={self.weight_decay_lambda:g}")
        hyper = ", ".join(f"{k}={_short(v)}" for k, v in self.optimizer_hyperparameters().items())
        return (
            f"hidden [{sizes}], {', '.join(extras)}; {self.optimizer}({hyper}); "
            f"{self.epochs} epochs of batch {self.batch_size}"
        )


def _check_hidden_sizes(sizes: Any) -> None:
    """Bounded before anything is built from them (the trainer checks the rest)."""
    if not isinstance(sizes, tuple):
        return
    if len(sizes) > MAX_LAYERS:
        raise ConfigError(
            f"must have at most {MAX_LAYERS} hidden layers, but got {len(sizes):,}",
            key="hidden_size_list",
        )
    for size in sizes:
        if isinstance(size, int) and not isinstance(size, bool) and size > MAX_WIDTH:
            raise ConfigError(
                f"a hidden layer must have at most {MAX_WIDTH:,} units, but got {size:,}",
                key="hidden_size_list",
            )


def parameter_count(hidden_size_list: tuple[int, ...], n_inputs: int, n_classes: int) -> int:
    """The weights and biases of a network of these sizes (batch norm adds two per unit)."""
    sizes = (n_inputs, *hidden_size_list, n_classes)
    return sum((a + 3) * b for a, b in itertools.pairwise(sizes))


def _short(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) and math.isfinite(value) else str(value)
