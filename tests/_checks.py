"""What every test that runs a study to its end checks: the study is whole, and its mirror."""

from __future__ import annotations

from collections import Counter

import optuna
from mlflow import MlflowClient


def assert_study_is_whole(storage_url: str, n_trials: int, name: str = "tiny") -> Counter:
    """Exactly n_trials finished, nothing left running, no trial number twice; the states."""
    study = optuna.load_study(study_name=name, storage=storage_url)
    states = Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] + states["PRUNED"] == n_trials, states
    assert states["RUNNING"] == 0, states
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    return states


def mlflow_runs(uri: str, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of an experiment."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("hpo.role") == "study"]
    children = [r for r in runs if r.data.tags.get("hpo.role") == "trial"]
    return parents, children


def assert_mirrored_once(storage_url: str, uri: str, experiment: str, name: str = "tiny") -> None:
    """One parent run; every finished trial has exactly one complete child run, and no trial
    has two."""
    study = optuna.load_study(study_name=name, storage=storage_url)
    parents, children = mlflow_runs(uri, experiment)
    assert len(parents) == 1, [p.info.run_id for p in parents]
    runs_per_trial = Counter(int(r.data.tags["hpo.trial_number"]) for r in children)
    assert max(runs_per_trial.values(), default=1) == 1, runs_per_trial
    complete = {int(r.data.tags["hpo.trial_number"]) for r in children
                if r.data.tags.get("hpo.complete") == "true"}  # fmt: skip
    finished = {t.number for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")}
    assert finished <= complete, sorted(finished - complete)
