"""BLAS set-up for training processes: kernels that use the CPU's vector units, one thread.

Must run before NumPy is first imported, since OpenBLAS reads its environment when it loads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from pathlib import Path

logger = logging.getLogger(__name__)

# OpenBLAS's SkylakeX kernels need these AVX-512 subsets.
_AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


def _cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    """(vendor, flags) of the first CPU listed, or ("", {}) where /proc/cpuinfo is missing."""
    vendor, flags = "", frozenset()
    try:
        text = cpuinfo.read_text()
    except OSError:
        return vendor, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return vendor, flags


def prefer_avx512_kernels(
    environ: MutableMapping[str, str] | None = None, cpuinfo: Path = Path("/proc/cpuinfo")
) -> bool:
    """Point OpenBLAS at its AVX-512 kernels on AMD CPUs that have AVX-512; True if it did.

    OpenBLAS 0.3.31 (NumPy 2.4's) does not recognise AMD Zen 5 and falls back to its Haswell
    (AVX2) kernels: measured here, float32 matrix products then run at 117 instead of
    230 GFLOP/s. Intel CPUs are detected correctly and left alone, and so is an
    `OPENBLAS_CORETYPE` the user has set.
    """
    environ = os.environ if environ is None else environ
    if "OPENBLAS_CORETYPE" in environ:
        return False
    vendor, flags = _cpu_info(cpuinfo)
    if vendor != "AuthenticAMD" or not _AVX512_FLAGS.issubset(flags):
        return False
    environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    logger.debug("OPENBLAS_CORETYPE=SkylakeX: this AMD CPU has AVX-512")
    return True


def single_blas_thread(environ: MutableMapping[str, str] | None = None) -> None:
    """One BLAS thread for this process and the processes it starts.

    At these layer sizes a second BLAS thread made training 2 to 5 times slower whenever the
    other core was busy; parallelism comes from worker processes instead.
    """
    environ = os.environ if environ is None else environ
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        environ.setdefault(name, "1")
