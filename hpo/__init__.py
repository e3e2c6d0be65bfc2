"""Hyperparameter optimisation for the chapter-6 networks: Optuna studies over `trainer`.

Importing this package loads nothing heavy (no NumPy), so that the command line can choose
BLAS kernels before NumPy starts: see `hpo.engine.blas`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
