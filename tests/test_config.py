"""Run settings: frozen, validated when built, in the book's vocabulary."""

from __future__ import annotations

import dataclasses

import pytest

from hpo.errors import ConfigError
from hpo.spec.config import DataConfig, TrainConfig
from trainer import Adam, Momentum, MultiLayerNet


def test_defaults_build_a_working_network_and_optimizer():
    config = TrainConfig()
    net = config.build_network(64, 10, seed=0)
    assert isinstance(net, MultiLayerNet)
    assert net.hidden_size_list == [100, 100]
    assert isinstance(config.build_optimizer(), Adam)


def test_only_the_chosen_optimizers_hyperparameters_are_used():
    assert TrainConfig(optimizer="sgd", lr=0.1).optimizer_hyperparameters() == {"lr": 0.1}
    momentum = TrainConfig(optimizer="momentum", lr=0.1, momentum=0.5)
    assert momentum.optimizer_hyperparameters() == {"lr": 0.1, "momentum": 0.5}
    built = momentum.build_optimizer()
    assert isinstance(built, Momentum)
    assert built.momentum == 0.5


def test_config_is_frozen_and_lists_become_tuples():
    config = TrainConfig(hidden_size_list=[50, 20])
    assert config.hidden_size_list == (50, 20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.5  # type: ignore[misc]
    assert config.replace(lr=0.5).lr == 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "adamw"}, "optimizer: must be one of ['adagrad', 'adam', 'momentum'"),
        ({"lr": 0.0}, "lr must be in (0, inf)"),
        ({"optimizer": "rmsprop", "decay_rate": 1.0}, "decay_rate must be in (0, 1)"),
        ({"activation": "gelu"}, "activation must be one of ['relu', 'sigmoid', 'tanh']"),
        ({"weight_init_std": "glorot"}, "weight_init_std must be one of ['he', 'xavier']"),
        ({"weight_init_std": -0.1}, "weight_init_std must be one of ['he', 'xavier']"),
        ({"dropout_ratio": 1.0}, "dropout_ratio must be in [0, 1)"),
        ({"weight_decay_lambda": -1e-4}, "weight_decay_lambda must be a finite number >= 0"),
        ({"hidden_size_list": (100, 0)}, "hidden_size_list[] must be a positive integer"),
        ({"epochs": 0}, "epochs: must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size: must be a positive integer"),
        ({"dtype": "float16"}, "dtype must be one of ['float32', 'float64']"),
    ],
)
def test_bad_settings_are_refused_with_the_key_and_value(changes, message):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**changes)
    assert message in str(error.value)


def test_a_hyperparameter_of_another_optimizer_is_not_validated_against_this_one():
    # momentum=1.0 would be invalid for the momentum optimizer, but Adam never uses it.
    assert TrainConfig(optimizer="adam", momentum=1.0).optimizer_hyperparameters() == {
        "lr": 0.001,
        "beta1": 0.9,
        "beta2": 0.999,
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataset": "cifar"}, "dataset: must be one of ['digits', 'mnist'"),
        ({"dataset": "npz"}, "path: the npz dataset needs `path`"),
        ({"val_fraction": 0.0}, "val_fraction: must be a number in (0, 1)"),
        ({"test_fraction": 1.0}, "test_fraction: must be a number in (0, 1)"),
        ({"n_samples": 0}, "n_samples: must be a positive integer"),
        ({"subset": "last"}, "subset: must be 'first' or 'random'"),
    ],
)
def test_bad_data_settings_are_refused(changes, message):
    with pytest.raises(ConfigError) as error:
        DataConfig(**changes)
    assert message in str(error.value)
