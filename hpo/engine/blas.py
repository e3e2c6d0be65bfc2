"""BLAS set-up for training processes: one thread each.

Must run before NumPy is first imported, since OpenBLAS reads its environment when it loads.
The kernel choice (`OPENBLAS_CORETYPE`) is left to the environment: OpenBLAS detects the CPU
itself unless the environment pins a core type, and a pin is a deliberate setting.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def single_blas_thread(environ: MutableMapping[str, str] | None = None) -> None:
    """One BLAS thread for this process and the processes it starts, unless the user chose.

    At these layer sizes a second BLAS thread made training 2 to 5 times slower whenever the
    other core was busy; parallelism comes from worker processes instead.
    """
    environ = os.environ if environ is None else environ
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        environ.setdefault(name, "1")
