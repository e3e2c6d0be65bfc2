"""Shared fixtures for the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_T10K_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Directory holding the official MNIST ``t10k`` IDX files (read-only: never write here).

    ``HPO_TEST_MNIST_DIR`` overrides the default ``<repo>/../shared/data/mnist``.
    Missing files skip the test locally but fail it in CI, which must have them.
    """
    override = os.environ.get("HPO_TEST_MNIST_DIR")
    directory = (
        Path(override)
        if override
        else Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"
    )
    missing = [name for name in _T10K_FILES if not (directory / name).is_file()]
    if missing:
        reason = (
            f"MNIST test files {missing} not found in {directory}; set HPO_TEST_MNIST_DIR "
            "to a directory holding them"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return directory
