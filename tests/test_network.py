"""MultiLayerNet: validation, parameter layout, initialisation, loss, predict and evaluate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer import MultiLayerNet
from trainer.data import load_dataset, split_dataset


def _net(**kwargs) -> MultiLayerNet:
    options = {"dtype": "float64", "seed": 0} | kwargs
    return MultiLayerNet(5, [4, 3], 3, **options)


def _batch(seed: int = 0, n: int = 6, width: int = 5, classes: int = 3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, width)), rng.integers(0, classes, size=n)


@pytest.fixture(scope="module")
def digits():
    return split_dataset(load_dataset("digits"), val_fraction=0.2, seed=0)


# -- constructor validation ------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("args", "kwargs", "argument"),
    [
        ((0, [4], 3), {}, "input_size"),
        ((-5, [4], 3), {}, "input_size"),
        ((5.0, [4], 3), {}, "input_size"),
        ((True, [4], 3), {}, "input_size"),
        ((5, [4, 0], 3), {}, "hidden_size_list"),
        ((5, [4, -1], 3), {}, "hidden_size_list"),
        ((5, [4, 2.5], 3), {}, "hidden_size_list"),
        ((5, 4, 3), {}, "hidden_size_list"),
        ((5, "44", 3), {}, "hidden_size_list"),
        ((5, [4], 0), {}, "output_size"),
        ((5, [4], 1), {}, "output_size"),
        ((5, [4], 3.0), {}, "output_size"),
        ((5, [4], 3), {"weight_decay_lambda": -0.1}, "weight_decay_lambda"),
        ((5, [4], 3), {"weight_decay_lambda": NAN}, "weight_decay_lambda"),
        ((5, [4], 3), {"weight_decay_lambda": INF}, "weight_decay_lambda"),
        ((5, [4], 3), {"dropout_ratio": 1.0}, "dropout_ratio"),
        ((5, [4], 3), {"dropout_ratio": -0.1}, "dropout_ratio"),
        ((5, [4], 3), {"dropout_ratio": NAN}, "dropout_ratio"),
        ((5, [4], 3), {"weight_init_std": 0.0}, "weight_init_std"),
        ((5, [4], 3), {"weight_init_std": -0.01}, "weight_init_std"),
        ((5, [4], 3), {"weight_init_std": NAN}, "weight_init_std"),
        ((5, [4], 3), {"weight_init_std": INF}, "weight_init_std"),
        ((5, [4], 3), {"dtype": "float16"}, "dtype"),
        ((5, [4], 3), {"dtype": "int64"}, "dtype"),
        ((5, [4], 3), {"dtype": np.complex128}, "dtype"),
        ((5, [4], 3), {"dtype": "not-a-dtype"}, "dtype"),
    ],
)
def test_invalid_constructor_arguments_name_the_argument(args, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        MultiLayerNet(*args, **kwargs)


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(ValueError, match="activation") as excinfo:
        MultiLayerNet(5, [4], 3, activation="gelu")
    for name in ("relu", "sigmoid", "tanh", "gelu"):
        assert name in str(excinfo.value)


def test_unknown_weight_init_lists_the_valid_ones():
    with pytest.raises(ValueError, match="weight_init_std") as excinfo:
        MultiLayerNet(5, [4], 3, weight_init_std="glorot")
    for name in ("he", "xavier", "glorot"):
        assert name in str(excinfo.value)


def test_dtype_error_lists_the_valid_ones():
    with pytest.raises(ValueError, match="dtype") as excinfo:
        MultiLayerNet(5, [4], 3, dtype="float16")
    assert "float32" in str(excinfo.value)
    assert "float64" in str(excinfo.value)


# -- parameters --------------------------------------------------------------------------------


def test_params_use_the_books_names_and_shapes():
    plain = _net()
    assert {name: p.shape for name, p in plain.params.items()} == {
        "W1": (5, 4),
        "b1": (4,),
        "W2": (4, 3),
        "b2": (3,),
        "W3": (3, 3),
        "b3": (3,),
    }
    extended = _net(use_batchnorm=True)
    assert {name: p.shape for name, p in extended.params.items()} == {
        "W1": (5, 4),
        "b1": (4,),
        "gamma1": (4,),
        "beta1": (4,),
        "W2": (4, 3),
        "b2": (3,),
        "gamma2": (3,),
        "beta2": (3,),
        "W3": (3, 3),
        "b3": (3,),
    }
    # The book's initial values: biases and β zero, γ one.
    for name, value in extended.params.items():
        if name.startswith(("b", "beta")):
            np.testing.assert_array_equal(value, 0.0)
        elif name.startswith("gamma"):
            np.testing.assert_array_equal(value, 1.0)
        assert value.dtype == np.float64


def test_params_are_views_into_flat_params():
    net = _net(use_batchnorm=True)
    sizes = sum(p.size for p in net.params.values())
    assert net.flat_params.shape == (sizes,)
    assert net.flat_grads.shape == (sizes,)

    net.flat_params[...] = 0.0
    net.params["gamma2"][1] = 7.0
    assert net.flat_params.sum() == 7.0
    assert np.count_nonzero(net.flat_params) == 1

    # Writing the flat vector reaches every named array, and each element belongs to exactly
    # one of them.
    net.flat_params[...] = np.arange(sizes)
    seen = np.concatenate([p.ravel() for p in net.params.values()])
    np.testing.assert_array_equal(np.sort(seen), np.arange(sizes))


def test_gradient_arrays_are_views_into_flat_grads():
    net = _net(use_batchnorm=True)
    x, t = _batch()
    grads = net.gradient(x, t)
    seen = np.concatenate([g.ravel() for g in grads.values()])
    np.testing.assert_array_equal(np.sort(seen), np.sort(net.flat_grads))
    for g in grads.values():
        assert np.shares_memory(g, net.flat_grads)


@pytest.mark.parametrize(("weight_init_std", "gain"), [("he", 2.0), ("xavier", 1.0)])
def test_named_initialisations_have_the_right_std(weight_init_std, gain):
    net = MultiLayerNet(2000, [400], 10, weight_init_std=weight_init_std, seed=1)
    W1, W2 = net.params["W1"].astype(np.float64), net.params["W2"].astype(np.float64)
    # W1 has 800,000 draws: the sample std's relative standard error is 1/√(2n) ≈ 8e-4, so 1%
    # is over ten standard errors. W2 has 4,000 draws (≈ 1.1%): allow 6%.
    assert W1.std() == pytest.approx(math.sqrt(gain / 2000), rel=0.01)
    assert W2.std() == pytest.approx(math.sqrt(gain / 400), rel=0.06)
    assert abs(W1.mean()) < 5 * W1.std() / math.sqrt(W1.size)


def test_numeric_weight_init_std():
    net = MultiLayerNet(1000, [500], 10, weight_init_std=0.05, seed=2)
    for name in ("W1", "W2"):
        assert net.params[name].astype(np.float64).std() == pytest.approx(0.05, rel=0.06)


def test_float32_and_float64_networks_start_from_the_same_weights():
    single = MultiLayerNet(20, [10, 8], 4, use_batchnorm=True, dtype="float32", seed=5)
    double = MultiLayerNet(20, [10, 8], 4, use_batchnorm=True, dtype=np.float64, seed=5)
    assert single.flat_params.dtype == np.float32
    assert double.flat_params.dtype == np.float64
    for name, value in double.params.items():
        np.testing.assert_allclose(single.params[name], value, rtol=2.0**-23, err_msg=name)
    other = MultiLayerNet(20, [10, 8], 4, use_batchnorm=True, dtype="float64", seed=6)
    assert not np.array_equal(other.params["W1"], double.params["W1"])


@pytest.mark.parametrize(
    ("activation", "function"),
    [
        ("sigmoid", lambda a: 1 / (1 + np.exp(-a))),
        ("tanh", np.tanh),
        ("relu", lambda a: a * (a > 0)),
    ],
)
@pytest.mark.parametrize("use_batchnorm", [False, True])
def test_hidden_activations_are_each_hidden_layers_output(activation, function, use_batchnorm):
    # The oracle: the book's loop, z = activation(x @ W + b) layer after layer, by hand.
    net = _net(activation=activation, use_batchnorm=use_batchnorm, dropout_ratio=0.5)
    x, _ = _batch(n=7)
    net.params["b1"][...] = 0.3  # a bias, so that it is seen to be added
    found = net.hidden_activations(x)
    assert [a.shape for a in found] == [(7, 4), (7, 3)]
    z = x
    for i, a in enumerate(found, start=1):
        pre = z @ net.params[f"W{i}"] + net.params[f"b{i}"]
        if use_batchnorm:  # inference mode: the running statistics, 0 and 1 before training
            layer = net.batchnorm_layers[i - 1]
            pre = (pre - layer.running_mean) / np.sqrt(layer.running_var + layer.eps)
            pre = pre * net.params[f"gamma{i}"] + net.params[f"beta{i}"]
        z = function(pre)
        np.testing.assert_allclose(a, z, rtol=1e-12, atol=1e-15)
    again = net.hidden_activations(x + 1.0)  # fresh arrays: the first results are intact
    assert not np.shares_memory(found[0], again[0])
    np.testing.assert_allclose(found[-1], z, rtol=1e-12, atol=1e-15)


# -- loss, predict, accuracy, evaluate -------------------------------------------------------


def _randomize(net: MultiLayerNet, seed: int) -> None:
    """Every parameter non-zero, so that a penalty that wrongly includes b, γ or β shows."""
    net.flat_params[...] = np.random.default_rng(seed).standard_normal(net.flat_params.size)


@pytest.mark.parametrize("use_batchnorm", [False, True])
def test_loss_adds_half_lambda_times_squared_weights(use_batchnorm):
    lam = 0.3
    decayed = _net(use_batchnorm=use_batchnorm, weight_decay_lambda=lam)
    plain = _net(use_batchnorm=use_batchnorm, weight_decay_lambda=0.0)
    _randomize(decayed, 1)
    plain.flat_params[...] = decayed.flat_params
    x, t = _batch(2)

    weights = [value for name, value in decayed.params.items() if name.startswith("W")]
    penalty = 0.5 * lam * sum(float(np.sum(W**2)) for W in weights)
    assert penalty > 1.0
    for train_flg in (False, True):
        difference = decayed.loss(x, t, train_flg=train_flg) - plain.loss(x, t, train_flg)
        assert difference == pytest.approx(penalty, rel=1e-12)


def test_loss_is_the_cross_entropy_of_the_predicted_logits():
    net = _net(use_batchnorm=True)
    _randomize(net, 3)
    x, t = _batch(4)
    logits = net.predict(x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -log_probs[np.arange(len(t)), t].mean()
    assert net.loss(x, t) == pytest.approx(expected, rel=1e-12)


def test_predict_returns_a_fresh_array():
    net = _net()
    first_x, _ = _batch(5)
    second_x, _ = _batch(6)
    first = net.predict(first_x)
    kept = first.copy()
    second = net.predict(second_x)
    np.testing.assert_array_equal(first, kept)
    assert not np.shares_memory(first, second)
    assert not np.array_equal(first, second)
    first[...] = 0.0  # writing the result does not disturb the network
    np.testing.assert_array_equal(net.predict(first_x), kept)


def test_predict_of_a_linear_network_is_the_affine_map():
    net = MultiLayerNet(5, [], 3, dtype="float64", seed=0)
    _randomize(net, 7)
    x, _ = _batch(8)
    expected = x @ net.params["W1"] + net.params["b1"]
    np.testing.assert_allclose(net.predict(x), expected, rtol=1e-12)


def test_accuracy_matches_a_manual_argmax(digits):
    net = MultiLayerNet(64, [20], 10, seed=0)
    x, t = digits.x_val, digits.t_val
    expected = float(np.mean(np.argmax(net.predict(x), axis=1) == t))
    assert 0.0 < expected < 1.0
    assert net.accuracy(x, t) == expected
    assert net.accuracy(x, t, batch_size=17) == expected


@pytest.mark.parametrize("use_batchnorm", [False, True])
def test_evaluate_in_batches_equals_one_batch(digits, use_batchnorm):
    net = MultiLayerNet(
        64, [30, 20], 10, use_batchnorm=use_batchnorm, weight_decay_lambda=0.01, seed=0
    )
    x, t = digits.x_train, digits.t_train
    whole_loss, whole_acc = net.evaluate(x, t, batch_size=len(x))
    for batch_size in (1, 7, 100, 1000, 10_000):
        loss, acc = net.evaluate(x, t, batch_size=batch_size)
        assert loss == pytest.approx(whole_loss, rel=1e-6)
        assert acc == whole_acc
    assert whole_loss == pytest.approx(net.loss(x, t), rel=1e-6)


def test_one_hot_labels_are_accepted():
    net = _net(use_batchnorm=True)
    _randomize(net, 9)
    x, t = _batch(10, n=12)
    one_hot = np.eye(3)[t]
    assert net.loss(x, one_hot) == net.loss(x, t)
    assert net.evaluate(x, one_hot) == net.evaluate(x, t)
    assert net.accuracy(x, one_hot.astype(np.float32)) == net.accuracy(x, t)


# -- bad inputs --------------------------------------------------------------------------------


def _calls(net: MultiLayerNet):
    return {
        "loss": lambda x, t: net.loss(x, t),
        "loss_train": lambda x, t: net.loss(x, t, train_flg=True),
        "gradient": net.gradient,
        "accuracy": net.accuracy,
        "evaluate": net.evaluate,
    }


CALLS = ["loss", "loss_train", "gradient", "accuracy", "evaluate"]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(
    "labels",
    [[0, 1, 2, 3, 0, 1], [0, 1, -1, 2, 0, 1]],
    ids=["too-large", "negative"],
)
def test_labels_out_of_range_raise(call, labels):
    net = _net()
    x, _ = _batch()
    with pytest.raises(ValueError, match="labels"):
        _calls(net)[call](x, np.array(labels))


@pytest.mark.parametrize("call", CALLS)
def test_float_labels_raise(call):
    net = _net()
    x, _ = _batch()
    with pytest.raises(ValueError, match="dtype"):
        _calls(net)[call](x, np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]))


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("shape", [(6, 4), (6, 6), (30,), (6, 5, 1)])
def test_wrong_input_shape_raises(call, shape):
    net = _net()
    _, t = _batch()
    with pytest.raises(ValueError, match="shape"):
        _calls(net)[call](np.zeros(shape), t)


def test_predict_rejects_the_wrong_width():
    with pytest.raises(ValueError, match="shape"):
        _net().predict(np.zeros((6, 4)))


@pytest.mark.parametrize("call", ["loss", "gradient", "evaluate"])
@pytest.mark.parametrize("n_labels", [1, 7])
def test_labels_of_the_wrong_length_raise(call, n_labels):
    # One label for six samples must not be broadcast to all of them.
    net = _net()
    x, _ = _batch()
    with pytest.raises(ValueError, match="label"):
        _calls(net)[call](x, np.zeros(n_labels, dtype=int))


@pytest.mark.parametrize("call", ["loss", "gradient", "evaluate"])
def test_one_hot_labels_of_the_wrong_width_raise(call):
    # (6, 2) rows cannot be one-hot codes of 3 classes.
    net = _net()
    x, t = _batch()
    with pytest.raises(ValueError, match="one-hot"):
        _calls(net)[call](x, np.eye(2)[t % 2])


def test_repr_names_the_architecture():
    text = repr(_net(use_batchnorm=True, dropout_ratio=0.5))
    for part in ("MultiLayerNet", "5-4-3-3", "relu", "use_batchnorm=True", "0.5", "float64"):
        assert part in text
