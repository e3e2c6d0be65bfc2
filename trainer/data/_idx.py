"""A small reader for the gzip-compressed IDX files of MNIST and its drop-in relatives.

IDX (http://yann.lecun.com/exdb/mnist/, bottom of the page): a big-endian header
``00 00 <type> <ndim>`` followed by ``ndim`` uint32 sizes, then the payload in C
order. Only the unsigned-byte type (0x08) is used by these datasets.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ._errors import DatasetError

__all__ = ["IMAGES_MAGIC", "LABELS_MAGIC", "read_idx_images", "read_idx_labels"]

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions: (n, rows, cols)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension: (n,)

_REDOWNLOAD = "delete it and download it again (download=True)"


def read_idx_images(path: Path) -> NDArray[np.uint8]:
    """Read an ``idx3-ubyte.gz`` image file as a (n, rows, cols) uint8 array."""
    return _read_idx(path, magic=IMAGES_MAGIC, ndim=3)


def read_idx_labels(path: Path) -> NDArray[np.uint8]:
    """Read an ``idx1-ubyte.gz`` label file as a (n,) uint8 array."""
    return _read_idx(path, magic=LABELS_MAGIC, ndim=1)


def _read_idx(path: Path, *, magic: int, ndim: int) -> NDArray[np.uint8]:
    raw = _gunzip(path)
    header_len = 4 + 4 * ndim
    if len(raw) < 4:
        raise DatasetError(
            f"{path} is truncated: it holds {len(raw)} bytes, too few for an IDX header; "
            f"{_REDOWNLOAD}."
        )
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetError(
            f"{path} is not an IDX file of the expected kind: its magic number is "
            f"0x{found:08x}, expected 0x{magic:08x} (unsigned bytes, {ndim}-D); check that "
            f"images and labels were not swapped, or {_REDOWNLOAD}."
        )
    if len(raw) < header_len:
        raise DatasetError(
            f"{path} is truncated inside its header ({len(raw)} of {header_len} bytes); "
            f"{_REDOWNLOAD}."
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim > 1 and 0 in shape[1:]:
        raise DatasetError(f"{path} declares an empty image shape {shape[1:]}; {_REDOWNLOAD}.")
    expected = math.prod(shape)
    payload = len(raw) - header_len
    if payload < expected:
        raise DatasetError(
            f"{path} is truncated: its header declares shape {shape} ({expected} bytes of "
            f"data) but only {payload} bytes follow; {_REDOWNLOAD}."
        )
    if payload > expected:
        raise DatasetError(
            f"{path} has {payload - expected} unexpected trailing bytes after the {expected} "
            f"bytes its header declares for shape {shape}; {_REDOWNLOAD}."
        )
    # frombuffer shares the decompressed bytes (no copy); callers convert to float anyway.
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist; put the file there or download it.") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{path} is not a valid gzip file ({exc or type(exc).__name__}); it is probably "
            f"corrupt or incompletely downloaded: {_REDOWNLOAD}."
        ) from exc
    except OSError as exc:
        raise DatasetError(f"could not read {path}: {exc}.") from exc
