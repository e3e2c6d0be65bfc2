"""The studies that train nothing: optimizer paths on f(x, y) and activation histograms.

Each trial runs through `ProbeObjective` with a `FixedTrial`, on the shipped study files, and
what it stores is checked against the book's claims and against hand-computed oracles.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import optuna
import pytest

from hpo.engine.probes import ProbeObjective, f, histogram, optimizer_path, spread_entropy
from hpo.spec.study_file import load_study_file
from trainer import SGD, make_optimizer

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def _run(spec, params: dict) -> tuple[float, dict]:
    trial = optuna.trial.FixedTrial(params)
    value = ProbeObjective(spec)(trial)
    return value, trial.user_attrs


@pytest.fixture(scope="module")
def paths_spec():
    return load_study_file(STUDIES / "ch6-1-optimizer-paths.toml", environ={})


@pytest.fixture(scope="module")
def activations():
    """Every setting of the shipped activations study: (activation, std) -> (value, attrs)."""
    spec = load_study_file(STUDIES / "ch6-2-2-activations.toml", environ={})
    grid = spec.space.grid()
    return {
        (a, w): _run(spec, {"activation": a, "weight_init_std": w})
        for a in grid["activation"]
        for w in grid["weight_init_std"]
    }


# -- optimizer paths ---------------------------------------------------------------------------


def test_the_first_sgd_step_is_the_analytic_gradient_step():
    # ∇f(-7, 2) = (x/10, 2y) = (-0.7, 4): one step of lr 0.95 goes to (-6.335, -1.8).
    xs, ys = optimizer_path(SGD(lr=0.95), (-7.0, 2.0), steps=1)
    assert xs == pytest.approx([-7.0, -7.0 + 0.95 * 0.7], abs=1e-15)
    assert ys == pytest.approx([2.0, 2.0 - 0.95 * 4.0], abs=1e-15)


def test_sgd_on_f_is_a_geometric_sequence():
    # x ← x(1 - lr/10), y ← y(1 - 2·lr): after n steps, x₀(0.905)ⁿ and y₀(-0.9)ⁿ.
    xs, ys = optimizer_path(SGD(lr=0.95), (-7.0, 2.0), steps=30)
    n = np.arange(31)
    np.testing.assert_allclose(xs, -7.0 * 0.905**n, rtol=1e-12)
    np.testing.assert_allclose(ys, 2.0 * (-0.9) ** n, rtol=1e-12)


def test_each_path_starts_at_the_start_and_takes_every_step(paths_spec):
    for name in paths_spec.probe.lr:
        value, attrs = _run(paths_spec, {"optimizer": name})
        x, y = attrs["path"]["x"], attrs["path"]["y"]
        assert (x[0], y[0]) == (-7.0, 2.0)
        assert len(x) == len(y) == paths_spec.probe.steps + 1 == 31
        assert attrs["lr"] == paths_spec.probe.lr[name]
        assert value == f(x[-1], y[-1])
        assert len(set(zip(x, y, strict=True))) > 20, name  # it moves at every step
        assert value < f(-7.0, 2.0) / 50, name  # every rate of the file gets well down


def test_the_path_is_the_trainers_own_optimizer(paths_spec):
    # The same updates as the trainer's Adam at lr 0.3 stepping a params dict by hand.
    _, attrs = _run(paths_spec, {"optimizer": "adam"})
    adam = make_optimizer("adam", lr=0.3)
    params = {"x": np.array([-7.0]), "y": np.array([2.0])}
    for x, y in zip(attrs["path"]["x"][1:], attrs["path"]["y"][1:], strict=True):
        adam.update(params, {"x": params["x"] / 10, "y": 2 * params["y"]})
        assert (params["x"][0], params["y"][0]) == (x, y)


@pytest.mark.parametrize("name", ["adam", "adagrad", "rmsprop"])
def test_the_adaptive_rules_end_nearer_the_minimum(paths_spec, name):
    _, attrs = _run(paths_spec, {"optimizer": name})
    x, y = attrs["path"]["x"], attrs["path"]["y"]
    assert math.hypot(x[-1], y[-1]) < math.hypot(x[0], y[0]) / 15
    # AdaGrad and RMSprop move y straight down to 0; Adam, like Momentum, swings through it.
    assert min(y) < -0.5 if name == "adam" else min(y) > -1e-6


def test_sgd_zigzags_in_y_and_momentum_overshoots_in_x(paths_spec):
    # The book's point about SGD (figure 6-3): y changes sign at every step; Momentum
    # (figure 6-5) rolls past x = 0.
    _, sgd = _run(paths_spec, {"optimizer": "sgd"})
    signs = np.sign(sgd["path"]["y"])
    assert np.all(signs[1:] == -signs[:-1])
    _, momentum = _run(paths_spec, {"optimizer": "momentum"})
    assert max(momentum["path"]["x"]) > 0.5


# -- activation histograms ---------------------------------------------------------------------


def _fraction(layer: dict, edges: list[float], low: float, high: float) -> float:
    """The fraction of a layer's activations in the bins between low and high."""
    counts = np.asarray(layer["counts"])
    centres = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
    return counts[(centres > low) & (centres < high)].sum() / counts.sum()


def test_every_layer_counts_every_activation(activations):
    for (activation, _), (_, attrs) in activations.items():
        stored = attrs["histograms"]
        assert len(stored["layers"]) == 5
        assert len(stored["edges"]) == 31
        for layer in stored["layers"]:
            assert sum(layer["counts"]) + layer["below"] + layer["above"] == 1000 * 100
            assert layer["below"] == 0  # none of the three goes below its range
            if activation != "relu":
                assert layer["above"] == 0


def test_sigmoid_with_std_1_saturates_at_0_and_1(activations):
    # Figure 6-10: most of the mass in the outer tenths of (0, 1), in every layer.
    stored = activations[("sigmoid", 1)][1]["histograms"]
    for layer in stored["layers"]:
        outer = 1 - _fraction(layer, stored["edges"], 0.1, 0.9)
        assert outer > 0.6


def test_sigmoid_with_std_0_01_concentrates_at_one_half(activations):
    # Figure 6-11: every unit outputs about the same, 0.5.
    stored = activations[("sigmoid", 0.01)][1]["histograms"]
    for layer in stored["layers"]:
        assert _fraction(layer, stored["edges"], 0.4, 0.6) > 0.999
        assert layer["std"] < 0.03
        assert layer["mean"] == pytest.approx(0.5, abs=0.005)


def test_xavier_spreads_sigmoid_between_the_extremes(activations):
    # Figure 6-13: neither saturated nor collapsed.
    stored = activations[("sigmoid", "xavier")][1]["histograms"]
    for layer in stored["layers"]:
        assert _fraction(layer, stored["edges"], 0.1, 0.9) > 0.97
        assert layer["std"] > 0.1


def test_he_keeps_relus_spread_and_std_0_01_shrinks_it(activations):
    # Figure 6-14: with He every layer's spread is about the first's; with 0.01 each layer
    # shrinks it by about 0.01·√(100/2) ≈ 0.07; Xavier shrinks it more slowly, by about 1/√2.
    he = [layer["std"] for layer in activations[("relu", "he")][1]["histograms"]["layers"]]
    assert max(he) / min(he) < 1.2
    small = [layer["std"] for layer in activations[("relu", 0.01)][1]["histograms"]["layers"]]
    for before, after in itertools.pairwise(small):
        assert 0.04 < after / before < 0.1
    xavier = [layer["std"] for layer in activations[("relu", "xavier")][1]["histograms"]["layers"]]
    for before, after in itertools.pairwise(xavier):
        assert 0.6 < after / before < 0.85


def test_the_value_ranks_each_activations_initial_weights_as_the_book(activations):
    # Within each activation: Xavier and He spread the last layer most, std 1 (saturation,
    # or ReLU's explosion) less, std 0.01 (collapse) least.
    for activation in ("sigmoid", "tanh", "relu"):
        value = {w: activations[(activation, w)][0] for w in (1, 0.01, "xavier", "he")}
        assert min(value["xavier"], value["he"]) > value[1] > value[0.01], (activation, value)


def test_spread_entropy():
    flat = {"counts": [5] * 10, "below": 0, "above": 0}
    assert spread_entropy(flat) == pytest.approx(1.0)
    one = {"counts": [0, 0, 50, 0], "below": 0, "above": 0}
    assert spread_entropy(one) == 0.0
    # Beyond the range counts in the end bin on its side: two equal end bins, log 2 / log 4.
    ends = {"counts": [0, 0, 0, 0], "below": 7, "above": 7}
    assert spread_entropy(ends) == pytest.approx(0.5)


def test_histogram_counts_the_range_ends_inside():
    a = np.array([0.0, 0.25, 0.5, 1.0, 1.5, -0.5])
    layer = histogram(a, bins=2, value_range=(0.0, 1.0))
    assert (layer["counts"], layer["below"], layer["above"]) == ([2, 2], 1, 1)


def test_every_kind_that_trains_nothing_has_a_trial_and_a_figure():
    """The layers above spec keep their per-kind behaviour in registries keyed by the kind's
    name: each covers exactly the kinds that `hpo.spec.kinds` says train nothing."""
    from hpo.analysis.probe_report import FIGURES
    from hpo.engine.probes import PROBES
    from hpo.spec.kinds import STUDY_KINDS

    probe_kinds = {name for name, kind in STUDY_KINDS.items() if not kind.trains}
    assert probe_kinds == {"optimizer_paths", "activations"}
    assert set(PROBES) == probe_kinds
    assert set(FIGURES) == probe_kinds
