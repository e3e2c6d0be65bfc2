"""train(): learning the digits, the epoch hook, divergence, determinism and argument checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from trainer import (
    EpochMetrics,
    MultiLayerNet,
    TrainingDiverged,
    TrainingHistory,
    make_optimizer,
    train,
)
from trainer.data import load_dataset, split_dataset


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Train as the workers do (hpo/engine/blas.py): at these sizes a second BLAS thread made a
    30-epoch run a hundred times slower whenever the other core was busy."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def digits_dataset():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits(digits_dataset):
    return split_dataset(digits_dataset, val_fraction=0.2, seed=0)


def _train(net, optimizer, splits, **kwargs):
    return train(
        net, optimizer, splits.x_train, splits.t_train, splits.x_val, splits.t_val, **kwargs
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adam_learns_the_digits(digits_dataset, seed):
    splits = split_dataset(digits_dataset, val_fraction=0.2, seed=seed)
    net = MultiLayerNet(64, [100, 100], 10, weight_init_std="he", seed=seed)
    history = _train(
        net, make_optimizer("adam", lr=1e-3), splits, epochs=30, batch_size=100, seed=seed
    )
    assert len(history) == 30
    assert max(history.column("val_acc")) >= 0.95
    # Chance is 0.1: the first epoch is already well above it and the loss falls.
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss / 4


def test_hook_sees_every_epoch_and_the_returned_metrics(digits):
    net = MultiLayerNet(64, [30], 10, weight_decay_lambda=0.01, seed=0)
    calls: list[tuple[int, EpochMetrics]] = []
    history = _train(
        net,
        make_optimizer("sgd", lr=0.1),
        digits,
        epochs=4,
        batch_size=64,
        seed=0,
        on_epoch_end=lambda epoch, metrics: calls.append((epoch, metrics)),
    )
    assert isinstance(history, TrainingHistory)
    assert [epoch for epoch, _ in calls] == [1, 2, 3, 4]
    assert all(type(epoch) is int for epoch, _ in calls)
    assert [metrics for _, metrics in calls] == history.epochs
    assert [metrics.epoch for metrics in history] == [1, 2, 3, 4]
    assert history.final == history.epochs[-1]

    # The last epoch's metrics are the network's own evaluation of the final weights.
    final = history.final
    train_loss, train_acc = net.evaluate(digits.x_train, digits.t_train)
    val_loss, val_acc = net.evaluate(digits.x_val, digits.t_val)
    assert final.train_loss == pytest.approx(train_loss, rel=1e-12)
    assert final.val_loss == pytest.approx(val_loss, rel=1e-12)
    assert (final.train_acc, final.val_acc) == (train_acc, val_acc)
    assert final.as_dict() == {
        "train_loss": final.train_loss,
        "train_acc": final.train_acc,
        "val_loss": final.val_loss,
        "val_acc": final.val_acc,
    }


class _StopTraining(Exception):
    """What a pruner would raise from the hook."""


def test_exception_in_the_hook_stops_training_and_propagates(digits):
    net = MultiLayerNet(64, [20], 10, seed=0)
    optimizer = make_optimizer("sgd", lr=0.1)
    seen: list[int] = []

    def hook(epoch: int, metrics: EpochMetrics) -> None:
        seen.append(epoch)
        if epoch == 2:
            raise _StopTraining(epoch)

    with pytest.raises(_StopTraining) as excinfo:
        _train(net, optimizer, digits, epochs=10, batch_size=100, seed=0, on_epoch_end=hook)
    assert excinfo.value.args == (2,)
    assert seen == [1, 2]
    # No update happened after the hook raised: exactly two epochs' worth of batches.
    assert optimizer.iter == 2 * math.ceil(len(digits.x_train) / 100)


def test_huge_learning_rate_raises_training_diverged_without_warnings(digits):
    net = MultiLayerNet(64, [100, 100], 10, seed=0)
    seen: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TrainingDiverged) as excinfo:
            _train(
                net,
                make_optimizer("sgd", lr=1e6),
                digits,
                epochs=5,
                batch_size=100,
                seed=0,
                on_epoch_end=lambda epoch, metrics: seen.append(epoch),
            )
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
    error = excinfo.value
    assert isinstance(error, ArithmeticError)
    # lr = 1e4 is not always enough: a ReLU network's loss can stay finite while its weights
    # reach 1e23. With lr = 1e6 the loss is inf or NaN by the first epoch's third batch.
    assert error.epoch == 1
    assert seen == list(range(1, error.epoch))  # the diverged epoch is not reported as done
    assert isinstance(error.reason, str)
    assert error.reason
    assert "1" in str(error)


def _deterministic_run(splits, *, net_seed: int, train_seed: int):
    net = MultiLayerNet(
        64,
        [40, 30],
        10,
        use_batchnorm=True,
        dropout_ratio=0.2,
        weight_decay_lambda=1e-3,
        seed=net_seed,
    )
    history = _train(
        net, make_optimizer("adam", lr=1e-3), splits, epochs=3, batch_size=50, seed=train_seed
    )
    return net, history


def test_same_seeds_give_bit_identical_results(digits):
    first, first_history = _deterministic_run(digits, net_seed=1, train_seed=2)
    second, second_history = _deterministic_run(digits, net_seed=1, train_seed=2)
    np.testing.assert_array_equal(first.flat_params, second.flat_params)
    assert first_history.epochs == second_history.epochs
    for a, b in zip(first.batchnorm_layers, second.batchnorm_layers, strict=True):
        np.testing.assert_array_equal(a.running_mean, b.running_mean)
        np.testing.assert_array_equal(a.running_var, b.running_var)

    other_order, _ = _deterministic_run(digits, net_seed=1, train_seed=3)
    assert not np.array_equal(first.flat_params, other_order.flat_params)
    other_init, _ = _deterministic_run(digits, net_seed=4, train_seed=2)
    assert not np.array_equal(first.flat_params, other_init.flat_params)


def test_last_partial_batch_is_used(digits):
    x, t = digits.x_train[:105], digits.t_train[:105]
    net = MultiLayerNet(64, [10], 10, seed=0)
    optimizer = make_optimizer("sgd", lr=0.01)
    iterations: list[int] = []
    train(
        net,
        optimizer,
        x,
        t,
        digits.x_val,
        digits.t_val,
        epochs=2,
        batch_size=50,
        seed=0,
        on_epoch_end=lambda epoch, metrics: iterations.append(optimizer.iter),
    )
    assert iterations == [3, 6]  # batches of 50, 50 and 5 in each epoch


def test_batch_larger_than_the_data_is_one_batch(digits):
    net = MultiLayerNet(64, [10], 10, seed=0)
    optimizer = make_optimizer("sgd", lr=0.01)
    _train(net, optimizer, digits, epochs=2, batch_size=10_000, seed=0)
    assert optimizer.iter == 2


# -- argument checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": -1}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"epochs": "3"}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -10}, "batch_size"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"batch_size": None}, "batch_size"),
    ],
)
def test_invalid_epochs_or_batch_size_raise(digits, kwargs, argument):
    net = MultiLayerNet(64, [10], 10, seed=0)
    options = {"epochs": 1, "batch_size": 10} | kwargs
    with pytest.raises(ValueError, match=argument):
        _train(net, make_optimizer("sgd"), digits, **options)


def _slices(splits, train_x=None, train_t=None, val_x=None, val_t=None):
    return (
        splits.x_train if train_x is None else splits.x_train[train_x],
        splits.t_train if train_t is None else splits.t_train[train_t],
        splits.x_val if val_x is None else splits.x_val[val_x],
        splits.t_val if val_t is None else splits.t_val[val_t],
    )


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ({"train_t": slice(1, None)}, "length"),
        ({"train_x": slice(1, None)}, "length"),
        ({"val_t": slice(0, -1)}, "length"),
        ({"val_x": slice(0, 10)}, "length"),
        ({"train_x": slice(0, 0), "train_t": slice(0, 0)}, "sample"),
        ({"val_x": slice(0, 0), "val_t": slice(0, 0)}, "sample"),
    ],
    ids=["train-labels", "train-inputs", "val-labels", "val-inputs", "empty-train", "empty-val"],
)
def test_mismatched_or_empty_sets_raise(digits, selection, message):
    net = MultiLayerNet(64, [10], 10, seed=0)
    optimizer = make_optimizer("sgd")
    before = net.flat_params.copy()
    with pytest.raises(ValueError, match=message):
        train(net, optimizer, *_slices(digits, **selection), epochs=1, batch_size=10, seed=0)
    np.testing.assert_array_equal(net.flat_params, before)
    assert optimizer.iter == 0
