"""The objective of the studies that train nothing: optimizer paths and activation histograms.

A trial computes one setting of the book's comparison, keeps what the figure needs in its user
attributes (so that `hpo report` draws it from the storage, without computing it again), and
returns one number, the study's metric:

- `optimizer_paths` (ch06/optimizer_compare_naive.py): the trainer's own optimizer takes
  `steps` updates on f(x, y) = x²/20 + y² from `start`; the trial keeps the path
  (`path = {"x": [...], "y": [...]}`, steps + 1 points) and returns f at its last point, to be
  minimised: how near the minimum at (0, 0) the optimizer got in that many steps.
- `activations` (ch06/weight_init_activation_histogram.py): random inputs go through the
  hidden layers of a network built by the trainer, untrained; the trial keeps each layer's
  histogram (`histograms`) and returns the normalised entropy of the last layer's histogram,
  to be maximised (see `spread_entropy`).

Like `hpo.engine.objective`, pure apart from the trial it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import optuna
from numpy.typing import NDArray

from hpo.engine.objective import TrialObserver, trial_seed
from hpo.spec.config import TrainConfig
from hpo.spec.probe_settings import ActivationSettings, PathsSettings
from hpo.spec.seeds import INIT_STREAM, derive_seed
from hpo.spec.study_file import StudySpec
from trainer import Optimizer

INPUT_STREAM = 4  # the random inputs of an activations study: derive_seed(study seed, 4)
# Each activation's histogram range: its output range for sigmoid (the book's (0, 1)) and
# tanh; for ReLU, 0 to 4 holds all but about 0.5% of the activations of He's initial weights
# (half-normal with E[a²] = 1 at every layer), so that its right place is in view.
HISTOGRAM_RANGES: dict[str, tuple[float, float]] = {
    "sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "relu": (0.0, 4.0),
}


_XY = TypeVar("_XY", float, NDArray[np.floating])  # a point, or a grid of them for contours


def f(x: _XY, y: _XY) -> _XY:
    """The book's f(x, y) = x²/20 + y² (its equation 6.2): 20 times steeper in y than in x."""
    return x * x / 20.0 + y * y


def grad_f(x: NDArray[np.floating], y: NDArray[np.floating]) -> dict[str, NDArray[np.floating]]:
    """∂f/∂x = x/10, ∂f/∂y = 2y, as the trainer's optimizers take gradients: by name."""
    return {"x": x / 10.0, "y": 2.0 * y}


def optimizer_path(
    optimizer: Optimizer, start: tuple[float, float], steps: int
) -> tuple[list[float], list[float]]:
    """The points (x, y) that `optimizer` visits from `start` in `steps` updates of f.

    The parameters are a dict of two arrays, as a network's are, updated in place by the
    trainer's `update(params, grads)`; the path has steps + 1 points, the start first.
    """
    params = {"x": np.array([start[0]]), "y": np.array([start[1]])}
    xs, ys = [float(start[0])], [float(start[1])]
    for _ in range(steps):
        optimizer.update(params, grad_f(params["x"], params["y"]))
        xs.append(float(params["x"][0]))
        ys.append(float(params["y"][0]))
    return xs, ys


def histogram(
    activations: NDArray[np.floating], *, bins: int, value_range: tuple[float, float]
) -> dict[str, Any]:
    """One layer's histogram as a trial keeps it: counts in `bins` equal bins over
    `value_range` (both ends included), and the counts below and above it."""
    low, high = value_range
    counts, _ = np.histogram(activations, bins=bins, range=value_range)
    return {
        "counts": counts.tolist(),
        "below": int(np.count_nonzero(activations < low)),
        "above": int(np.count_nonzero(activations > high)),
        "mean": float(activations.mean()),
        "std": float(activations.std()),
    }


def spread_entropy(layer: dict[str, Any]) -> float:
    """How evenly a layer's activations spread over its histogram: the entropy of the bin
    frequencies divided by log(bins), 1 for a flat histogram, 0 when one bin holds them all.

    Both of the book's failures lower it: saturation (sigmoid with std 1) piles the
    activations into the two end bins, and a vanishing spread (std 0.01) into one; activations
    beyond the range count in the end bin on their side. Only activations of the same range
    compare well: half of ReLU's are exactly 0, in its first bin, whatever the weights.
    """
    counts = np.asarray(layer["counts"], dtype=np.float64)
    counts[0] += layer["below"]
    counts[-1] += layer["above"]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(len(counts)))


def activation_histograms(
    config: TrainConfig, settings: ActivationSettings, *, input_seed: int, init_seed: int
) -> dict[str, Any]:
    """Each hidden layer's histogram for `settings.n_inputs` standard-normal inputs (the
    book's `np.random.randn(1000, 100)`) through the network of `config`, untrained.

    The network is the trainer's own (weights drawn with `weight_init_std`, biases 0, as the
    book's script has none); its output layer, needed to build it, is never used.
    """
    x = np.random.default_rng(input_seed).standard_normal((settings.n_inputs, settings.input_dim))
    network = config.build_network(settings.input_dim, 2, seed=init_seed)
    value_range = HISTOGRAM_RANGES[config.activation]
    layers = [
        histogram(a, bins=settings.bins, value_range=value_range)
        for a in network.hidden_activations(x)
    ]
    edges = np.linspace(*value_range, settings.bins + 1)
    return {"edges": edges.tolist(), "layers": layers}


class ProbeObjective:
    """`objective(trial) -> float` for a study of kind optimizer_paths or activations.

    `observers` follow the trial as they do a training (see `hpo.engine.objective.TrialObserver`),
    without epochs: the MLflow tracker's child run gets the trial's parameters, seed and
    final value.
    """

    def __init__(self, spec: StudySpec, *, observers: tuple[TrialObserver, ...] = ()) -> None:
        if spec.kind.trains:
            raise ValueError(f"study {spec.study.name!r} trains networks: use Objective")
        self.spec = spec
        self.observers = observers
        self._probe = PROBES[spec.kind.name]

    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        config = self.spec.space.suggest(trial, self.spec.base)
        seed = trial_seed(trial, self.spec.study.seed, self.spec.study.name)
        for observer in self.observers:
            observer.trial_started(trial, seed)
        try:
            value, attrs = self._probe(self.spec, config, seed)
            for key, attr in attrs.items():
                trial.set_user_attr(key, attr)
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise
        finally:
            for observer in self.observers:
                observer.trial_ending(trial)
        return value


# What a trial computes, by kind: its value and the user attributes its figure is drawn from.
ProbeTrial = Callable[[StudySpec, TrainConfig, int], tuple[float, dict[str, Any]]]


def _path_trial(spec: StudySpec, config: TrainConfig, seed: int) -> tuple[float, dict[str, Any]]:
    """The searched optimizer's path, with the learning rate [paths] gives it; f at its end."""
    probe = spec.probe
    assert isinstance(probe, PathsSettings)
    lr = probe.lr[config.optimizer]
    optimizer = config.replace(lr=lr).build_optimizer()
    xs, ys = optimizer_path(optimizer, probe.start, probe.steps)
    return f(xs[-1], ys[-1]), {"path": {"x": xs, "y": ys}, "lr": lr}


def _activations_trial(
    spec: StudySpec, config: TrainConfig, seed: int
) -> tuple[float, dict[str, Any]]:
    """Every hidden layer's histogram; the spread of the last one's."""
    probe = spec.probe
    assert isinstance(probe, ActivationSettings)
    result = activation_histograms(
        config,
        probe,
        input_seed=derive_seed(spec.study.seed, INPUT_STREAM),
        init_seed=derive_seed(seed, INIT_STREAM),
    )
    return spread_entropy(result["layers"][-1]), {"histograms": result}


PROBES: Mapping[str, ProbeTrial] = {
    "optimizer_paths": _path_trial,
    "activations": _activations_trial,
}
