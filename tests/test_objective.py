"""The objective: one trial is one training run; tested with FixedTrial and in-memory studies."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from hpo.engine.objective import Objective, replay_trial, trial_seed
from hpo.spec.data import load_splits
from hpo.spec.study_file import load_study_file
from trainer.data import DataSplits


class NoTestSplits(DataSplits):
    """Splits whose held-out test set raises if anyone asks for it."""

    def test(self):  # type: ignore[override]
        raise AssertionError("the objective asked for the test split")


@pytest.fixture
def spec(tiny_study_file):
    return load_study_file(tiny_study_file(epochs=4))


@pytest.fixture
def splits(spec):
    real = load_splits(spec.data, seed=spec.study.seed)
    assert real.has_test  # digits with n_samples: the rest is a test split...
    fields = {f.name: getattr(real, f.name) for f in dataclasses.fields(real)}
    return NoTestSplits(**fields)  # ...that the objective must never touch


def test_value_is_the_final_validation_accuracy_and_history_is_kept(spec, splits):
    trial = optuna.trial.FixedTrial({"lr": 0.01})
    value = Objective(spec, splits)(trial)
    history = trial.user_attrs["history"]
    assert set(history) == {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert all(len(column) == 4 for column in history.values())
    assert value == history["val_acc"][-1]
    assert 0.5 < value <= 1.0  # lr 0.01 with Adam learns digits in 4 epochs


def test_the_same_trial_number_and_params_reproduce_bit_for_bit(spec, splits):
    first, second = (optuna.trial.FixedTrial({"lr": 0.003}, number=7) for _ in range(2))
    objective = Objective(spec, splits)
    assert objective(first) == objective(second)
    assert first.user_attrs == second.user_attrs
    other = optuna.trial.FixedTrial({"lr": 0.003}, number=8)
    objective(other)
    assert other.user_attrs["seed"] != first.user_attrs["seed"]


def test_a_seed_given_with_the_trial_wins(spec, splits):
    trial = optuna.trial.FixedTrial({"lr": 0.003}, number=3)
    trial.set_user_attr("seed", 12345)
    assert trial_seed(trial, spec.study.seed, spec.study.name) == 12345
    replayed = replay_trial(spec, splits, {"lr": 0.003}, 12345)
    Objective(spec, splits)(trial)
    assert replayed == trial.user_attrs["history"]


def test_a_diverging_trial_is_pruned_with_its_reason_and_the_study_goes_on(
    tiny_study_file, splits
):
    path = tiny_study_file(epochs=3)
    path.write_text(
        path.read_text()
        .replace('optimizer = "adam"', 'optimizer = "sgd"')
        .replace("high = 1e-1", "high = 1e20")
    )
    spec = load_study_file(path)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"lr": 1e20})  # SGD at 1e20 blows up in the first epoch
    study.enqueue_trial({"lr": 0.05})
    study.optimize(Objective(spec, splits), n_trials=2)
    diverged, healthy = study.trials
    assert diverged.state == optuna.trial.TrialState.PRUNED
    assert diverged.user_attrs["diverged"]["epoch"] == 1
    assert (
        "not finite" in diverged.user_attrs["diverged"]["reason"]
        or "nan" in (diverged.user_attrs["diverged"]["reason"])
    )
    assert diverged.user_attrs["history"]["val_acc"] == []  # no epoch finished
    assert healthy.state == optuna.trial.TrialState.COMPLETE


def test_an_unexpected_error_fails_the_trial_with_its_message(spec, splits, monkeypatch):
    objective = Objective(spec, splits)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("hpo.engine.objective.train_together", broken)
    trial = optuna.trial.FixedTrial({"lr": 0.01})
    with pytest.raises(RuntimeError):
        objective(trial)
    assert trial.user_attrs["error"] == "RuntimeError: disk on fire"


def test_pruning_stops_weak_trials_early(tiny_study_file, splits):
    spec = load_study_file(
        tiny_study_file(
            epochs=12, pruner="median", extra="n_startup_trials = 2\nn_warmup_steps = 3\n"
        )
    )
    study = optuna.create_study(direction="maximize", pruner=spec.pruner.build(epochs=12))
    for lr in (0.01, 0.02, 1e-4, 2e-4):  # two good, then two that learn slowly
        study.enqueue_trial({"lr": lr})
    study.optimize(Objective(spec, splits), n_trials=4)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    for trial in study.trials[2:]:
        epochs = len(trial.user_attrs["history"]["val_acc"])
        assert 3 <= epochs < 12  # stopped after the warm-up, well before the end
