"""Fetch the official IDX files of MNIST, Fashion-MNIST and KMNIST, checked by MD5.

The mirrors and checksums are those published by the datasets' authors and
carried by torchvision's ``torchvision/datasets/mnist.py``; the MNIST test-set
sums also match ``shared/data/mnist/MD5SUMS``. MD5 guards against truncated or
swapped files, not against an attacker.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from ._errors import DatasetError

__all__ = ["DOWNLOADABLE", "IDX_FILES", "TEST_FILES", "TRAIN_FILES", "download_dataset"]

logger = logging.getLogger("trainer.data")

TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IDX_FILES = TRAIN_FILES + TEST_FILES

# Tried in order; the next mirror is used only when one cannot be reached. The
# original yann.lecun.com host now refuses most downloads, so it comes last.
_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "kmnist": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
}

_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "kmnist": {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
}

DOWNLOADABLE = tuple(_MIRRORS)

_CHUNK = 1 << 16


def download_dataset(
    name: str,
    dest_dir: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    files: Sequence[str] | None = None,
    timeout: float = 30.0,
    on_progress: Callable[[str, int, int | None], None] | None = None,
) -> Path:
    """Download the IDX files of ``name`` into ``dest_dir`` and return that directory.

    Idempotent: a file already present with the right MD5 is left alone, so this
    is safe to call before every load. Each file is streamed to a temporary file
    in ``dest_dir``, checked, then renamed into place, so an interrupted download
    never leaves a half-written file under the real name.

    ``base_url`` replaces the built-in mirrors (any ``urllib`` URL, ``file://``
    included); ``files`` restricts the download to some of the four official
    names, e.g. only the ``t10k-*`` pair. ``on_progress(filename, bytes_so_far,
    total_bytes_or_None)`` is called as each file arrives, for a progress bar.
    """
    if name not in _MIRRORS:
        raise DatasetError(
            f"dataset {name!r} cannot be downloaded; downloadable datasets are "
            f"{', '.join(DOWNLOADABLE)} ('digits' ships with scikit-learn and 'npz' is "
            "your own file)."
        )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, but got {timeout=}.")
    wanted = _check_files(name, files)
    mirrors = _MIRRORS[name] if base_url is None else (base_url,)
    dest = Path(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot create the download directory {dest} for {name!r}: {exc}; pass a "
            "writable data_dir."
        ) from exc

    for filename in wanted:
        md5 = _MD5[name][filename]
        target = dest / filename
        if target.is_file():
            actual = _file_md5(target)
            if actual == md5:
                logger.debug("%s: %s already present with the right MD5", name, target)
                continue
            logger.warning(
                "%s: %s has MD5 %s, expected %s; downloading it again", name, target, actual, md5
            )
        _fetch_from_mirrors(
            name, filename, mirrors, target, md5=md5, timeout=timeout, on_progress=on_progress
        )
    return dest


def _check_files(name: str, files: Sequence[str] | None) -> tuple[str, ...]:
    if files is None:
        return IDX_FILES
    if isinstance(files, str):
        # A bare string would otherwise be iterated character by character.
        files = (files,)
    unknown = [f for f in files if f not in _MD5[name]]
    if unknown:
        raise DatasetError(
            f"unknown file(s) {unknown} for dataset {name!r}; choose from {list(IDX_FILES)}."
        )
    return tuple(dict.fromkeys(files))


def _fetch_from_mirrors(
    name: str,
    filename: str,
    mirrors: Sequence[str],
    target: Path,
    *,
    md5: str,
    timeout: float,
    on_progress: Callable[[str, int, int | None], None] | None = None,
) -> None:
    failures = []
    for i, mirror in enumerate(mirrors):
        url = _join(mirror, filename)
        try:
            _fetch(url, target, md5=md5, timeout=timeout, on_progress=on_progress)
        except _NetworkError as exc:
            failures.append(f"{url} ({exc.reason})")
            if i + 1 < len(mirrors):
                logger.warning(
                    "could not download %s (%s); trying the next mirror", url, exc.reason
                )
            continue
        return
    raise DatasetError(
        f"could not download {filename} for dataset {name!r}: tried "
        f"{'; '.join(failures)}. Check the network, or put the file into "
        f"{target.parent} yourself.",
        remedy="mirror",
        dataset=name,
    )


class _NetworkError(Exception):
    """Internal: this mirror failed before a complete file arrived; try the next one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _fetch(
    url: str,
    target: Path,
    *,
    md5: str,
    timeout: float,
    on_progress: Callable[[str, int, int | None], None] | None = None,
) -> None:
    logger.info("downloading %s to %s", url, target)
    try:
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as exc:
        raise DatasetError(f"cannot write into {target.parent}: {exc}.") from exc
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total, done = (int(length) if length else None), 0
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if on_progress is not None:
                            on_progress(target.name, done, total)
            except urllib.error.HTTPError as exc:
                raise _NetworkError(str(exc)) from exc
            except urllib.error.URLError as exc:
                raise _NetworkError(str(exc.reason)) from exc
            except (http.client.HTTPException, OSError) as exc:
                raise _NetworkError(f"{type(exc).__name__}: {exc}") from exc
        actual = digest.hexdigest()
        if actual != md5:
            raise DatasetError(
                f"checksum mismatch for {url}: expected MD5 {md5}, got {actual}; the file was "
                "discarded. The mirror may serve a corrupt or different file: retry later.",
                remedy="mirror",
            )
        # mkstemp creates 0600; give the final file the usual permissions of a download.
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except OSError as exc:
        raise DatasetError(f"could not save {url} to {target}: {exc}.") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _join(base_url: str, filename: str) -> str:
    return f"{base_url.rstrip('/')}/{filename}"
