"""Shared fixtures for the test suite."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _postgres import POSTGRES_ENV, ThrowawayPostgres, pg_bin
from _servers import free_port, start_server, stop_server

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


# -- storages: every storage test runs against a SQLite file and the PostgreSQL server --------


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server for the storage tests: `HPO_TEST_POSTGRES_URL` if set, else a
    throwaway cluster of the session's own (see tests/_postgres.py). Without either, the
    tests that need one skip locally and fail in CI."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        yield url
        return
    bin_dir = pg_bin()
    if bin_dir is None:
        reason = (
            f"no PostgreSQL: set {POSTGRES_ENV}, or install PostgreSQL's server "
            "(initdb, pg_ctl) for a throwaway cluster"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = ThrowawayPostgres(bin_dir)
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.destroy()


@pytest.fixture
def fresh_postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_admin_url)
    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty storage of each supported kind: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("fresh_postgres_url")


TINY_STUDY = """\
[study]
name = "tiny"
n_trials = {n_trials}
seed = 1

[data]
dataset = "digits"
n_samples = 600

[model]
hidden_size_list = [{hidden}]

[train]
optimizer = "adam"
epochs = {epochs}
batch_size = 100

[search.lr]
type = "float"
low = 1e-4
high = 1e-1
log = true

[sampler]
name = "random"

[pruner]
name = "{pruner}"
"""


@pytest.fixture
def tiny_study_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a small digits study file: `tiny_study_file(n_trials=6, epochs=5)`."""

    def write(
        n_trials: int = 6,
        epochs: int = 5,
        hidden: int = 32,
        pruner: str = "none",
        name: str = "tiny.toml",
        extra: str = "",
    ) -> Path:
        path = tmp_path / name
        text = TINY_STUDY.format(n_trials=n_trials, epochs=epochs, hidden=hidden, pruner=pruner)
        path.write_text(text + extra)
        return path

    return write


# -- a real MLflow tracking server on 127.0.0.1 -----------------------------------------------


class MlflowServer:
    """`mlflow server` as a subprocess with its own backend store and artifact directory.

    `stop()` and `start()` again keep the port and the stored runs: an outage, not a new server.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = root / "server.log"

    def start(self, timeout: float = 90.0) -> None:
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        command = [
            str(mlflow_cli), "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        self.process = start_server(command, f"{self.uri}/health", self.log, timeout=timeout)

    def stop(self) -> None:
        stop_server(self.process)
        self.process = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real MLflow server for the whole test session (it takes seconds and ~2 GB)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A tracking store of each kind: a local sqlite:/// file, and the real server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    return request.getfixturevalue("mlflow_server").uri


@pytest.fixture
def new_mlflow_server(tmp_path: Path) -> Iterator[Callable[[], MlflowServer]]:
    """A server of the test's own, to stop and start (the shared one must stay up)."""
    servers: list[MlflowServer] = []

    def make() -> MlflowServer:
        root = tmp_path / f"mlflow-server-{len(servers)}"
        root.mkdir()
        servers.append(MlflowServer(root))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()
