"""Downloading IDX files from local mirrors only: ``file://`` and a real HTTP server on 127.0.0.1.

No test here touches the internet: every URL points at this machine.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from trainer.data import DatasetError, download_dataset, load_dataset
from trainer.data._download import _MD5, _MIRRORS

T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TRAIN = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class _RecordingHandler(SimpleHTTPRequestHandler):
    """Serves a directory and records each request path on its server."""

    def do_GET(self):
        self.server.paths.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):  # keep test output quiet
        pass


@dataclass
class Mirror:
    directory: Path
    url: str
    paths: list[str] | None  # request paths seen (HTTP only)


@pytest.fixture
def mirror_dir(tmp_path, mnist_dir) -> Path:
    """A writable copy of the official t10k files, to serve (and corrupt) freely."""
    directory = tmp_path / "mirror"
    directory.mkdir()
    for name in T10K:
        shutil.copy(mnist_dir / name, directory / name)
    return directory


@pytest.fixture
def serve_http():
    """Start ThreadingHTTPServers on 127.0.0.1 (port 0) serving directories; stop them after."""
    servers = []

    def serve(directory: Path) -> Mirror:
        handler = functools.partial(_RecordingHandler, directory=str(directory))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.paths = []
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        host, port = server.server_address[:2]
        return Mirror(directory, f"http://{host}:{port}/", server.paths)

    yield serve
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(params=["file", "http"])
def mirror(request, mirror_dir, serve_http) -> Mirror:
    """The same mirror directory over both transports ``download_dataset`` must handle."""
    if request.param == "file":
        return Mirror(mirror_dir, mirror_dir.as_uri(), None)
    return serve_http(mirror_dir)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_t10k_pair_then_load(tmp_path, mirror, mnist_dir):
    dest = tmp_path / "data" / "mnist"

    result = download_dataset("mnist", dest, base_url=mirror.url, files=T10K)

    assert result == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(T10K)  # no temp files, no train
    for name in T10K:
        assert md5(dest / name) == md5(mnist_dir / name)
        assert (dest / name).stat().st_mode & 0o777 == 0o644
    if mirror.paths is not None:
        assert sorted(mirror.paths) == sorted(f"/{name}" for name in T10K)
    assert load_dataset("mnist", data_dir=dest).x.shape == (10_000, 784)


def test_files_already_present_are_not_fetched_again(tmp_path, mirror):
    dest = tmp_path / "data"
    download_dataset("mnist", dest, base_url=mirror.url, files=T10K)
    inodes = {name: (dest / name).stat().st_ino for name in T10K}
    seen = list(mirror.paths or [])

    download_dataset("mnist", dest, base_url=mirror.url, files=T10K)

    assert {name: (dest / name).stat().st_ino for name in T10K} == inodes  # not replaced
    if mirror.paths is not None:
        assert mirror.paths == seen  # the server saw no second request


def test_present_file_with_wrong_md5_is_downloaded_again(tmp_path, mirror, caplog):
    dest = tmp_path / "data"
    dest.mkdir()
    shutil.copy(mirror.directory / T10K[0], dest / T10K[0])
    (dest / T10K[1]).write_bytes(b"stale")

    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        download_dataset("mnist", dest, base_url=mirror.url, files=T10K)

    assert md5(dest / T10K[1]) == _MD5["mnist"][T10K[1]]
    assert "downloading it again" in caplog.text
    if mirror.paths is not None:
        assert mirror.paths == [f"/{T10K[1]}"]


def test_checksum_mismatch_names_url_and_leaves_no_file(tmp_path, mirror):
    labels = mirror.directory / T10K[1]
    corrupt = bytearray(labels.read_bytes())
    corrupt[100] ^= 0xFF
    labels.write_bytes(bytes(corrupt))
    dest = tmp_path / "data"

    with pytest.raises(DatasetError, match="checksum mismatch") as info:
        download_dataset("mnist", dest, base_url=mirror.url, files=[T10K[1]])

    message = str(info.value)
    assert f"{mirror.url.rstrip('/')}/{T10K[1]}" in message
    assert _MD5["mnist"][T10K[1]] in message
    assert hashlib.md5(bytes(corrupt)).hexdigest() in message
    assert list(dest.iterdir()) == []


def test_missing_file_on_the_mirror_names_the_url(tmp_path, serve_http, mirror_dir):
    mirror = serve_http(mirror_dir)
    with pytest.raises(DatasetError, match="404") as info:
        download_dataset("mnist", tmp_path / "d", base_url=mirror.url, files=[TRAIN[1]])
    assert f"{mirror.url}{TRAIN[1]}" in str(info.value)
    assert list((tmp_path / "d").iterdir()) == []


def test_unreachable_url_fails_quickly_and_clearly(tmp_path):
    url = closed_port_url()
    start = time.monotonic()
    with pytest.raises(DatasetError, match="could not download") as info:
        download_dataset("kmnist", tmp_path / "d", base_url=url, files=[T10K[1]], timeout=5)
    assert time.monotonic() - start < 5
    assert f"{url}{T10K[1]}" in str(info.value)
    assert list((tmp_path / "d").iterdir()) == []


def test_silent_server_times_out(tmp_path):
    # A listening socket that never accepts: the connection is queued, no reply comes.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        start = time.monotonic()
        with pytest.raises(DatasetError, match="timed out") as info:
            download_dataset("mnist", tmp_path, base_url=url, files=[T10K[1]], timeout=0.3)
    assert time.monotonic() - start < 5
    assert url in str(info.value)


def test_next_mirror_is_tried_when_one_is_unreachable(
    tmp_path, serve_http, mirror_dir, monkeypatch, caplog
):
    good = serve_http(mirror_dir)
    dead = closed_port_url()
    monkeypatch.setitem(_MIRRORS, "mnist", (dead, good.url))

    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        download_dataset("mnist", tmp_path, files=[T10K[1]])

    assert md5(tmp_path / T10K[1]) == _MD5["mnist"][T10K[1]]
    assert dead in caplog.text
    assert good.paths == [f"/{T10K[1]}"]


def test_load_dataset_with_download_fetches_all_four_files(
    tmp_path, serve_http, mirror_dir, monkeypatch, capsys
):
    # No real training set here: serve a tiny synthetic one and trust its checksums.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    for name, array, magic in ((TRAIN[0], images, 0x803), (TRAIN[1], labels, 0x801)):
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
        (mirror_dir / name).write_bytes(gzip.compress(header + array.tobytes()))
        monkeypatch.setitem(_MD5["mnist"], name, md5(mirror_dir / name))
    mirror = serve_http(mirror_dir)
    dest = tmp_path / "mnist"

    data = load_dataset("mnist", data_dir=dest, download=True, base_url=mirror.url)

    assert data.x.shape == (12, 784)
    np.testing.assert_array_equal(data.y, labels)
    assert data.test_x is not None
    assert data.test_x.shape == (10_000, 784)
    assert len(mirror.paths) == 4
    load_dataset("mnist", data_dir=dest, download=True, base_url=mirror.url)
    assert len(mirror.paths) == 4  # everything verified in place, nothing fetched
    assert capsys.readouterr().out == ""  # library code logs, never prints


def test_load_dataset_download_failure_names_the_url(tmp_path, serve_http, mirror_dir):
    mirror = serve_http(mirror_dir)  # has no train files
    with pytest.raises(DatasetError, match="404") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path, download=True, base_url=mirror.url)
    assert f"{mirror.url}{TRAIN[0]}" in str(info.value)


@pytest.mark.parametrize("name", ["digits", "npz", "cifar10"])
def test_only_idx_datasets_can_be_downloaded(tmp_path, name):
    with pytest.raises(DatasetError, match="mnist, fashion-mnist, kmnist"):
        download_dataset(name, tmp_path)


def test_unknown_file_names_are_rejected(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown file.*t10k-images-idx3-ubyte\.gz"):
        download_dataset("mnist", tmp_path, files=["t10k-images.gz"])


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), "30", True])
def test_timeout_must_be_positive(tmp_path, timeout):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        download_dataset("mnist", tmp_path, timeout=timeout)


def test_checksum_table_is_complete():
    assert set(_MD5) == set(_MIRRORS) == {"mnist", "fashion-mnist", "kmnist"}
    for sums in _MD5.values():
        assert set(sums) == {*TRAIN, *T10K}
        assert all(len(s) == 32 and int(s, 16) >= 0 for s in sums.values())
    for url in (url for mirrors in _MIRRORS.values() for url in mirrors):
        assert url.startswith(("https://", "http://"))
        assert url.endswith("/")
