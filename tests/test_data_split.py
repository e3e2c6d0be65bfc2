"""split_dataset: property tests on small synthetic pools, plus the argument checks.

Every synthetic sample carries its own identity in feature 0 (``id / 2**16``,
exact in float32), so the tests can tell exactly which samples went where.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from trainer.data import Dataset, DatasetError, DataSplits, load_dataset, split_dataset

ID_SCALE = 2**16
OFFICIAL_TEST_BASE = 50_000  # ids of official test samples start here

PROPERTY_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def make_dataset(labels, *, test_labels=None) -> Dataset:
    """A Dataset whose feature 0 is each sample's id and feature 1 its label."""
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1

    def features(ids, y):
        return np.ascontiguousarray(
            np.column_stack([ids / ID_SCALE, y / n_classes]), dtype=np.float32
        )

    test_x = test_y = None
    if test_labels is not None:
        test_y = np.asarray(test_labels, dtype=np.int64)
        test_x = features(OFFICIAL_TEST_BASE + np.arange(test_y.size), test_y)
    return Dataset(
        name="synthetic",
        x=features(np.arange(labels.size), labels),
        y=labels,
        n_classes=n_classes,
        source="test",
        test_x=test_x,
        test_y=test_y,
    )


def ids(x: np.ndarray) -> np.ndarray:
    return np.rint(x[:, 0].astype(np.float64) * ID_SCALE).astype(np.int64)


@st.composite
def labelled_pools(draw, *, min_per_class: int = 10, max_per_class: int = 30) -> np.ndarray:
    """Labels of 2–5 classes, each with its own count, in a random order."""
    n_classes = draw(st.integers(2, 5))
    counts = draw(
        st.lists(st.integers(min_per_class, max_per_class), min_size=n_classes, max_size=n_classes)
    )
    order = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(order).permutation(np.repeat(np.arange(n_classes), counts))


def assert_class_shares(part: np.ndarray, whole: np.ndarray, n_part: int) -> None:
    """Each class gets the floor or the ceiling of its exact share of ``n_part``.

    That is what sklearn's StratifiedShuffleSplit guarantees (``_approximate_mode``
    rounds every class's share down, then hands the remaining samples to the
    largest remainders), so it is the property asserted, not just "within one".
    """
    whole_counts = np.bincount(whole)
    part_counts = np.bincount(part, minlength=whole_counts.size)
    for label, (got, total) in enumerate(zip(part_counts, whole_counts, strict=True)):
        expected = n_part * total / whole.size
        assert math.floor(expected) <= got <= math.ceil(expected), (label, got, expected)


def split_or_reject(dataset: Dataset, **kwargs) -> DataSplits:
    """Split, discarding the rare draws whose subset leaves a class too small to stratify."""
    try:
        return split_dataset(dataset, **kwargs)
    except ValueError as exc:
        if "cannot stratify" in str(exc) or "classes it must hold" in str(exc):
            reject()
        raise


# --- properties ------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    labels=labelled_pools(),
    val_fraction=st.floats(0.2, 0.5),
    test_fraction=st.none() | st.floats(0.1, 0.3),
    n_share=st.none() | st.floats(0.6, 1.0),
    subset=st.sampled_from(["first", "random"]),
    official_test=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_splits_partition_the_pool(
    labels, val_fraction, test_fraction, n_share, subset, official_test, seed
):
    test_labels = np.arange(7) % 2 if official_test else None
    dataset = make_dataset(labels, test_labels=test_labels)
    n_samples = None if n_share is None else max(1, round(n_share * labels.size))
    splits = split_or_reject(
        dataset,
        val_fraction=val_fraction,
        n_samples=n_samples,
        subset=subset,
        test_fraction=test_fraction,
        seed=seed,
    )

    arrays = [splits.x_train, splits.t_train, splits.x_val, splits.t_val]
    if splits.has_test:
        arrays += list(splits.test())
    for array in arrays:
        assert array.flags.c_contiguous
        assert array.flags.writeable
    for x, t in zip(arrays[::2], arrays[1::2], strict=True):
        assert x.dtype == np.float32
        assert t.dtype == np.int64
        assert x.shape == (t.size, 2)
        # Features and labels stay aligned: feature 1 encodes the label.
        np.testing.assert_array_equal(np.rint(x[:, 1] * dataset.n_classes), t)

    train_ids, val_ids = ids(splits.x_train), ids(splits.x_val)
    n_sub = labels.size if n_samples is None else n_samples
    assert len(set(train_ids)) == train_ids.size
    assert len(set(val_ids)) == val_ids.size
    assert not set(train_ids) & set(val_ids)
    in_pool = set(train_ids) | set(val_ids)

    # The test split: test_fraction, else official, else leftover, else none.
    if test_fraction is not None:
        assert splits.test_source == "test_fraction"
        test_ids = ids(splits.test()[0])
        assert not set(test_ids) & in_pool
        in_pool |= set(test_ids)
        assert test_ids.size == math.ceil(test_fraction * n_sub)
    elif official_test:
        assert splits.test_source == "official"
        np.testing.assert_array_equal(ids(splits.test()[0]), OFFICIAL_TEST_BASE + np.arange(7))
    elif n_sub < labels.size:
        assert splits.test_source == "leftover"
        test_ids = ids(splits.test()[0])
        assert not set(test_ids) & in_pool
        assert in_pool | set(test_ids) == set(range(labels.size))
    else:
        assert not splits.has_test

    assert len(in_pool) == n_sub  # the (sub)pool is covered, nothing invented or lost
    assert in_pool <= set(range(labels.size))
    if subset == "first" or n_samples is None:
        assert in_pool == set(range(n_sub))

    n_rest = train_ids.size + val_ids.size
    assert val_ids.size == math.ceil(val_fraction * n_rest)


@PROPERTY_SETTINGS
@given(
    labels=labelled_pools(),
    val_fraction=st.floats(0.1, 0.6),
    seed=st.integers(0, 2**32 - 1),
)
def test_validation_split_is_stratified(labels, val_fraction, seed):
    dataset = make_dataset(labels)
    splits = split_or_reject(dataset, val_fraction=val_fraction, seed=seed)
    assert_class_shares(splits.t_val, labels, splits.t_val.size)
    assert_class_shares(splits.t_train, labels, splits.t_train.size)


@PROPERTY_SETTINGS
@given(
    labels=labelled_pools(),
    test_fraction=st.floats(0.1, 0.4),
    seed=st.integers(0, 2**32 - 1),
)
def test_test_fraction_is_stratified_too(labels, test_fraction, seed):
    splits = split_or_reject(make_dataset(labels), test_fraction=test_fraction, seed=seed)
    _, t_test = splits.test()
    assert_class_shares(t_test, labels, t_test.size)
    rest = np.concatenate([splits.t_train, splits.t_val])
    assert_class_shares(splits.t_val, rest, splits.t_val.size)


@PROPERTY_SETTINGS
@given(
    labels=labelled_pools(),
    n_share=st.none() | st.floats(0.6, 1.0),
    subset=st.sampled_from(["first", "random"]),
    test_fraction=st.none() | st.floats(0.1, 0.3),
    seed=st.integers(0, 2**32 - 1),
)
def test_same_seed_same_split_bit_for_bit(labels, n_share, subset, test_fraction, seed):
    dataset = make_dataset(labels)
    n_samples = None if n_share is None else round(n_share * labels.size)
    kwargs = dict(n_samples=n_samples, subset=subset, test_fraction=test_fraction, seed=seed)
    first = split_or_reject(dataset, **kwargs)
    second = split_dataset(dataset, **kwargs)
    for a, b in zip(_all_arrays(first), _all_arrays(second), strict=True):
        assert a.dtype == b.dtype
        assert a.shape == b.shape
        assert a.tobytes() == b.tobytes()


@functools.cache
def _digits() -> Dataset:
    return load_dataset("digits")


@settings(max_examples=25, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2, unique=True))
def test_different_seeds_give_different_splits(seeds):
    a, b = (split_dataset(_digits(), seed=s) for s in seeds)
    assert not np.array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.t_train, b.t_train)
    a, b = (split_dataset(_digits(), n_samples=300, subset="random", seed=s) for s in seeds)
    assert not np.array_equal(a.test()[1], b.test()[1])  # the leftover differs too


def _all_arrays(splits: DataSplits) -> list[np.ndarray]:
    arrays = [splits.x_train, splits.t_train, splits.x_val, splits.t_val]
    return arrays + (list(splits.test()) if splits.has_test else [])


# --- subsets and where the test set comes from ------------------------------------------------


def balanced_labels(n: int, n_classes: int = 4) -> np.ndarray:
    return np.arange(n) % n_classes


def test_first_n_samples_leaves_the_rest_as_test():
    splits = split_dataset(make_dataset(balanced_labels(200)), n_samples=80)
    assert set(ids(splits.x_train)) | set(ids(splits.x_val)) == set(range(80))
    assert splits.x_val.shape[0] == 16
    assert splits.test_source == "leftover"
    np.testing.assert_array_equal(ids(splits.test()[0]), np.arange(80, 200))


def test_random_n_samples_is_seeded_and_not_the_first():
    dataset = make_dataset(balanced_labels(200))
    splits = split_dataset(dataset, n_samples=80, subset="random", seed=3)
    chosen = set(ids(splits.x_train)) | set(ids(splits.x_val))
    assert len(chosen) == 80
    assert chosen != set(range(80))
    leftover = ids(splits.test()[0])
    assert set(leftover) == set(range(200)) - chosen
    assert np.all(np.diff(leftover) > 0)  # kept in pool order
    again = split_dataset(dataset, n_samples=80, subset="random", seed=3)
    assert set(ids(again.x_train)) | set(ids(again.x_val)) == chosen


def test_official_test_set_wins_over_leftover():
    dataset = make_dataset(balanced_labels(100), test_labels=[0, 1, 2])
    splits = split_dataset(dataset, n_samples=60)
    assert splits.test_source == "official"
    x_test, t_test = splits.test()
    np.testing.assert_array_equal(ids(x_test), OFFICIAL_TEST_BASE + np.arange(3))
    np.testing.assert_array_equal(t_test, [0, 1, 2])
    assert x_test.flags.writeable  # a copy, not the Dataset's read-only array
    assert set(ids(splits.x_train)) | set(ids(splits.x_val)) == set(range(60))


def test_test_fraction_wins_over_official_test_set():
    dataset = make_dataset(balanced_labels(100), test_labels=[0, 1, 2])
    splits = split_dataset(dataset, test_fraction=0.25)
    assert splits.test_source == "test_fraction"
    test_ids = ids(splits.test()[0])
    assert test_ids.size == 25
    assert test_ids.max() < 100
    assert splits.x_train.shape[0] + splits.x_val.shape[0] == 75


def test_no_test_split_when_nothing_is_left():
    splits = split_dataset(make_dataset(balanced_labels(40)), n_samples=40)
    assert not splits.has_test
    assert splits.test_source is None
    with pytest.raises(DatasetError, match="this split has no test set; pass test_fraction"):
        splits.test()


def test_repr_shows_shapes_not_arrays():
    splits = split_dataset(make_dataset(balanced_labels(100)), n_samples=50)
    assert repr(splits) == (
        "DataSplits(x_train=(40, 2), x_val=(10, 2), test=(50, 2) from leftover, n_classes=4)"
    )


def test_book_setup_on_mnist(mnist_dir):
    """The book's overfitting experiment: the first 500 images, here with 20% held out."""
    splits = split_dataset(load_dataset("mnist", data_dir=mnist_dir), n_samples=500, seed=0)
    assert splits.x_train.shape == (400, 784)
    assert splits.x_val.shape == (100, 784)
    assert splits.test()[0].shape == (9_500, 784)
    assert splits.n_classes == 10
    assert_class_shares(splits.t_val, np.concatenate([splits.t_train, splits.t_val]), 100)


# --- argument checks -----------------------------------------------------------------------


_BAD_FRACTIONS = [0, 1, 1.5, -0.1, float("nan"), True, "0.2"]


@pytest.mark.parametrize(
    ("knob", "value"),
    [("val_fraction", v) for v in [*_BAD_FRACTIONS, None]]
    + [("test_fraction", v) for v in _BAD_FRACTIONS],  # test_fraction=None is valid
)
def test_fractions_must_be_inside_zero_one(knob, value):
    with pytest.raises(ValueError, match=rf"{knob} must be in \(0, 1\), but got {knob}="):
        split_dataset(make_dataset(balanced_labels(40)), **{knob: value})


def test_val_fraction_message_shows_the_value():
    expected = "val_fraction must be in (0, 1), but got val_fraction=1.5."
    with pytest.raises(ValueError, match=re.escape(expected)) as info:
        split_dataset(make_dataset(balanced_labels(40)), val_fraction=1.5)
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("n_samples", "match"),
    [
        (41, r"n_samples=41 is larger than the 40 samples .*n_samples=40 or fewer"),
        (0, r"n_samples must be at least 1, but got n_samples=0"),
        (2.5, r"n_samples must be an integer or None, but got n_samples=2\.5"),
    ],
)
def test_n_samples_is_checked(n_samples, match):
    with pytest.raises(ValueError, match=match):
        split_dataset(make_dataset(balanced_labels(40)), n_samples=n_samples)


def test_subset_and_seed_are_checked():
    dataset = make_dataset(balanced_labels(40))
    with pytest.raises(ValueError, match="subset must be 'first' or 'random', but got subset="):
        split_dataset(dataset, subset="last")
    with pytest.raises(ValueError, match="seed must be a non-negative integer, but got seed=-1"):
        split_dataset(dataset, seed=-1)
    with pytest.raises(TypeError, match="needs a Dataset"):
        split_dataset((dataset.x, dataset.y))


def test_too_few_samples_of_a_class_names_it():
    labels = np.array([0, 1] * 10 + [2])  # class 2 appears once
    with pytest.raises(ValueError, match="class 2 has only 1 sample among the 21") as info:
        split_dataset(make_dataset(labels))
    assert "n_samples" in str(info.value)


def test_first_n_samples_too_unbalanced_to_stratify():
    labels = np.array([0] * 30 + [1] * 30)
    with pytest.raises(ValueError, match="class 1 has only 1 sample") as info:
        split_dataset(make_dataset(labels), n_samples=31)
    assert "subset='random'" in str(info.value)


def test_validation_split_too_small_for_the_classes():
    with pytest.raises(ValueError, match=r"gives a validation split of 2, fewer than the 4") as i:
        split_dataset(make_dataset(balanced_labels(40)), val_fraction=0.05)
    assert "raise val_fraction to at least 0.1" in str(i.value)


def test_training_split_too_small_for_the_classes():
    with pytest.raises(ValueError, match=r"leaves 2 for training, fewer than the 4 classes"):
        split_dataset(make_dataset(balanced_labels(40)), val_fraction=0.95)
