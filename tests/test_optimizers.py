"""Optimizers: two steps worked by hand, convergence, validation and the flat-vector contract.

The worked steps use the book's test function (section 6.1.2),
f(x, y) = x²/20 + y², ∂f/∂x = x/10, ∂f/∂y = 2y, from (x, y) = (-7, 2). The expected numbers
below are written out from each update rule (the optimizer's docstring and its paper), never
computed by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer import (
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    Momentum,
    Nesterov,
    Optimizer,
    RMSprop,
    make_optimizer,
)

EPS = 1e-7  # the ε of AdaGrad, RMSprop and Adam, as in the book's code


def _gradient(xy: np.ndarray) -> np.ndarray:
    x, y = xy
    return np.array([x / 10, 2 * y])


def _two_steps(optimizer: Optimizer) -> list[tuple[float, float]]:
    params = {"xy": np.array([-7.0, 2.0])}
    points = []
    for _ in range(2):
        optimizer.update(params, {"xy": _gradient(params["xy"])})
        points.append((float(params["xy"][0]), float(params["xy"][1])))
    return points


def _assert_points(actual, expected) -> None:
    np.testing.assert_allclose(np.array(actual), np.array(expected), rtol=1e-12, atol=1e-12)


# -- two steps by hand -----------------------------------------------------------------------


def test_sgd_two_steps_by_hand():
    # W ← W − lr·g with the book's lr = 0.95.
    x1 = -7 - 0.95 * (-7 / 10)  # -6.335
    y1 = 2 - 0.95 * (2 * 2)  # -1.8
    x2 = x1 - 0.95 * (x1 / 10)  # -5.733175
    y2 = y1 - 0.95 * (2 * y1)  # 1.62
    assert (x1, y1) == pytest.approx((-6.335, -1.8))
    assert (x2, y2) == pytest.approx((-5.733175, 1.62))
    _assert_points(_two_steps(SGD(lr=0.95)), [(x1, y1), (x2, y2)])


def test_momentum_two_steps_by_hand():
    # v ← αv − lr·g, W ← W + v with the book's lr = 0.1 and α = 0.9; v starts at 0.
    vx1 = 0.9 * 0 - 0.1 * (-7 / 10)  # 0.07
    vy1 = 0.9 * 0 - 0.1 * (2 * 2)  # -0.4
    x1, y1 = -7 + vx1, 2 + vy1  # (-6.93, 1.6)
    vx2 = 0.9 * vx1 - 0.1 * (x1 / 10)  # 0.063 + 0.0693 = 0.1323
    vy2 = 0.9 * vy1 - 0.1 * (2 * y1)  # -0.36 - 0.32 = -0.68
    x2, y2 = x1 + vx2, y1 + vy2  # (-6.7977, 0.92)
    assert (x2, y2) == pytest.approx((-6.7977, 0.92))
    _assert_points(_two_steps(Momentum(lr=0.1, momentum=0.9)), [(x1, y1), (x2, y2)])


def test_nesterov_two_steps_by_hand():
    # v ← αv − lr·g, W ← W + αv − lr·g (v already updated), lr = 0.1, α = 0.9.
    gx0, gy0 = -7 / 10, 2 * 2
    vx1 = 0.9 * 0 - 0.1 * gx0  # 0.07
    vy1 = 0.9 * 0 - 0.1 * gy0  # -0.4
    x1 = -7 + 0.9 * vx1 - 0.1 * gx0  # -7 + 0.063 + 0.07 = -6.867
    y1 = 2 + 0.9 * vy1 - 0.1 * gy0  # 2 - 0.36 - 0.4 = 1.24
    gx1, gy1 = x1 / 10, 2 * y1  # (-0.6867, 2.48)
    vx2 = 0.9 * vx1 - 0.1 * gx1  # 0.063 + 0.06867 = 0.13167
    vy2 = 0.9 * vy1 - 0.1 * gy1  # -0.36 - 0.248 = -0.608
    x2 = x1 + 0.9 * vx2 - 0.1 * gx1  # -6.867 + 0.118503 + 0.06867 = -6.679827
    y2 = y1 + 0.9 * vy2 - 0.1 * gy1  # 1.24 - 0.5472 - 0.248 = 0.4448
    assert (x1, y1, x2, y2) == pytest.approx((-6.867, 1.24, -6.679827, 0.4448))
    _assert_points(_two_steps(Nesterov(lr=0.1, momentum=0.9)), [(x1, y1), (x2, y2)])


def test_adagrad_two_steps_by_hand():
    # h ← h + g², W ← W − lr·g/(√h + ε) with the book's lr = 1.5; h starts at 0.
    hx1 = 0 + (-7 / 10) ** 2  # 0.49
    hy1 = 0 + (2 * 2) ** 2  # 16
    x1 = -7 - 1.5 * (-7 / 10) / (math.sqrt(hx1) + EPS)  # ≈ -7 + 1.5 = -5.5
    y1 = 2 - 1.5 * (2 * 2) / (math.sqrt(hy1) + EPS)  # ≈ 2 - 1.5 = 0.5
    hx2 = hx1 + (x1 / 10) ** 2  # ≈ 0.49 + 0.3025 = 0.7925
    hy2 = hy1 + (2 * y1) ** 2  # ≈ 16 + 1 = 17
    x2 = x1 - 1.5 * (x1 / 10) / (math.sqrt(hx2) + EPS)
    y2 = y1 - 1.5 * (2 * y1) / (math.sqrt(hy2) + EPS)
    assert (x1, y1) == pytest.approx((-5.5, 0.5), rel=1e-6)
    assert (x2, y2) == pytest.approx((-5.5 + 0.825 / 0.7925**0.5, 0.5 - 1.5 / 17**0.5), rel=1e-6)
    _assert_points(_two_steps(AdaGrad(lr=1.5)), [(x1, y1), (x2, y2)])


def test_rmsprop_two_steps_by_hand():
    # h ← ρh + (1 − ρ)g², W ← W − lr·g/(√h + ε) with lr = 0.1, ρ = 0.99; h starts at 0.
    hx1 = 0.99 * 0 + 0.01 * (-7 / 10) ** 2  # 0.0049
    hy1 = 0.99 * 0 + 0.01 * (2 * 2) ** 2  # 0.16
    x1 = -7 - 0.1 * (-7 / 10) / (math.sqrt(hx1) + EPS)  # ≈ -7 + 0.1·0.7/0.07 = -6
    y1 = 2 - 0.1 * (2 * 2) / (math.sqrt(hy1) + EPS)  # ≈ 2 - 0.1·4/0.4 = 1
    hx2 = 0.99 * hx1 + 0.01 * (x1 / 10) ** 2  # ≈ 0.004851 + 0.0036 = 0.008451
    hy2 = 0.99 * hy1 + 0.01 * (2 * y1) ** 2  # ≈ 0.1584 + 0.04 = 0.1984
    x2 = x1 - 0.1 * (x1 / 10) / (math.sqrt(hx2) + EPS)
    y2 = y1 - 0.1 * (2 * y1) / (math.sqrt(hy2) + EPS)
    assert (x1, y1) == pytest.approx((-6.0, 1.0), rel=1e-5)
    assert (hx2, hy2) == pytest.approx((0.008451, 0.1984), rel=1e-5)
    _assert_points(_two_steps(RMSprop(lr=0.1, decay_rate=0.99)), [(x1, y1), (x2, y2)])


def test_adam_two_steps_by_hand():
    # Kingma & Ba with the bias correction folded into the step size, as in the book:
    # m ← m + (1 − β1)(g − m), v ← v + (1 − β2)(g² − v),
    # W ← W − lr·√(1 − β2ᵗ)/(1 − β1ᵗ) · m/(√v + ε), lr = 0.3 (the book's), β1 = 0.9, β2 = 0.999.
    gx0, gy0 = -7 / 10, 2 * 2
    mx1 = 0 + 0.1 * (gx0 - 0)  # -0.07
    my1 = 0 + 0.1 * (gy0 - 0)  # 0.4
    vx1 = 0 + 0.001 * (gx0**2 - 0)  # 0.00049
    vy1 = 0 + 0.001 * (gy0**2 - 0)  # 0.016
    lr1 = 0.3 * math.sqrt(1 - 0.999**1) / (1 - 0.9**1)
    x1 = -7 - lr1 * mx1 / (math.sqrt(vx1) + EPS)  # ≈ -7 + 0.3 = -6.7 (a first step is ±lr)
    y1 = 2 - lr1 * my1 / (math.sqrt(vy1) + EPS)  # ≈ 2 - 0.3 = 1.7
    gx1, gy1 = x1 / 10, 2 * y1
    mx2 = mx1 + 0.1 * (gx1 - mx1)
    my2 = my1 + 0.1 * (gy1 - my1)
    vx2 = vx1 + 0.001 * (gx1**2 - vx1)
    vy2 = vy1 + 0.001 * (gy1**2 - vy1)
    lr2 = 0.3 * math.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    x2 = x1 - lr2 * mx2 / (math.sqrt(vx2) + EPS)
    y2 = y1 - lr2 * my2 / (math.sqrt(vy2) + EPS)
    assert (x1, y1) == pytest.approx((-6.7, 1.7), rel=1e-5)
    _assert_points(_two_steps(Adam(lr=0.3, beta1=0.9, beta2=0.999)), [(x1, y1), (x2, y2)])


def test_adam_defaults_are_the_papers():
    assert Adam().hyperparameters == {"lr": 0.001, "beta1": 0.9, "beta2": 0.999}


# -- convergence -----------------------------------------------------------------------------

# The book's learning rates (lr 0.1 for Nesterov and RMSprop). After 300 steps the slowest
# (Momentum, Adam) are within about 1e-6 of the minimum; 1e-5 leaves a tenfold margin.
CONVERGENCE = {
    "sgd": {"lr": 0.95},
    "momentum": {"lr": 0.1},
    "nesterov": {"lr": 0.1},
    "adagrad": {"lr": 1.5},
    "rmsprop": {"lr": 0.1},
    "adam": {"lr": 0.3},
}


def test_every_optimizer_is_tested_for_convergence():
    assert set(CONVERGENCE) == set(OPTIMIZERS)


@pytest.mark.parametrize(("name", "hyperparameters"), CONVERGENCE.items())
def test_converges_to_the_minimum(name, hyperparameters):
    optimizer = make_optimizer(name, **hyperparameters)
    params = {"xy": np.array([-7.0, 2.0])}
    for _ in range(300):
        optimizer.update(params, {"xy": _gradient(params["xy"])})
    assert optimizer.iter == 300
    assert np.hypot(*params["xy"]) < 1e-5


# -- hyperparameter validation ---------------------------------------------------------------

BAD_LR = [-0.1, 0.0, float("nan"), float("inf"), -float("inf")]
NOT_NUMBERS = ["0.1", None, [0.1], True]
INVALID = (
    [(name, "lr", value) for name in OPTIMIZERS for value in BAD_LR + NOT_NUMBERS]
    + [(name, "momentum", v) for name in ("momentum", "nesterov") for v in (-0.1, 1.0, 1.5)]
    + [(name, "momentum", v) for name in ("momentum", "nesterov") for v in (float("nan"), "0.9")]
    + [("adam", beta, v) for beta in ("beta1", "beta2") for v in (-0.1, 1.0, 2.0)]
    + [("adam", beta, v) for beta in ("beta1", "beta2") for v in (float("nan"), None)]
    + [("rmsprop", "decay_rate", v) for v in (0.0, 1.0, -0.5, 1.5, float("nan"), "0.99")]
)


@pytest.mark.parametrize(("name", "parameter", "value"), INVALID)
def test_invalid_hyperparameter_is_rejected_with_its_name_and_value(name, parameter, value):
    with pytest.raises(ValueError, match=parameter) as excinfo:
        make_optimizer(name, **{parameter: value})
    assert str(value) in str(excinfo.value)
    # The classes validate too, not only the factory.
    with pytest.raises(ValueError, match=parameter):
        OPTIMIZERS[name](**{parameter: value})


@pytest.mark.parametrize(
    ("name", "hyperparameters"),
    [
        ("momentum", {"momentum": 0.0}),
        ("nesterov", {"momentum": 0.0}),
        ("adam", {"beta1": 0.0, "beta2": 0.0}),
        ("rmsprop", {"decay_rate": 0.5}),
        ("sgd", {"lr": 1e-12}),
        ("sgd", {"lr": np.float32(0.5)}),
        ("sgd", {"lr": 2}),
    ],
)
def test_boundary_hyperparameters_are_accepted(name, hyperparameters):
    optimizer = make_optimizer(name, **hyperparameters)
    for key, value in hyperparameters.items():
        assert optimizer.hyperparameters[key] == pytest.approx(float(value))


def test_unknown_optimizer_lists_the_valid_names():
    with pytest.raises(ValueError, match="adamw") as excinfo:
        make_optimizer("adamw", lr=0.1)
    for name in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"):
        assert name in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "unknown"),
    [("sgd", "momentum"), ("adagrad", "decay_rate"), ("adam", "momentum"), ("rmsprop", "beta1")],
)
def test_unknown_hyperparameter_is_rejected(name, unknown):
    with pytest.raises(ValueError, match=unknown):
        make_optimizer(name, **{unknown: 0.9})


def test_optimizer_registry_matches_the_classes():
    expected = {
        "sgd": SGD,
        "momentum": Momentum,
        "nesterov": Nesterov,
        "adagrad": AdaGrad,
        "rmsprop": RMSprop,
        "adam": Adam,
    }
    assert dict(OPTIMIZERS) == expected


# -- dicts of arrays and flat vectors --------------------------------------------------------

EQUIVALENCE = {
    "sgd": {"lr": 0.1},
    "momentum": {"lr": 0.1, "momentum": 0.8},
    "nesterov": {"lr": 0.1, "momentum": 0.8},
    "adagrad": {"lr": 0.1},
    "rmsprop": {"lr": 0.1, "decay_rate": 0.9},
    "adam": {"lr": 0.1, "beta1": 0.8, "beta2": 0.95},
}


@pytest.mark.parametrize(("name", "hyperparameters"), EQUIVALENCE.items())
def test_dict_of_arrays_and_flat_vector_update_identically(name, hyperparameters):
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((3, 4)), rng.standard_normal(5)
    split = {"a": A.copy(), "b": B.copy()}
    flat = {"flat": np.concatenate([A.ravel(), B])}
    by_key, by_vector = (make_optimizer(name, **hyperparameters) for _ in range(2))
    for _ in range(5):
        gA, gB = rng.standard_normal((3, 4)), rng.standard_normal(5)
        by_key.update(split, {"a": gA, "b": gB})
        by_vector.update(flat, {"flat": np.concatenate([gA.ravel(), gB])})
    # Every rule is elementwise, so the numbers must agree exactly, not approximately.
    np.testing.assert_array_equal(np.concatenate([split["a"].ravel(), split["b"]]), flat["flat"])
    assert not np.array_equal(split["a"], A), "the update must change the parameters"
    assert split["a"].shape == (3, 4)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mismatched_keys_raise(name):
    optimizer = make_optimizer(name, lr=0.1)
    params = {"W1": np.zeros(3), "b1": np.zeros(2)}
    before = {key: value.copy() for key, value in params.items()}
    with pytest.raises(ValueError, match="keys"):
        optimizer.update(params, {"W1": np.ones(3), "b2": np.ones(2)})
    with pytest.raises(ValueError, match="keys"):
        optimizer.update(params, {"W1": np.ones(3)})
    for key in params:
        np.testing.assert_array_equal(params[key], before[key])
