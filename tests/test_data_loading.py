"""Loading: the bundled digits, IDX files (real MNIST t10k and synthetic), and .npz files."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainer.data import DATASETS, Dataset, DatasetError, load_dataset

T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TRAIN = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")

# Official per-digit counts of the MNIST test set (checked against the file itself).
MNIST_T10K_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None) -> Path:
    """Write ``array`` (uint8) as a gzip-compressed IDX file; ``magic`` overrides the header."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes(), compresslevel=1))
    return path


def write_pair(directory: Path, pair: tuple[str, str], images, labels) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / pair[0], images)
    write_idx(directory / pair[1], labels)


def synthetic_images(n: int, *, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


# --- digits -------------------------------------------------------------------------------


def test_digits_shape_range_dtype():
    data = load_dataset("digits")
    assert data.x.shape == (1797, 64)
    assert data.x.dtype == np.float32
    assert data.y.dtype == np.int64
    assert data.x.flags.c_contiguous
    assert data.x.min() == 0.0
    assert data.x.max() == 1.0
    assert set(np.unique(data.y)) == set(range(10))
    assert data.n_classes == 10
    assert data.test_x is None
    # 0..16 counts scaled by /16: every value is a multiple of 1/16.
    np.testing.assert_array_equal(data.x * 16, np.round(data.x * 16))


# --- real MNIST t10k ----------------------------------------------------------------------


def test_mnist_t10k_only_directory_is_the_pool(mnist_dir):
    data = load_dataset("mnist", data_dir=mnist_dir)
    assert data.x.shape == (10_000, 784)
    assert data.x.dtype == np.float32
    assert data.x.flags.c_contiguous
    assert data.x.min() == 0.0
    assert data.x.max() == 1.0
    assert data.y.shape == (10_000,)
    assert data.y.dtype == np.int64
    assert data.n_classes == 10
    assert data.test_x is None
    assert data.test_y is None
    assert tuple(np.bincount(data.y, minlength=10)) == MNIST_T10K_COUNTS
    assert data.source == str(mnist_dir)


def test_mnist_files_match_md5sums_and_download_table(mnist_dir):
    from trainer.data._download import _MD5

    listed = dict(
        reversed(line.split()) for line in (mnist_dir / "MD5SUMS").read_text().splitlines()
    )
    for name in T10K:
        actual = hashlib.md5((mnist_dir / name).read_bytes()).hexdigest()
        assert actual == listed[name]
        assert _MD5["mnist"][name] == listed[name]


# --- synthetic IDX directories --------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "kmnist"])
def test_train_and_t10k_pairs_give_pool_and_official_test(tmp_path, name):
    train_images, test_images = synthetic_images(12, seed=1), synthetic_images(5, seed=2)
    train_labels = np.arange(12) % 10
    test_labels = np.array([9, 8, 7, 6, 5])
    write_pair(tmp_path, TRAIN, train_images, train_labels)
    write_pair(tmp_path, T10K, test_images, test_labels)

    data = load_dataset(name, data_dir=tmp_path)

    assert data.name == name
    np.testing.assert_array_equal(data.x, train_images.reshape(12, 784) / np.float32(255))
    np.testing.assert_array_equal(data.y, train_labels)
    assert data.test_x is not None
    np.testing.assert_array_equal(data.test_x, test_images.reshape(5, 784) / np.float32(255))
    np.testing.assert_array_equal(data.test_y, test_labels)
    assert data.x.dtype == data.test_x.dtype == np.float32
    assert data.y.dtype == data.test_y.dtype == np.int64


def test_idx_dataset_needs_data_dir():
    with pytest.raises(DatasetError, match=r"data_dir=.*download=True"):
        load_dataset("mnist")


def test_missing_directory_names_it_and_the_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=missing)
    message = str(info.value)
    assert str(missing) in message
    assert "does not exist" in message
    for name in (*T10K, *TRAIN):
        assert name in message
    assert "download=True" in message


def test_empty_directory_names_it_and_the_files(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("kmnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "download=True" in message


def test_half_a_pair_names_the_missing_file(tmp_path):
    write_idx(tmp_path / T10K[0], synthetic_images(3, seed=0))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz is missing"):
        load_dataset("mnist", data_dir=tmp_path)


def test_truncated_idx_payload(tmp_path, mnist_dir):
    shutil.copy(mnist_dir / T10K[1], tmp_path / T10K[1])
    raw = gzip.decompress((mnist_dir / T10K[0]).read_bytes())
    (tmp_path / T10K[0]).write_bytes(gzip.compress(raw[: -784 * 3 - 5], compresslevel=1))
    with pytest.raises(DatasetError, match="truncated") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / T10K[0]) in str(info.value)


def test_truncated_idx_header(tmp_path):
    write_pair(tmp_path, T10K, synthetic_images(2, seed=0), [1, 2])
    (tmp_path / T10K[1]).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00"))
    with pytest.raises(DatasetError, match="truncated") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / T10K[1]) in str(info.value)


def test_trailing_bytes(tmp_path):
    write_pair(tmp_path, T10K, synthetic_images(2, seed=0), [1, 2])
    raw = gzip.decompress((tmp_path / T10K[1]).read_bytes())
    (tmp_path / T10K[1]).write_bytes(gzip.compress(raw + b"\x00"))
    with pytest.raises(DatasetError, match="trailing") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / T10K[1]) in str(info.value)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda gz: b"this is not gzip at all" + gz[:10], id="not-gzip"),
        pytest.param(lambda gz: gz[: len(gz) // 2], id="cut-stream"),
        pytest.param(lambda gz: gz[:-8] + b"\x00" * 8, id="bad-crc"),
        pytest.param(lambda gz: gz[:20] + bytes(b ^ 0xFF for b in gz[20:40]) + gz[40:], id="flip"),
    ],
)
def test_corrupt_gzip(tmp_path, damage):
    write_pair(tmp_path, T10K, synthetic_images(4, seed=0), [1, 2, 3, 4])
    path = tmp_path / T10K[0]
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_bad_magic(tmp_path):
    write_pair(tmp_path, T10K, synthetic_images(2, seed=0), [1, 2])
    # Labels written where images belong: a 1-D magic number in the images file.
    write_idx(tmp_path / T10K[0], np.zeros(2 * 784, dtype=np.uint8))
    with pytest.raises(
        DatasetError, match=r"magic number is 0x00000801, expected 0x00000803"
    ) as i:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / T10K[0]) in str(i.value)


def test_unsupported_idx_element_type(tmp_path):
    write_pair(tmp_path, T10K, synthetic_images(2, seed=0), [1, 2])
    write_idx(tmp_path / T10K[1], np.array([1, 2]), magic=0x00000D01)  # float32 labels
    with pytest.raises(DatasetError, match="magic number") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / T10K[1]) in str(info.value)


def test_image_label_count_mismatch_names_both_files(tmp_path):
    write_pair(tmp_path, T10K, synthetic_images(5, seed=0), [1, 2, 3, 4])
    with pytest.raises(DatasetError, match=r"5 images.*4 labels") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / T10K[0]) in str(info.value)
    assert str(tmp_path / T10K[1]) in str(info.value)


def test_label_out_of_range_names_the_labels_file(tmp_path):
    write_pair(tmp_path, T10K, synthetic_images(3, seed=0), [1, 10, 2])
    with pytest.raises(DatasetError, match="label 10") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(tmp_path / T10K[1]) in str(info.value)


def test_wrong_image_size_names_the_images_file(tmp_path):
    write_pair(tmp_path, T10K, np.zeros((2, 8, 8)), [1, 2])
    with pytest.raises(DatasetError, match=r"\(8, 8\)") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / T10K[0]) in str(info.value)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DatasetError, match="unknown dataset 'cifar10'") as info:
        load_dataset("cifar10")
    for name in DATASETS:
        assert name in str(info.value)


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


# --- npz -----------------------------------------------------------------------------------


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_images_flattened_and_uint8_scaled(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(6, 5, 5), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    path = save_npz(tmp_path / "d.npz", x=images, y=np.array([0, 1, 2, 0, 1, 2]))

    data = load_dataset("npz", path=path)

    assert data.x.shape == (6, 25)
    assert data.x.dtype == np.float32
    assert data.x.flags.c_contiguous
    np.testing.assert_array_equal(data.x, images.reshape(6, 25) / np.float32(255))
    assert data.x.min() == 0.0
    assert data.x.max() == 1.0
    assert data.n_classes == 3
    assert data.y.dtype == np.int64
    assert data.source == str(path)
    assert data.name == "npz"


def test_npz_custom_keys(tmp_path):
    path = save_npz(
        tmp_path / "d.npz",
        features=np.full((4, 3), 0.5),
        target=np.array([1, 0, 1, 4], dtype=np.int8),
        extra=np.zeros(2),
    )
    data = load_dataset("npz", path=path, x_key="features", y_key="target")
    np.testing.assert_array_equal(data.x, np.full((4, 3), 0.5, dtype=np.float32))
    np.testing.assert_array_equal(data.y, [1, 0, 1, 4])
    assert data.n_classes == 5  # max label + 1, even though 2 and 3 never occur


def test_npz_one_hot_labels(tmp_path):
    labels = np.array([2, 0, 1, 2])
    one_hot = np.eye(4)[labels]  # four columns: class 3 exists but is unused
    path = save_npz(tmp_path / "d.npz", x=np.zeros((4, 2)), y=one_hot)
    data = load_dataset("npz", path=path)
    np.testing.assert_array_equal(data.y, labels)
    assert data.n_classes == 4


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        pytest.param(np.array([[0, 500], [1000, 250]], np.int16), [[0, 0.5], [1, 0.25]], id="int"),
        pytest.param(np.array([[0.2, 0.4], [1.0, 0.0]]), [[0.2, 0.4], [1.0, 0.0]], id="unit"),
        pytest.param(np.array([[-1.0, 1.0], [3.0, 0.0]]), [[0, 0.5], [1, 0.25]], id="minmax"),
        pytest.param(np.array([[-2, 0], [2, 1]], np.int64), [[0, 0.5], [1, 0.75]], id="neg-int"),
        pytest.param(np.array([[True, False]]), [[1.0, 0.0]], id="bool"),
        pytest.param(np.zeros((2, 2), np.uint16), np.zeros((2, 2)), id="all-zero"),
    ],
)
def test_npz_scaling_rules(tmp_path, x, expected):
    path = save_npz(tmp_path / "d.npz", x=x, y=np.zeros(len(x), dtype=np.int64))
    data = load_dataset("npz", path=path)
    np.testing.assert_allclose(data.x, expected, rtol=1e-6)
    assert data.x.dtype == np.float32
    assert 0.0 <= data.x.min() <= data.x.max() <= 1.0


def test_npz_needs_a_path():
    with pytest.raises(DatasetError, match="path="):
        load_dataset("npz")


def test_npz_missing_file_is_named(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(DatasetError, match="does not exist") as info:
        load_dataset("npz", path=path)
    assert str(path) in str(info.value)


def test_npz_not_an_npz_file_is_named(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(DatasetError, match=r"not a readable \.npz") as info:
        load_dataset("npz", path=path)
    assert str(path) in str(info.value)


def test_npz_missing_key_lists_the_keys_it_has(tmp_path):
    path = save_npz(tmp_path / "d.npz", images=np.zeros((2, 2)), y=np.zeros(2, np.int64))
    with pytest.raises(DatasetError, match=r"no array 'x'; .*\['images', 'y'\]") as info:
        load_dataset("npz", path=path)
    assert str(path) in str(info.value)


def test_npz_count_mismatch_is_named(tmp_path):
    path = save_npz(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.zeros(4, np.int64))
    with pytest.raises(DatasetError, match=r"3 samples.*4 labels") as info:
        load_dataset("npz", path=path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npz_non_finite_pixels_are_rejected(tmp_path, bad):
    x = np.zeros((2, 2))
    x[1, 1] = bad
    path = save_npz(tmp_path / "d.npz", x=x, y=np.zeros(2, np.int64))
    with pytest.raises(DatasetError, match="NaN or infinite") as info:
        load_dataset("npz", path=path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("y", "match"),
    [
        pytest.param(np.array([0.0, 1.0]), "integer class indices", id="float"),
        pytest.param(np.array([0, -1]), "negative label -1", id="negative"),
        pytest.param(np.zeros((2, 2, 2), np.int64), "1-D class indices", id="3-D"),
    ],
)
def test_npz_bad_labels_are_rejected(tmp_path, y, match):
    path = save_npz(tmp_path / "d.npz", x=np.zeros((2, 2)), y=y)
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset("npz", path=path)
    assert str(path) in str(info.value)


def test_npz_string_pixels_are_rejected(tmp_path):
    path = save_npz(tmp_path / "d.npz", x=np.array([["a"], ["b"]]), y=np.zeros(2, np.int64))
    with pytest.raises(DatasetError, match="real numbers"):
        load_dataset("npz", path=path)


# --- the Dataset value -----------------------------------------------------------------------


def test_dataset_arrays_are_read_only_and_repr_shows_shapes():
    data = load_dataset("digits")
    with pytest.raises(ValueError, match="read-only"):
        data.x[0, 0] = 1.0
    assert repr(data) == (
        "Dataset(name='digits', x=(1797, 64), y=(1797,), n_classes=10, test_x=None, "
        "source='scikit-learn bundled digits')"
    )


def test_dataset_leaves_the_callers_arrays_writable():
    x, y = np.zeros((2, 3), np.float32), np.array([0, 1])
    data = Dataset(name="h", x=x, y=y, n_classes=2, source="test")
    assert x.flags.writeable
    assert not data.x.flags.writeable
    assert np.shares_memory(data.x, x)  # a view, not a copy


def test_dataset_validates_what_it_is_given():
    x = np.zeros((3, 2), np.float32)
    y = np.zeros(3, np.int64)
    with pytest.raises(DatasetError, match="float32"):
        Dataset(name="h", x=x.astype(np.float64), y=y, n_classes=1, source="test")
    with pytest.raises(DatasetError, match="int64"):
        Dataset(name="h", x=x, y=y.astype(np.int32), n_classes=1, source="test")
    with pytest.raises(DatasetError, match="3 samples but y has 2"):
        Dataset(name="h", x=x, y=y[:2], n_classes=1, source="test")
    with pytest.raises(DatasetError, match="n_classes=1"):
        Dataset(name="h", x=x, y=y + 1, n_classes=1, source="test")
    with pytest.raises(DatasetError, match="together"):
        Dataset(name="h", x=x, y=y, n_classes=1, source="test", test_x=x)
