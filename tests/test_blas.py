"""BLAS set-up: AVX-512 kernels for OpenBLAS on AMD CPUs that have them, one thread."""

from __future__ import annotations

import subprocess
import sys

from hpo import _blas

AVX512 = "avx512f avx512cd avx512bw avx512dq avx512vl"


def _cpuinfo(tmp_path, vendor: str, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(
        f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu sse avx2 {flags}\n\n"
        f"processor\t: 1\nvendor_id\t: {vendor}\nflags\t\t: fpu sse avx2 {flags}\n"
    )
    return path


def test_amd_with_avx512_gets_skylakex_kernels(tmp_path):
    env: dict[str, str] = {}
    assert _blas.prefer_avx512_kernels(env, _cpuinfo(tmp_path, "AuthenticAMD", AVX512))
    assert env == {"OPENBLAS_CORETYPE": "SkylakeX"}


def test_amd_without_full_avx512_is_left_alone(tmp_path):
    env: dict[str, str] = {}
    assert not _blas.prefer_avx512_kernels(env, _cpuinfo(tmp_path, "AuthenticAMD", "avx512f"))
    assert env == {}


def test_intel_is_left_to_openblas_detection(tmp_path):
    env: dict[str, str] = {}
    assert not _blas.prefer_avx512_kernels(env, _cpuinfo(tmp_path, "GenuineIntel", AVX512))
    assert env == {}


def test_a_users_choice_wins(tmp_path):
    env = {"OPENBLAS_CORETYPE": "Haswell"}
    assert not _blas.prefer_avx512_kernels(env, _cpuinfo(tmp_path, "AuthenticAMD", AVX512))
    assert env == {"OPENBLAS_CORETYPE": "Haswell"}


def test_missing_cpuinfo_changes_nothing(tmp_path):
    env: dict[str, str] = {}
    assert not _blas.prefer_avx512_kernels(env, tmp_path / "absent")
    assert env == {}


def test_single_thread_defaults_respect_user_settings():
    env = {"OPENBLAS_NUM_THREADS": "2"}
    _blas.single_blas_thread(env)
    assert env == {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_cli_process_runs_openblas_with_one_thread():
    """In a real `hpo` process the settings reach OpenBLAS (they must precede NumPy's import)."""
    code = (
        "import sys; from hpo.cli import main; from hpo import _blas\n"
        "import os; os.environ.pop('OPENBLAS_NUM_THREADS', None)\n"
        "_blas.single_blas_thread()\n"
        "import numpy, threadpoolctl\n"
        "info = [i for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']\n"
        "print(info[0]['num_threads'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.stdout.strip() == "1"
