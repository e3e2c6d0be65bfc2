"""Mini-batch training with per-epoch evaluation and a hook for whoever is watching."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._network import MultiLayerNet
from ._optimizers import Optimizer


class TrainingDiverged(ArithmeticError):
    """The loss or the parameters stopped being finite; training stopped at `epoch` (1-based)."""

    def __init__(self, epoch: int, reason: str) -> None:
        super().__init__(f"training diverged in epoch {epoch}: {reason}")
        self.epoch = epoch
        self.reason = reason


@dataclass(frozen=True)
class EpochMetrics:
    """Loss and accuracy on the whole training and validation sets after one epoch.

    Losses are `MultiLayerNet.loss` in inference mode: mean cross-entropy plus ½·λ·ΣW².
    """

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "epoch"}


@dataclass
class TrainingHistory:
    """Every epoch's metrics, in order."""

    epochs: list[EpochMetrics] = field(default_factory=list)

    @property
    def final(self) -> EpochMetrics:
        if not self.epochs:
            raise ValueError("no epoch has finished yet")
        return self.epochs[-1]

    def column(self, name: str) -> list[float]:
        """One metric across epochs, e.g. `history.column("val_acc")`."""
        return [getattr(m, name) for m in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)

    def __iter__(self) -> Iterator[EpochMetrics]:
        return iter(self.epochs)


EpochHook = Callable[[int, EpochMetrics], None]


def train_epoch(
    network: MultiLayerNet,
    optimizer: Optimizer,
    x: NDArray[np.floating],
    t: NDArray[np.integer],
    order: NDArray[np.integer],
    batch_size: int,
    *,
    epoch: int = 1,
) -> None:
    """One pass of updates over `x[order]` in batches: the hot loop of `train`.

    `x` must already be in the network's dtype and `t` integer labels (as `train` prepares
    them); benchmarks time this function so that they time exactly what training runs.
    """
    # The optimizer sees all parameters as one vector: see MultiLayerNet.
    params, grads = {"flat": network.flat_params}, {"flat": network.flat_grads}
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        loss = network.train_step(x[batch], t[batch])
        if not math.isfinite(loss):
            raise TrainingDiverged(
                epoch, f"the training loss became {loss} at batch {start // batch_size}"
            )
        optimizer.update(params, grads)


def train(
    network: MultiLayerNet,
    optimizer: Optimizer,
    x_train: ArrayLike,
    t_train: ArrayLike,
    x_val: ArrayLike,
    t_val: ArrayLike,
    *,
    epochs: int,
    batch_size: int,
    seed: int | np.random.Generator | None = None,
    on_epoch_end: EpochHook | None = None,
    eval_batch_size: int = 2048,
) -> TrainingHistory:
    """Train `network` in place for `epochs` passes over shuffled mini-batches.

    Each epoch visits every training sample once, in an order drawn from `seed`; the last
    batch may be smaller. After the epoch's last update the whole training and validation sets
    are evaluated in inference mode (in batches of `eval_batch_size`), and
    `on_epoch_end(epoch, metrics)` is called with the 1-based epoch. An exception raised by the
    hook (for example a pruning signal) stops training and propagates unchanged.

    Raises:
        TrainingDiverged: a batch loss, an evaluated loss or a parameter is not finite.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, but got {epochs=!r}")
    training = Training(
        network, optimizer, x_train, t_train, x_val, t_val,
        batch_size=batch_size, seed=seed, eval_batch_size=eval_batch_size,
    )  # fmt: skip
    for _ in range(epochs):
        metrics = training.epoch()
        if on_epoch_end is not None:
            on_epoch_end(metrics.epoch, metrics)
    return training.history


class Training:
    """One network's training, one epoch per call of `epoch()`: what `train` loops over.

    Several of these can be stepped in turn, epoch by epoch (the folds of a cross-validation,
    say), and each gives exactly what `train` would have: the same seed, the same network.
    """

    def __init__(
        self,
        network: MultiLayerNet,
        optimizer: Optimizer,
        x_train: ArrayLike,
        t_train: ArrayLike,
        x_val: ArrayLike,
        t_val: ArrayLike,
        *,
        batch_size: int,
        seed: int | np.random.Generator | None = None,
        eval_batch_size: int = 2048,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, but got {batch_size=!r}")
        self.network, self.optimizer = network, optimizer
        # Converted once here, so the loop never converts a batch.
        self.x_train = network._as_input(x_train)
        self.t_train = network._as_labels(t_train)
        self.x_val = network._as_input(x_val)
        self.t_val = network._as_labels(t_val)
        if len(self.x_train) != len(self.t_train) or len(self.x_val) != len(self.t_val):
            raise ValueError(
                f"inputs and labels must have the same length, but got {len(self.x_train)} "
                f"training inputs for {len(self.t_train)} labels and {len(self.x_val)} "
                f"validation inputs for {len(self.t_val)} labels"
            )
        if len(self.x_train) == 0 or len(self.x_val) == 0:
            raise ValueError("training and validation sets must each hold at least one sample")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.rng = np.random.default_rng(seed)
        self.history = TrainingHistory()

    def epoch(self) -> EpochMetrics:
        """Train one more epoch and evaluate; the metrics are also appended to `history`.

        Raises:
            TrainingDiverged: a batch loss, an evaluated loss or a parameter is not finite.
        """
        network, epoch = self.network, len(self.history) + 1
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            order = self.rng.permutation(len(self.x_train))
            train_epoch(
                network, self.optimizer, self.x_train, self.t_train, order, self.batch_size,
                epoch=epoch,
            )  # fmt: skip
            size = self.eval_batch_size
            train_loss, train_acc = network.evaluate(self.x_train, self.t_train, batch_size=size)
            val_loss, val_acc = network.evaluate(self.x_val, self.t_val, batch_size=size)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingDiverged(
                epoch, f"the evaluated loss became {train_loss} (train), {val_loss} (val)"
            )
        if not np.isfinite(network.flat_params).all():
            raise TrainingDiverged(epoch, "a parameter is no longer finite")
        metrics = EpochMetrics(epoch, train_loss, train_acc, val_loss, val_acc)
        self.history.epochs.append(metrics)
        return metrics
