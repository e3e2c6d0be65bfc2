"""save_network / load_network: exact round trips, the exact path, and clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from trainer import MultiLayerNet, load_network, make_optimizer, save_network, train
from trainer.data import load_dataset, split_dataset


@pytest.fixture(scope="module")
def digits():
    return split_dataset(load_dataset("digits"), val_fraction=0.2, seed=0)


def _trained(digits, dtype: str) -> MultiLayerNet:
    net = MultiLayerNet(
        64,
        [30, 20],
        10,
        activation="tanh",
        weight_init_std=0.1,
        use_batchnorm=True,
        dropout_ratio=0.3,
        weight_decay_lambda=1e-3,
        dtype=dtype,
        seed=0,
    )
    train(
        net,
        make_optimizer("adam", lr=1e-2),
        digits.x_train,
        digits.t_train,
        digits.x_val,
        digits.t_val,
        epochs=2,
        batch_size=100,
        seed=0,
    )
    return net


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_exact(digits, tmp_path, dtype):
    net = _trained(digits, dtype)
    # Training moved the batch-norm statistics off their initial 0 and 1.
    assert all(np.all(layer.running_mean != 0.0) for layer in net.batchnorm_layers)
    path = tmp_path / "model.weights"

    assert save_network(net, path) == path
    loaded = load_network(path)

    assert loaded.config == net.config
    assert loaded.params.keys() == net.params.keys()
    for name, value in net.params.items():
        assert loaded.params[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded.params[name], value, err_msg=name)
    assert len(loaded.batchnorm_layers) == len(net.batchnorm_layers) == 2
    for saved_bn, loaded_bn in zip(net.batchnorm_layers, loaded.batchnorm_layers, strict=True):
        np.testing.assert_array_equal(loaded_bn.running_mean, saved_bn.running_mean)
        np.testing.assert_array_equal(loaded_bn.running_var, saved_bn.running_var)
    assert np.array_equal(loaded.predict(digits.x_val), net.predict(digits.x_val))
    assert loaded.evaluate(digits.x_val, digits.t_val) == net.evaluate(digits.x_val, digits.t_val)


def test_the_file_is_written_at_exactly_the_given_path(digits, tmp_path):
    net = MultiLayerNet(64, [10], 10, seed=0)
    for name in ("network", "network.bin", "network.npz"):
        directory = tmp_path / name.replace(".", "_")
        directory.mkdir()
        returned = save_network(net, str(directory / name))
        assert returned == directory / name
        assert sorted(p.name for p in directory.iterdir()) == [name]  # no .npz, no temp file


def test_saving_over_an_existing_file_replaces_it(digits, tmp_path):
    path = tmp_path / "net"
    save_network(MultiLayerNet(64, [10], 10, seed=0), path)
    second = MultiLayerNet(64, [12], 10, seed=1)
    save_network(second, path)
    loaded = load_network(path)
    assert loaded.hidden_size_list == [12]
    np.testing.assert_array_equal(loaded.flat_params, second.flat_params)


def test_a_file_that_is_not_a_network_names_the_path(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, x=np.zeros(3), y=np.ones(2))
    with pytest.raises(ValueError, match="not a saved network") as excinfo:
        load_network(path)
    assert str(path) in str(excinfo.value)


def test_a_text_file_names_the_path(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a network\n")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_network(path)


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_corrupt_file_names_the_path(tmp_path, damage):
    path = tmp_path / "model"
    save_network(MultiLayerNet(64, [50], 10, seed=0), path)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        # Garbage in the middle of the stored arrays: the zip CRC catches it.
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(range(64))
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_network(path)


def test_a_missing_file_names_the_path(tmp_path):
    path = tmp_path / "missing" / "model"
    with pytest.raises(FileNotFoundError) as excinfo:
        load_network(path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize(
    "edit",
    ["drop param/W2", "drop running_mean/1", "drop running_var/2", "shrink running_var/1"],
)
def test_an_incomplete_network_file_names_the_path(tmp_path, edit):
    path = tmp_path / "model"
    save_network(MultiLayerNet(64, [20, 10], 10, use_batchnorm=True, seed=0), path)
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    action, key = edit.split()
    assert key in arrays
    if action == "drop":
        del arrays[key]
    else:
        arrays[key] = arrays[key][:-1]
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_network(path)
