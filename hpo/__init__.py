"""Hyperparameter optimisation for the chapter-6 networks: Optuna studies over `trainer`.

The public API, what the `hpo` commands do, from Python:

    spec = hpo.load_study("studies/quickstart.toml")      # validated; hpo.ConfigError if not
    result = hpo.run_study(spec, storage="sqlite:///hpo.db", workers=2)   # hpo run
    hpo.best("quickstart", storage="sqlite:///hpo.db")    # hpo best: an Optuna FrozenTrial
    hpo.replay("quickstart", storage="sqlite:///hpo.db")  # hpo replay: trained again, compared
    hpo.report("quickstart", storage="sqlite:///hpo.db")  # hpo report --no-mlflow
    hpo.compare("studies/book-6.5.toml", samplers=["random", "tpe"], ...)  # hpo compare

Importing this package loads nothing heavy (no NumPy, Optuna or MLflow): each name is
imported on first use, so that the command line can choose BLAS kernels before NumPy starts
(see `hpo.engine.blas`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name and the module it lives in (imported when the name is first used).
_PUBLIC = {
    "ConfigError": "hpo.errors",
    "StudySpec": "hpo.spec.study_file",
    "load_study": "hpo.spec.load",
    "run_study": "hpo.engine.run",
    "RunResult": "hpo.engine.run",
    "RunListener": "hpo.engine.run",
    "open_storage": "hpo.analysis.results",
    "open_study": "hpo.analysis.results",
    "best": "hpo.analysis.results",
    "replay": "hpo.analysis.results",
    "Replay": "hpo.analysis.results",
    "report": "hpo.analysis.results",
    "Report": "hpo.analysis.study_report",
    "compare": "hpo.analysis.comparison.run",
    "Comparison": "hpo.analysis.comparison.run",
}

__all__ = [
    "Comparison",
    "ConfigError",
    "Replay",
    "Report",
    "RunListener",
    "RunResult",
    "StudySpec",
    "__version__",
    "best",
    "compare",
    "load_study",
    "open_storage",
    "open_study",
    "replay",
    "report",
    "run_study",
]

if TYPE_CHECKING:
    from hpo.analysis.comparison.run import Comparison, compare
    from hpo.analysis.results import Replay, best, open_storage, open_study, replay, report
    from hpo.analysis.study_report import Report
    from hpo.engine.run import RunListener, RunResult, run_study
    from hpo.errors import ConfigError
    from hpo.spec.load import load_study
    from hpo.spec.study_file import StudySpec


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
