"""Studies as a storage holds them, for tests that compare two ways of storing the same trials."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna

from hpo.spec.study_file import StudySpec, load_study_file
from hpo.storage.database import open_storage, resolve_storage

# A second searched setting, so that TPE samples relatively (multivariate) and notes what it
# sampled in the trial's system attributes (``tpe:relative_params``).
TPE_SEARCH = """
[search.weight_decay_lambda]
type = "float"
low = 1e-8
high = 1e-4
log = true
"""


def tpe_study(tiny_study_file: Callable[..., Path], *, n_trials: int, epochs: int) -> StudySpec:
    """The tiny study with TPE (multivariate, constant liar), relative after two trials."""
    path = tiny_study_file(n_trials=n_trials, epochs=epochs, extra=TPE_SEARCH)
    text = path.read_text().replace(
        '[sampler]\nname = "random"',
        '[sampler]\nname = "tpe"\nn_startup_trials = 2\nmultivariate = true\nconstant_liar = true',
    )
    assert "tpe" in text
    path.write_text(text)
    return load_study_file(path)


def stored_trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    """The trials as a fresh, uncached storage reads them."""
    storage = open_storage(resolve_storage(url), heartbeat=False)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def trial_record(trial: optuna.trial.FrozenTrial) -> tuple:
    """Everything stored of a trial but its clock times (which differ from run to run)."""
    return (
        trial.number,
        trial.state,
        trial.values,
        trial.params,
        trial.distributions,
        trial.user_attrs,
        trial.system_attrs,
        trial.intermediate_values,
        trial.datetime_start is not None,
        trial.datetime_complete is not None,
    )
