"""The in-memory pruning mirror decides exactly as Optuna does with every epoch reported."""

from __future__ import annotations

import optuna
import pytest

from hpo.engine.launch import pruning_mirror
from hpo.engine.objective import Objective
from hpo.engine.worker import Worker
from hpo.spec.data import load_splits
from hpo.spec.study_file import load_study_file
from hpo.storage.database import resolve_storage
from hpo.storage.studies import join_study, prepare_study, sampler_seed

PRUNERS = {
    "median": "n_startup_trials = 3\nn_warmup_steps = 2\n",
    "successive_halving": "min_resource = 1\nreduction_factor = 2\n",
    "hyperband": "min_resource = 1\nreduction_factor = 2\n",
}


def _outcomes(trials):
    return [
        (t.number, t.state.name, len(t.user_attrs["history"]["val_acc"]), t.value)
        for t in sorted(trials, key=lambda t: t.number)
    ]


@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_the_mirror_prunes_like_optuna_reporting_every_epoch(pruner, tiny_study_file, tmp_path):
    path = tiny_study_file(n_trials=16, epochs=8, pruner=pruner, extra=PRUNERS[pruner])
    path.write_text(path.read_text().replace("low = 1e-4", "low = 1e-5"))  # some slow learners
    spec = load_study_file(path)
    splits = load_splits(spec.data, seed=spec.study.seed)

    # Optuna's own way, in memory: a report and a pruner call every epoch.
    reference = optuna.create_study(
        study_name=spec.study.name,
        direction=spec.study.direction,
        sampler=spec.sampler.build(seed=sampler_seed(spec, 0), space=spec.space),
        pruner=spec.pruner.build(epochs=spec.base.epochs),
    )
    reference.optimize(Objective(spec, splits), n_trials=16)

    # Ours: a real SQLite study, the worker, decisions made on the in-memory mirror.
    settings = resolve_storage(f"sqlite:///{tmp_path / 'mirror.db'}")
    prepare_study(settings, spec)
    joined = join_study(settings, spec)
    objective = Objective(spec, splits, mirror=pruning_mirror(joined, spec))
    Worker(joined, settings, objective, n_trials=16).run()
    stored = joined.study.get_trials(deepcopy=False)

    assert _outcomes(stored) == _outcomes(reference.trials)
    assert {s for _, s, _, _ in _outcomes(stored)} == {"COMPLETE", "PRUNED"}  # it did prune
    # Decided on the mirror, yet stored like Optuna's way: every epoch a trial trained, once,
    # in the trial's final write (see tests/test_batched.py for the transactions).
    for trial, theirs in zip(stored, reference.trials, strict=True):
        history = trial.user_attrs["history"]["val_acc"]
        assert trial.intermediate_values == dict(enumerate(history, start=1))
        assert trial.intermediate_values == theirs.intermediate_values
