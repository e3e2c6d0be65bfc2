"""Backward passes against central differences, layer by layer and for whole networks.

Everything runs in float64. A layer that is not a loss is checked through the scalar
f(x) = Σ forward(x)·R for a fixed random R, whose gradient with respect to x is backward(R).
Layers return arrays they reuse on the next call, so every result kept is copied first.
"""

from __future__ import annotations

import numpy as np
import pytest
from _gradcheck import assert_gradient_close, numerical_gradient

from trainer import (
    Affine,
    BatchNormalization,
    Dropout,
    MultiLayerNet,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
    Tanh,
)

F64 = np.float64


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- layers on their own ---------------------------------------------------------------------


def _affine(rng: np.random.Generator, n_in: int = 4, n_out: int = 3, **kwargs):
    W = rng.standard_normal((n_in, n_out))
    b = rng.standard_normal(n_out)
    return Affine(W, b, np.zeros_like(W), np.zeros_like(b), **kwargs)


def test_affine_gradients():
    rng = _rng(1)
    layer = _affine(rng)
    x = rng.standard_normal((5, 4))
    R = rng.standard_normal((5, 3))

    def f() -> float:
        return float(np.sum(layer.forward(x, train_flg=True) * R))

    layer.forward(x, train_flg=True)
    dx = layer.backward(R).copy()
    dW, db = layer.dW.copy(), layer.db.copy()

    assert_gradient_close(dx, numerical_gradient(f, x), "dx")
    assert_gradient_close(dW, numerical_gradient(f, layer.W), "dW")
    assert_gradient_close(db, numerical_gradient(f, layer.b), "db")


def test_affine_without_input_gradient_still_fills_dW_and_db():
    rng = _rng(2)
    layer = _affine(rng, needs_input_grad=False)
    x = rng.standard_normal((5, 4))
    R = rng.standard_normal((5, 3))

    def f() -> float:
        return float(np.sum(layer.forward(x, train_flg=True) * R))

    layer.forward(x, train_flg=True)
    assert layer.backward(R) is None
    dW, db = layer.dW.copy(), layer.db.copy()

    assert_gradient_close(dW, numerical_gradient(f, layer.W), "dW")
    assert_gradient_close(db, numerical_gradient(f, layer.b), "db")


def _away_from_zero(x: np.ndarray) -> np.ndarray:
    """ReLU has a kink at 0: keep every input at least 0.1 from it, far beyond h."""
    return np.where(np.abs(x) < 0.1, np.sign(x) * 0.1 + x, x)


@pytest.mark.parametrize("activation", [Relu, Sigmoid, Tanh])
def test_activation_gradient(activation):
    rng = _rng(3)
    layer = activation(F64)
    x = _away_from_zero(3.0 * rng.standard_normal((6, 4)))
    R = rng.standard_normal((6, 4))

    def f() -> float:
        return float(np.sum(layer.forward(x, train_flg=True) * R))

    layer.forward(x, train_flg=True)
    dx = layer.backward(R).copy()
    assert_gradient_close(dx, numerical_gradient(f, x), "dx")


def test_batchnorm_train_mode_gradients():
    rng = _rng(4)
    features = 4
    gamma = 1.0 + 0.5 * rng.standard_normal(features)
    beta = rng.standard_normal(features)
    layer = BatchNormalization(gamma, beta, np.zeros_like(gamma), np.zeros_like(beta))
    # An offset and a different scale per feature, so that the mean and variance terms of the
    # backward pass both matter.
    x = 3.0 + rng.standard_normal((6, features)) * np.array([0.5, 1.0, 2.0, 4.0])
    R = rng.standard_normal((6, features))

    def f() -> float:
        return float(np.sum(layer.forward(x, train_flg=True) * R))

    layer.forward(x, train_flg=True)
    dx = layer.backward(R).copy()
    dgamma, dbeta = layer.dgamma.copy(), layer.dbeta.copy()

    assert_gradient_close(dx, numerical_gradient(f, x), "dx")
    assert_gradient_close(dgamma, numerical_gradient(f, layer.gamma), "dgamma")
    assert_gradient_close(dbeta, numerical_gradient(f, layer.beta), "dbeta")


def test_dropout_gradient_with_fixed_mask():
    rng = _rng(5)
    layer = Dropout(0.4, _rng(99), F64)
    x = rng.standard_normal((6, 5))
    R = rng.standard_normal((6, 5))

    def f() -> float:
        layer.rng = _rng(99)  # the same mask on every call
        return float(np.sum(layer.forward(x, train_flg=True) * R))

    f()
    dx = layer.backward(R).copy()
    assert np.count_nonzero(dx == 0) > 0, "the mask should drop something"
    assert_gradient_close(dx, numerical_gradient(f, x), "dx")


def test_softmax_with_loss_gradient():
    rng = _rng(6)
    layer = SoftmaxWithLoss(F64)
    x = 2.0 * rng.standard_normal((7, 4))
    t = rng.integers(0, 4, size=7)

    def f() -> float:
        return layer.forward(x, t, train_flg=True)

    f()
    dx = layer.backward().copy()
    assert_gradient_close(dx, numerical_gradient(f, x), "dx")


# -- whole networks --------------------------------------------------------------------------

INPUT, HIDDEN, OUTPUT, BATCH = 5, [4, 3], 3, 6
DROPOUT_SEED = 1234


def _fix_dropout_masks(net: MultiLayerNet) -> None:
    """Give every Dropout layer a fresh generator, so each evaluation draws the same masks."""
    dropouts = [layer for layer in net.layers if isinstance(layer, Dropout)]
    for i, layer in enumerate(dropouts):
        layer.rng = np.random.default_rng(DROPOUT_SEED + i)


def _check_network_gradient(net: MultiLayerNet, seed: int) -> None:
    rng = _rng(seed)
    x = rng.standard_normal((BATCH, INPUT))
    t = rng.integers(0, OUTPUT, size=BATCH)

    def f() -> float:
        _fix_dropout_masks(net)
        return net.loss(x, t, train_flg=True)

    _fix_dropout_masks(net)
    analytic = {name: grad.copy() for name, grad in net.gradient(x, t).items()}
    assert analytic.keys() == net.params.keys()
    for name, param in net.params.items():
        assert_gradient_close(analytic[name], numerical_gradient(f, param), name)


@pytest.mark.parametrize("use_batchnorm", [False, True], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_network_gradient(activation, use_batchnorm):
    net = MultiLayerNet(
        INPUT,
        HIDDEN,
        OUTPUT,
        activation=activation,
        weight_init_std=1.0,  # large enough that every layer's gradient is far from zero
        use_batchnorm=use_batchnorm,
        dtype="float64",
        seed=10,
    )
    if use_batchnorm:
        # Move γ and β off their initial 1 and 0 so that their gradients are generic.
        rng = _rng(11)
        for name, value in net.params.items():
            if name.startswith(("gamma", "beta")):
                value += 0.3 * rng.standard_normal(value.shape)
    _check_network_gradient(net, seed=12)


@pytest.mark.parametrize("use_batchnorm", [False, True], ids=["plain", "batchnorm"])
def test_network_gradient_with_weight_decay(use_batchnorm):
    net = MultiLayerNet(
        INPUT,
        HIDDEN,
        OUTPUT,
        activation="tanh",
        weight_init_std=1.0,
        use_batchnorm=use_batchnorm,
        weight_decay_lambda=0.1,
        dtype="float64",
        seed=20,
    )
    _check_network_gradient(net, seed=21)


@pytest.mark.parametrize("dropout_ratio", [0.0, 0.3])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_network_gradient_with_dropout(activation, dropout_ratio):
    net = MultiLayerNet(
        INPUT,
        HIDDEN,
        OUTPUT,
        activation=activation,
        weight_init_std=1.0,
        use_batchnorm=True,
        dropout_ratio=dropout_ratio,
        weight_decay_lambda=0.05,
        dtype="float64",
        seed=30,
    )
    assert any(isinstance(layer, Dropout) for layer in net.layers) == (dropout_ratio > 0)
    _check_network_gradient(net, seed=31)


def test_one_hot_labels_give_the_same_gradient_as_integer_labels():
    net = MultiLayerNet(
        INPUT, HIDDEN, OUTPUT, use_batchnorm=True, weight_decay_lambda=0.1, dtype="float64", seed=1
    )
    rng = _rng(40)
    x = rng.standard_normal((BATCH, INPUT))
    t = rng.integers(0, OUTPUT, size=BATCH)
    one_hot = np.eye(OUTPUT)[t]

    from_labels = {name: grad.copy() for name, grad in net.gradient(x, t).items()}
    from_one_hot = {name: grad.copy() for name, grad in net.gradient(x, one_hot).items()}
    for name in net.params:
        np.testing.assert_array_equal(from_one_hot[name], from_labels[name], err_msg=name)
