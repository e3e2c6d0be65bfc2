"""Forward behaviour of the layers: batch norm's two modes, dropout, activations, the loss.

Gradients are checked in test_gradients.py; here the forward values are compared with
straightforward NumPy formulas.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from trainer import BatchNormalization, Dropout, Relu, Sigmoid, SoftmaxWithLoss, Tanh


def _batchnorm(features: int, dtype=np.float64) -> BatchNormalization:
    gamma, beta = np.ones(features, dtype), np.zeros(features, dtype)
    return BatchNormalization(gamma, beta, np.zeros_like(gamma), np.zeros_like(beta))


def _data(rng: np.random.Generator, n: int = 32) -> np.ndarray:
    """Features with very different offsets and scales."""
    offsets = np.array([-50.0, 0.0, 3.0, 1e3])
    scales = np.array([0.5, 1.0, 7.0, 100.0])
    return offsets + scales * rng.standard_normal((n, 4))


# -- batch normalization ---------------------------------------------------------------------


def test_batchnorm_train_mode_standardizes_each_feature():
    layer = _batchnorm(4)
    x = _data(np.random.default_rng(0))
    out = layer.forward(x, train_flg=True).copy()
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-12)
    # Biased variance (as the paper's training mode), 1 up to the tiny ε in the denominator:
    # the smallest variance here is about 0.25, so ε ≤ 1e-6 moves it by less than 1e-5.
    np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=1e-5)


def test_batchnorm_train_mode_applies_gamma_and_beta():
    gamma, beta = np.array([2.0, 0.5, 1.0, 3.0]), np.array([1.0, -1.0, 0.0, 10.0])
    layer = BatchNormalization(gamma, beta, np.zeros(4), np.zeros(4))
    x = _data(np.random.default_rng(1))
    out = layer.forward(x, train_flg=True).copy()
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=0), gamma, rtol=1e-5)


def test_batchnorm_running_statistics_follow_the_momentum_recurrence():
    layer = _batchnorm(4)
    rng = np.random.default_rng(2)
    x1, x2 = _data(rng), _data(rng) + 5.0
    # They start at mean 0, variance 1 and move by running ← 0.9·running + 0.1·batch.
    np.testing.assert_array_equal(layer.running_mean, 0.0)
    np.testing.assert_array_equal(layer.running_var, 1.0)

    layer.forward(x1, train_flg=True)
    mean1 = 0.9 * 0.0 + 0.1 * x1.mean(axis=0)
    var1 = 0.9 * 1.0 + 0.1 * x1.var(axis=0)  # biased (ddof=0) batch variance, as the book
    np.testing.assert_allclose(layer.running_mean, mean1, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, var1, rtol=1e-12)

    layer.forward(x2, train_flg=True)
    mean2 = 0.9 * mean1 + 0.1 * x2.mean(axis=0)
    var2 = 0.9 * var1 + 0.1 * x2.var(axis=0)
    np.testing.assert_allclose(layer.running_mean, mean2, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, var2, rtol=1e-12)

    # Inference neither uses nor changes the batch statistics.
    layer.forward(x1, train_flg=False)
    np.testing.assert_allclose(layer.running_mean, mean2, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, var2, rtol=1e-12)


def test_batchnorm_running_statistics_converge_to_the_data_statistics():
    layer = _batchnorm(4)
    x = _data(np.random.default_rng(3), n=64)
    for _ in range(300):  # 0.9**300 ≈ 2e-14: the initial 0 and 1 are forgotten
        layer.forward(x, train_flg=True)
    np.testing.assert_allclose(layer.running_mean, x.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(layer.running_var, x.var(axis=0), rtol=1e-9)


def test_batchnorm_inference_uses_running_statistics():
    layer = _batchnorm(4)
    rng = np.random.default_rng(4)
    layer.running_mean[...] = [1.0, -2.0, 3.0, 0.5]
    layer.running_var[...] = [4.0, 0.25, 9.0, 1.0]
    x = rng.standard_normal((5, 4))
    expected = (x - layer.running_mean) / np.sqrt(layer.running_var + layer.eps)
    np.testing.assert_allclose(layer.forward(x, train_flg=False), expected, rtol=1e-12)


def test_batchnorm_inference_output_of_a_sample_ignores_the_rest_of_the_batch():
    layer = _batchnorm(4)
    rng = np.random.default_rng(5)
    for _ in range(3):
        layer.forward(_data(rng), train_flg=True)  # non-trivial running statistics
    batch = _data(rng, n=8)
    other = batch.copy()
    other[1:] = _data(rng, n=7) * 3.0  # same first sample, different companions

    alone = layer.forward(batch[:1], train_flg=False).copy()
    in_batch = layer.forward(batch, train_flg=False)[0].copy()
    in_other = layer.forward(other, train_flg=False)[0].copy()
    np.testing.assert_allclose(in_batch, alone[0], rtol=1e-12)
    np.testing.assert_allclose(in_other, alone[0], rtol=1e-12)

    # In training mode the batch statistics make the same sample come out differently.
    train_batch = layer.forward(batch, train_flg=True)[0].copy()
    train_other = layer.forward(other, train_flg=True)[0].copy()
    assert np.max(np.abs(train_batch - train_other)) > 0.1


# -- dropout ---------------------------------------------------------------------------------


def test_dropout_inference_is_the_identity():
    layer = Dropout(0.5, np.random.default_rng(0), np.float64)
    x = np.random.default_rng(1).standard_normal((10, 7))
    np.testing.assert_array_equal(layer.forward(x, train_flg=False), x)


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.8])
def test_dropout_training_drops_the_ratio_and_preserves_the_expected_activation(ratio):
    n = 1_000_000
    layer = Dropout(ratio, np.random.default_rng(7), np.float64)
    out = layer.forward(np.ones((1000, n // 1000)), train_flg=True)
    keep = 1.0 - ratio

    # Each unit is dropped independently with probability `ratio`: the dropped fraction has
    # standard deviation √(p(1 − p)/n) ≈ 5e-4 at most. Six standard deviations, plus the
    # documented 1/65536 resolution of the ratio, make a false failure practically impossible.
    dropped = np.count_nonzero(out == 0) / n
    sigma = math.sqrt(ratio * keep / n)
    assert abs(dropped - ratio) < 6 * sigma + 1 / 65536

    # Kept units are scaled by 1/(1 − ratio) (inverted dropout), up to the 1/65536 resolution.
    kept = out[out != 0]
    np.testing.assert_allclose(kept, 1.0 / keep, rtol=2e-4)

    # The mean of forward(ones) is (kept fraction)/(1 − ratio), with standard deviation
    # √(ratio/((1 − ratio)·n)); six of them bound the estimate.
    sigma_mean = math.sqrt(ratio / (keep * n))
    assert abs(out.mean() - 1.0) < 6 * sigma_mean + 1e-4


def test_dropout_backward_passes_gradient_through_kept_units_only():
    layer = Dropout(0.5, np.random.default_rng(8), np.float64)
    rng = np.random.default_rng(9)
    x = rng.uniform(1.0, 2.0, size=(20, 30))  # never zero, so out == 0 marks a dropped unit
    out = layer.forward(x, train_flg=True).copy()
    dout = rng.standard_normal((20, 30))
    dx = layer.backward(dout).copy()

    kept = out != 0
    assert 0 < np.count_nonzero(kept) < kept.size
    np.testing.assert_array_equal(dx[~kept], 0.0)
    # A kept unit's gradient has the same scale as its activation: dx/dout = out/x = 2.
    np.testing.assert_allclose(dx[kept], dout[kept] * out[kept] / x[kept], rtol=1e-12)
    np.testing.assert_allclose(dx[kept], 2.0 * dout[kept], rtol=1e-12)


def test_dropout_masks_are_reproducible_from_the_generator():
    x = np.ones((50, 40))
    first = Dropout(0.5, np.random.default_rng(3), np.float64).forward(x, train_flg=True).copy()
    again = Dropout(0.5, np.random.default_rng(3), np.float64).forward(x, train_flg=True).copy()
    other = Dropout(0.5, np.random.default_rng(4), np.float64).forward(x, train_flg=True).copy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_dropout_ratio_out_of_range_raises(ratio):
    with pytest.raises(ValueError, match="dropout_ratio"):
        Dropout(ratio, np.random.default_rng(0))


def test_dropout_ratio_zero_keeps_everything():
    layer = Dropout(0.0, np.random.default_rng(0), np.float64)
    x = np.random.default_rng(1).standard_normal((30, 30))
    np.testing.assert_array_equal(layer.forward(x, train_flg=True), x)


# -- activations -----------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative x: 1/inf = 0
        return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


ORACLES = [(Relu, lambda x: np.maximum(x, 0.0)), (Sigmoid, _sigmoid), (Tanh, np.tanh)]
LARGE = [-1e30, -1e4, -710.0, -89.0, -40.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 40.0, 89.0, 710.0, 1e4]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("activation", "oracle"), ORACLES, ids=["relu", "sigmoid", "tanh"])
def test_activation_forward_matches_numpy_without_warnings(activation, oracle, dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.array(LARGE), 5.0 * rng.standard_normal(50)]).astype(dtype)
    x = x.reshape(8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would be a RuntimeWarning
        out = activation(dtype).forward(x, train_flg=True).copy()
    assert out.dtype == dtype
    assert np.all(np.isfinite(out))
    # Relative precision of the dtype, and an absolute floor of the same size for values that
    # round to 0 or 1.
    tol = float(np.finfo(dtype).eps) * 4
    np.testing.assert_allclose(out, oracle(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("activation", [Relu, Sigmoid, Tanh])
def test_activation_backward_before_forward_raises(activation):
    layer = activation(np.float64)
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((2, 2)))
    layer.forward(np.ones((2, 2)), train_flg=False)  # inference keeps nothing for backward
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((2, 2)))


# -- softmax with loss -----------------------------------------------------------------------


def _cross_entropy(x: np.ndarray, t: np.ndarray) -> float:
    """Mean −log softmax(x)[t], written the obvious way (fine for moderate logits)."""
    probs = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(probs[np.arange(len(t)), t])))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_with_loss_matches_log_softmax(dtype):
    rng = np.random.default_rng(0)
    x = 3.0 * rng.standard_normal((9, 5))
    t = rng.integers(0, 5, size=9)
    loss = SoftmaxWithLoss(dtype).forward(x.astype(dtype), t)
    rel = 1e-12 if dtype is np.float64 else 1e-5
    assert loss == pytest.approx(_cross_entropy(x.astype(dtype).astype(np.float64), t), rel=rel)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_with_loss_is_finite_for_huge_logits(dtype):
    x = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4], [1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], dtype)
    t = np.array([0, 1, 2, 1])
    # Row by row, logsumexp is 1e4 (the other terms are below e^-1e4) and −log p = lse − x[t]:
    # 0, 1e4 and 2e4; the uniform row gives log 3.
    expected = (0.0 + 1e4 + 2e4 + math.log(3)) / 4
    layer = SoftmaxWithLoss(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = layer.forward(x, t, train_flg=True)
        dx = layer.backward().copy()
    assert loss == pytest.approx(expected, rel=1e-6)
    # (softmax − one-hot)/n, with the softmax of the first three rows (1, 0, 0).
    one_hot = np.eye(3)[t]
    probs = np.array([[1, 0, 0]] * 3 + [[1 / 3] * 3])
    np.testing.assert_allclose(dx, (probs - one_hot) / 4, atol=1e-7)


def test_softmax_with_loss_backward_before_forward_raises():
    layer = SoftmaxWithLoss(np.float64)
    with pytest.raises(RuntimeError):
        layer.backward()
    layer.forward(np.zeros((2, 3)), np.array([0, 1]), train_flg=False)
    with pytest.raises(RuntimeError):
        layer.backward()
