"""BLAS set-up: one thread per training process unless the user chose otherwise."""

from __future__ import annotations

import subprocess
import sys

from hpo.engine import blas as _blas


def test_single_thread_defaults_respect_user_settings():
    env = {"OPENBLAS_NUM_THREADS": "2"}
    _blas.single_blas_thread(env)
    assert env == {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_hpo_process_runs_openblas_with_one_thread():
    """In a real process the setting reaches OpenBLAS (it must precede NumPy's import)."""
    code = (
        "import os; os.environ.pop('OPENBLAS_NUM_THREADS', None)\n"
        "from hpo.engine import blas as _blas; _blas.single_blas_thread()\n"
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
