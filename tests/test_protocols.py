"""Evaluation protocols, budgets in epochs and the selection phase (issue 15).

The trainings of a trial are checked against the data (folds partition the search pool,
the test split is never in it), the objective against single trainings (bit for bit), the
budget decision as a pure function, and the whole against real `hpo run` processes on SQLite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from hpo.engine.budget import Budget, Next, decide, reevaluation
from hpo.engine.objective import Objective, replay_record, replay_trial, train_trial
from hpo.engine.protocols import TrainingData, trial_trainings
from hpo.errors import ConfigError
from hpo.spec.data import load_splits
from hpo.spec.evaluation import EvaluationSpec
from hpo.spec.outcomes import SELECTION_OF, ranked_trials, selection_estimates, trial_epochs
from hpo.spec.study_file import load_study_file, parse_study

HPO = [sys.executable, "-m", "hpo.cli"]

STUDY = """\
[study]
name = "robust"
seed = 3
{study}

[data]
dataset = "digits"
n_samples = 600
test_fraction = 0.2

[model]
hidden_size_list = [16]

[train]
optimizer = "sgd"
epochs = {epochs}

[search.lr]
type = "float"
low = 1e-3
high = 0.5
log = true

[sampler]
name = "random"

{extra}
"""


def _write(tmp_path: Path, *, study: str = "", epochs: int = 3, extra: str = "") -> Path:
    path = tmp_path / "robust.toml"
    path.write_text(STUDY.format(study=study, epochs=epochs, extra=extra))
    return path


def _ids(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


# -- what a trial trains --------------------------------------------------------------------


def test_kfold_partitions_the_search_pool_and_keeps_the_test_split_out(tmp_path):
    spec = load_study_file(_write(tmp_path, extra='[evaluation]\nprotocol = "kfold"\nfolds = 4'))
    splits = load_splits(spec.data, seed=spec.study.seed)
    trainings = trial_trainings(
        spec.evaluation, splits, trial_seed=11, study_seed=3, val_fraction=0.2
    )
    pool = _ids(splits.x_train) | _ids(splits.x_val)
    vals = [_ids(t.x_val) for t in trainings]
    assert len(trainings) == 4
    assert set().union(*vals) == pool  # every pool sample is validated once...
    assert sum(len(v) for v in vals) == len(pool)  # ...and only once
    for training, val in zip(trainings, vals, strict=True):
        assert _ids(training.x_train) | val == pool
        assert not _ids(training.x_train) & val
    assert not pool & _ids(splits.test()[0])
    assert trainings[0].seed == 11
    assert len({t.seed for t in trainings}) == 4
    again = trial_trainings(spec.evaluation, splits, trial_seed=99, study_seed=3, val_fraction=0.2)
    assert [_ids(t.x_val) for t in again] == vals  # the study's folds, whatever the trial


def test_a_reshuffled_holdout_draws_a_split_per_trial_and_repeats_keep_the_study_split(
    tmp_path,
):
    spec = load_study_file(_write(tmp_path))
    splits = load_splits(spec.data, seed=spec.study.seed)
    reshuffled = EvaluationSpec("reshuffled")
    a = trial_trainings(reshuffled, splits, trial_seed=1, study_seed=3, val_fraction=0.2)
    b = trial_trainings(reshuffled, splits, trial_seed=2, study_seed=3, val_fraction=0.2)
    a2 = trial_trainings(reshuffled, splits, trial_seed=1, study_seed=3, val_fraction=0.2)
    assert len(a) == 1
    assert _ids(a[0].x_val) != _ids(b[0].x_val)
    assert _ids(a[0].x_val) == _ids(a2[0].x_val)
    assert len(a[0].t_val) == len(splits.t_val)  # the same share of the same pool
    repeats = trial_trainings(
        EvaluationSpec("repeats", repeats=3), splits, trial_seed=5, study_seed=3, val_fraction=0.2
    )
    assert next(t.seed for t in repeats) == 5
    assert len({t.seed for t in repeats}) == 3
    assert all(_ids(t.x_val) == _ids(splits.x_val) for t in repeats)


def test_a_trial_of_several_trainings_scores_their_mean_and_each_is_a_plain_training(tmp_path):
    spec = load_study_file(_write(tmp_path, extra='[evaluation]\nprotocol = "kfold"\nfolds = 3'))
    splits = load_splits(spec.data, seed=spec.study.seed)
    trial = optuna.trial.FixedTrial({"lr": 0.05})
    trial.set_user_attr("seed", 7)
    value = Objective(spec, splits)(trial)
    scores = trial.user_attrs["scores"]
    assert len(scores) == 3
    assert value == pytest.approx(sum(scores) / 3)
    assert trial.user_attrs["epochs"] == 9
    assert trial.user_attrs["history"]["val_acc"][-1] == pytest.approx(value)
    config = spec.space.suggest(optuna.trial.FixedTrial({"lr": 0.05}), spec.base)
    for data, score in zip(
        trial_trainings(spec.evaluation, splits, trial_seed=7, study_seed=3, val_fraction=0.2),
        scores,
        strict=True,
    ):
        _network, history = train_trial(data, config, data.seed)
        assert history.final.val_acc == score  # advancing together changes no bit
    assert trial.user_attrs["score_std"] == pytest.approx(np.std(scores, ddof=1))
    replayed = replay_record(spec, splits, {"lr": 0.05}, 7)
    assert replayed["history"] == trial.user_attrs["history"]
    assert replayed["scores"] == scores  # every training reproduced, bit for bit
    assert replay_trial(spec, splits, {"lr": 0.05}, 7) == trial.user_attrs["history"]


@pytest.mark.parametrize(
    ("study", "extra", "key"),
    [
        ("", '[evaluation]\nprotocol = "bootstrap"', "evaluation.protocol"),
        ("", '[evaluation]\nprotocol = "kfold"\nfolds = 1', "evaluation.folds"),
        ("", "[evaluation]\nrepeats = true", "evaluation.repeats"),
        ("", "[selection]\nfinalists = -1", "selection.finalists"),
        ("", "[selection]\nfinalists = 2\nevaluations = 0", "selection.evaluations"),
        ("max_epochs = 0", "", "study.max_epochs"),
        # one trial of 3 folds × 3 epochs does not fit in 8
        ("max_epochs = 8", '[evaluation]\nprotocol = "kfold"\nfolds = 3', "study.max_epochs"),
        # the selection's 2 × 1 × 3 epochs leave no room for a trial of 3
        ("max_epochs = 8", "[selection]\nfinalists = 2\nevaluations = 1", "study.max_epochs"),
    ],
)
def test_bad_protocol_selection_and_budget_settings_are_refused_by_key(
    tmp_path, study, extra, key
):
    with pytest.raises(ConfigError) as error:
        load_study_file(_write(tmp_path, study=study, extra=extra))
    assert error.value.key == key, error.value


def test_a_kfold_the_classes_cannot_fill_is_refused_before_the_study_exists(tmp_path):
    path = _write(tmp_path, extra='[evaluation]\nprotocol = "kfold"\nfolds = 20')
    text = path.read_text().replace("n_samples = 600", "n_samples = 150")
    path.write_text(text)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    run = _hpo("run", str(path), "--storage", storage, "--no-mlflow", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "evaluation.folds" in run.stderr
    assert "Traceback" not in run.stderr
    assert not optuna.get_all_study_names(storage)


# -- the budget in epochs, and the selection --------------------------------------------------


def _trial(number: int, state: TrialState, value: float | None, epochs: int, **attrs):
    trial = create_trial(
        state=TrialState.COMPLETE,  # then made what it is: create_trial checks values
        value=value if value is not None else 0.0,
        params={},
        distributions={},
        user_attrs={"epochs": epochs, "seed": number, **attrs},
    )
    trial.number = number
    trial.state = state
    if state != TrialState.COMPLETE:
        trial.value = None
    return trial


BUDGET = Budget(
    n_trials=10**6, trial_epochs=10, search_epochs=50, finalists=2, evaluations=2, maximize=True
)


def test_a_trial_starts_only_if_its_most_epochs_fit_beside_what_is_held():
    done = [_trial(i, TrialState.COMPLETE, 0.5, 10) for i in range(3)]
    assert decide(BUDGET, done).next is Next.ASK  # 30 + 10 <= 50
    running = [*done, _trial(3, TrialState.RUNNING, None, 0)]
    assert decide(BUDGET, running).next is Next.ASK  # 30 + 10 held + 10 = 50
    two = [*running, _trial(4, TrialState.RUNNING, None, 0)]
    assert decide(BUDGET, two).next is Next.WAIT  # 30 + 20 held: full, and trials run
    pruned = [*done, _trial(3, TrialState.PRUNED, None, 2), _trial(4, TrialState.PRUNED, None, 3)]
    assert decide(BUDGET, pruned).next is Next.ASK  # 35 spent: a pruned trial frees epochs


def test_the_selection_starts_once_the_search_has_ended_and_takes_the_best():
    values = [0.3, 0.9, 0.5, 0.9, 0.1]
    done = [_trial(i, TrialState.COMPLETE, v, 10) for i, v in enumerate(values)]
    claim = decide(BUDGET, done)
    assert claim.next is Next.SELECT
    assert [(t.number, j) for t, j in claim.queue] == [(1, 0), (1, 1), (3, 0), (3, 1)]
    with_failure = [*done[:4], _trial(4, TrialState.RUNNING, None, 0)]
    assert decide(BUDGET, with_failure).next is Next.WAIT  # never select before all ended
    attrs = [reevaluation(t, j) for t, j in claim.queue]
    assert [a[SELECTION_OF] for a in attrs] == [1, 1, 3, 3]
    assert len({a["seed"] for a in attrs}) == 4
    queued = [
        *done,
        *(_trial(5 + k, TrialState.WAITING, None, 0, **a) for k, a in enumerate(attrs)),
    ]
    assert decide(BUDGET, queued).next is Next.ASK
    over = [
        *done,
        *(_trial(5 + k, TrialState.COMPLETE, 0.5, 10, **a) for k, a in enumerate(attrs)),
    ]
    assert decide(BUDGET, over).next is Next.DONE


def test_queueing_the_selection_is_completed_if_interrupted_and_a_failure_is_retried_once():
    done = [_trial(i, TrialState.COMPLETE, v, 10) for i, v in enumerate([0.3, 0.9, 0.5, 0.8])]
    first = reevaluation(done[1], 0)  # a claim queued one re-evaluation, then its worker died
    partial = [*done, _trial(4, TrialState.WAITING, None, 0, **first)]
    claim = decide(BUDGET, partial)
    assert claim.next is Next.SELECT
    assert [(t.number, j) for t, j in claim.queue] == [(1, 1), (3, 0), (3, 1)]
    everything = [*done, *(
        _trial(4 + k, TrialState.COMPLETE, 0.5, 10, **reevaluation(t, j))
        for k, (t, j) in enumerate([(done[1], 0), (done[1], 1), (done[3], 0)])
    )]  # fmt: skip
    failed = _trial(7, TrialState.FAIL, None, 0, **reevaluation(done[3], 1))
    claim = decide(BUDGET, [*everything, failed])
    assert [(t.number, j) for t, j in claim.queue] == [(3, 1)]  # queued once more
    twice = _trial(8, TrialState.FAIL, None, 0, **reevaluation(done[3], 1))
    assert decide(BUDGET, [*everything, failed, twice]).next is Next.DONE  # not forever


def test_queued_search_trials_the_budget_cannot_hold_are_dropped_not_run_after_selection():
    done = [_trial(i, TrialState.COMPLETE, 0.5, 10) for i in range(5)]  # 50: the share is full
    leftover = _trial(5, TrialState.WAITING, None, 0)  # a retry, or one [[enqueue]] too many
    claim = decide(BUDGET, [*done, leftover])
    assert claim.next is Next.SELECT
    assert [t.number for t in claim.drop] == [5]
    enqueued_only = [_trial(i, TrialState.WAITING, None, 0) for i in range(8)]
    assert decide(BUDGET, enqueued_only).next is Next.ASK  # queued trials run while they fit


def test_a_diverged_reevaluation_counts_as_the_worst_score():
    study = optuna.create_study(direction="maximize")
    for number, value in enumerate([0.9, 0.8]):
        study.add_trial(_trial(number, TrialState.COMPLETE, value, 10))
    study.add_trial(_trial(2, TrialState.COMPLETE, 0.9, 10, **reevaluation(study.trials[0], 0)))
    diverged = _trial(3, TrialState.PRUNED, None, 4, **reevaluation(study.trials[0], 1))
    diverged.user_attrs["diverged"] = {"epoch": 4, "reason": "nan"}
    study.add_trial(diverged)
    for j in (0, 1):
        study.add_trial(_trial(4 + j, TrialState.COMPLETE, 0.8, 10,
                               **reevaluation(study.trials[1], j)))  # fmt: skip
    estimates = selection_estimates(study)
    assert [e.trial.number for e in estimates] == [1, 0]  # steady 0.8 beats 0.9, 0.9 and a NaN
    assert estimates[1].scores == (0.9, 0.9, 0.0)
    assert ranked_trials(study)[0].number == 1


def test_a_budget_of_epochs_is_refused_for_a_study_that_trains_nothing(tmp_path):
    book = Path(__file__).resolve().parents[1] / "studies" / "ch6-1-optimizer-paths.toml"
    path = tmp_path / "paths.toml"
    path.write_text(book.read_text().replace("[study]\n", "[study]\nmax_epochs = 100\n", 1))
    with pytest.raises(ConfigError) as error:
        load_study_file(path)
    assert error.value.key == "study.max_epochs"


def _hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*HPO, *args],
        cwd=cwd,
        env=os.environ | {"OPENBLAS_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_two_workers_spend_the_epoch_budget_exactly_and_select_by_mean(tmp_path):
    extra = (
        '[evaluation]\nprotocol = "kfold"\nfolds = 3\n[selection]\nfinalists = 2\nevaluations = 2'
    )
    # one trial: 3 folds x 3 epochs = 9; the selection: 2 x 2 x 9 = 36; the search: 64 - 36
    path = _write(tmp_path, study="max_epochs = 100", extra=extra)
    storage = f"sqlite:///{tmp_path / 's.db'}"  # the claim lock is tested on both elsewhere
    run = _hpo("run", str(path), "--storage", storage, "--no-mlflow", "--workers", "2",
               "--no-progress", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    study = optuna.load_study(study_name="robust", storage=storage)
    trials = study.get_trials()
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    search = [t for t in counted if SELECTION_OF not in t.user_attrs]
    selection = [t for t in counted if SELECTION_OF in t.user_attrs]
    assert sum(map(trial_epochs, counted)) <= 100
    assert len(search) == 7  # 64 epochs hold 7 trials of 9, not 8
    assert len(selection) == 4
    assert f"{sum(map(trial_epochs, counted))}/100 epochs trained" in run.stdout
    finalists = sorted(search, key=lambda t: (-t.value, t.number))[:2]
    assert {t.user_attrs[SELECTION_OF] for t in selection} == {t.number for t in finalists}
    estimates = selection_estimates(study)
    assert [e.n for e in estimates] == [9, 9]  # 3 folds, in the search and twice more
    # optuna-dashboard shows study attributes: the selection's winner, and how trials score
    assert study.user_attrs["selected"].startswith(f"trial {estimates[0].trial.number}: val_acc")
    assert "3-fold cross-validation" in study.user_attrs["evaluation"]
    assert ranked_trials(study)[0].number == estimates[0].trial.number
    for estimate in estimates:
        mine = [t for t in selection if t.user_attrs[SELECTION_OF] == estimate.trial.number]
        expected = [*estimate.trial.user_attrs["scores"]] + [
            s for t in mine for s in t.user_attrs["scores"]
        ]
        assert estimate.mean == pytest.approx(np.mean(expected))
    again = _hpo("run", str(path), "--storage", storage, "--no-mlflow", "--no-progress",
                 cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name="robust", storage=storage).trials) == len(trials)
    best = _hpo("best", "robust", "--storage", storage, "--no-mlflow", "--retrain", cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    winner = estimates[0]
    assert f"trial {winner.trial.number} won the selection" in best.stdout
    assert f"of {winner.n} trainings" in best.stdout
    assert ": identical" in best.stdout
    assert "test split" in best.stdout
    number = str(selection[0].number)  # a re-evaluation: 3 folds, replayed one by one
    replay = _hpo("replay", "robust", number, "--storage", storage, cwd=tmp_path)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "identical at every recorded epoch" in replay.stdout
    assert "reproduced scores of its 3 trainings" in replay.stdout
    status = _hpo("status", "robust", "--storage", storage, cwd=tmp_path)
    assert f"selected trial {winner.trial.number}: mean" in status.stdout, status.stdout
    assert f"over {winner.n} trainings" in status.stdout


def test_a_resumed_study_cannot_change_its_protocol(tmp_path):
    path = _write(tmp_path, study="n_trials = 1")
    storage = f"sqlite:///{tmp_path / 's.db'}"
    first = _hpo("run", str(path), "--storage", storage, "--no-mlflow", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    path.write_text(path.read_text() + '\n[evaluation]\nprotocol = "repeats"\n')
    second = _hpo("run", str(path), "--storage", storage, "--no-mlflow", cwd=tmp_path)
    assert second.returncode == 2, second.stderr
    assert "evaluation" in second.stderr
    assert "Traceback" not in second.stderr


def test_parse_keeps_holdout_for_the_books_files():
    spec = parse_study(
        {"search": {"lr": {"type": "float", "low": 0.001, "high": 0.1}}}, source="x"
    )
    assert spec.evaluation.protocol == "holdout"
    assert spec.evaluation.trainings == 1
    assert not spec.selection.enabled
    assert spec.study.max_epochs is None


# -- the final model, and what MLflow records --------------------------------------------------


def test_refit_trains_the_final_model_on_the_whole_search_pool_after_an_exact_replay(tmp_path):
    from hpo.analysis.best import best_trial, evaluate_on_test, retrain
    from hpo.engine.run import run_study

    path = _write(
        tmp_path, study="n_trials = 3", extra='[evaluation]\nprotocol = "reshuffled"\nrefit = true'
    )
    result = run_study(path, storage=f"sqlite:///{tmp_path / 's.db'}", tracking=False)
    spec = result.spec
    trial = best_trial(result.study)
    retrained = retrain(spec, trial)
    assert retrained.identical  # the first training, on the trial's own split, bit for bit
    assert retrained.refit is not None
    assert retrained.model is retrained.refit
    splits = load_splits(spec.data, seed=spec.study.seed)
    config = spec.space.suggest(optuna.trial.FixedTrial(dict(trial.params)), spec.base)
    pool = TrainingData(
        np.concatenate([splits.x_train, splits.x_val]),
        np.concatenate([splits.t_train, splits.t_val]),
        splits.x_val,
        splits.t_val,
        retrained.seed,
        splits.n_classes,
    )
    expected, _ = train_trial(pool, config, retrained.seed)
    np.testing.assert_array_equal(retrained.refit.flat_params, expected.flat_params)
    x_test, t_test = splits.test()
    assert evaluate_on_test(retrained).acc == expected.evaluate(x_test, t_test)[1]
    # without refit, the tested model is the reproduced training itself
    plain = retrain(dataclasses.replace(spec, evaluation=EvaluationSpec("reshuffled")), trial)
    assert plain.refit is None
    assert plain.model is plain.network


@pytest.mark.slow
def test_the_mlflow_parent_run_records_the_selection(tmp_path):
    from _checks import mlflow_runs

    extra = '[evaluation]\nprotocol = "repeats"\nrepeats = 2\n[selection]\nfinalists = 2'
    path = _write(tmp_path, study="max_epochs = 36", epochs=2, extra=extra)
    storage, tracking = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = _hpo("run", str(path), "--storage", storage, "--tracking-uri", tracking,
               "--experiment", "robust", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    study = optuna.load_study(study_name="robust", storage=storage)
    winner = selection_estimates(study)[0]
    parents, children = mlflow_runs(tracking, "robust")
    assert len(parents) == 1
    assert len(children) == len(study.trials)  # the re-evaluations are runs too
    parent = parents[0].data
    assert parent.tags["hpo.selected_trial"] == str(winner.trial.number)
    assert parent.metrics["selected_val_acc_mean"] == pytest.approx(winner.mean)
    assert parent.metrics["selected_trainings"] == winner.n == 6  # 2 repeats, 3 times
    finalists = json.loads(parent.tags["hpo.selection"])
    assert [f["trial"] for f in finalists] == [e.trial.number for e in selection_estimates(study)]


def test_a_finalists_reevaluation_is_never_pruned(tmp_path):
    extra = '[pruner]\nname = "median"\nn_startup_trials = 0\nn_warmup_steps = 1'
    spec = load_study_file(_write(tmp_path, extra=extra))
    splits = load_splits(spec.data, seed=spec.study.seed)
    # A pruner that stops every trial it is asked about: only the re-evaluation runs through.
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(2.0))
    study.enqueue_trial({"lr": 0.05}, user_attrs={"seed": 1})
    study.enqueue_trial({"lr": 0.05}, user_attrs={"seed": 2, SELECTION_OF: 0})
    study.optimize(Objective(spec, splits), n_trials=2)
    candidate, reevaluation = study.trials
    assert candidate.state == TrialState.PRUNED
    assert reevaluation.state == TrialState.COMPLETE
    assert len(reevaluation.user_attrs["history"]["val_acc"]) == spec.base.epochs


def test_the_narrowing_arm_is_refused_for_a_budget_of_epochs(tmp_path):
    from hpo.analysis.comparison.studies import plan

    path = _write(tmp_path, study="max_epochs = 60")
    spec = load_study_file(path)
    with pytest.raises(ConfigError) as error:
        plan(
            spec, path, samplers=["random", "narrowing"], pruners=["none"], seeds=2, n_trials=None
        )
    assert error.value.key == "--samplers"
    assert "max_epochs" in error.value.message


def test_reevaluations_queued_before_they_had_an_index_count_in_order():
    done = [_trial(i, TrialState.COMPLETE, v, 10) for i, v in enumerate([0.3, 0.9, 0.5, 0.8])]
    older = [
        _trial(4 + k, TrialState.COMPLETE, 0.5, 10, selection_of=number, seed=k)
        for k, number in enumerate([1, 1, 3, 3])
    ]  # as the first version of the selection queued them: no selection_index
    assert decide(BUDGET, [*done, *older]).next is Next.DONE


def test_the_report_shows_a_selection_by_its_means_and_stars_its_winner():
    from hpo.analysis.figures import lr_weight_decay_figure
    from hpo.analysis.listing import best_lines
    from hpo.analysis.study_report import search_points

    study = optuna.create_study(direction="maximize")
    params = [(0.01, 1e-6, 0.9), (0.005, 1e-5, 0.8), (0.002, 1e-7, 0.5)]
    for number, (lr, wd, value) in enumerate(params):
        trial = _trial(number, TrialState.COMPLETE, value, 10)
        trial.params = {"lr": lr, "weight_decay_lambda": wd}
        trial.distributions = {
            "lr": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
            "weight_decay_lambda": optuna.distributions.FloatDistribution(1e-8, 1e-4, log=True),
        }
        study.add_trial(trial)
    for k, (finalist, value) in enumerate([(0, 0.6), (1, 0.8)]):
        again = _trial(3 + k, TrialState.COMPLETE, value, 10,
                       **reevaluation(study.trials[finalist], 0))  # fmt: skip
        again.params, again.distributions = (
            study.trials[finalist].params,
            study.trials[finalist].distributions,
        )
        study.add_trial(again)
    lines = best_lines(study, "val_acc", n=3)
    assert lines[0].startswith("Best-1 (val acc:0.8 ± 0 over 2, search 0.8) | lr:0.005")
    assert lines[1].startswith("Best-2 (val acc:0.75 ± 0.212 over 2, search 0.9) | lr:0.01")
    assert lines[2].startswith("Best-3 (val acc:0.5) |")
    points = search_points(study)
    assert [p.number for p in points] == [0, 1, 2]  # re-evaluations stack on no point
    figure = lr_weight_decay_figure(
        points, metric_label="validation accuracy", maximize=True, title="t", selected=1
    )
    star = {c.get_gid(): c for c in figure.axes[0].collections}["best"]
    np.testing.assert_array_equal(star.get_offsets(), [(0.005, 1e-5)])  # not the 0.9 trial


# -- pruning between folds: Optuna's WilcoxonPruner ------------------------------------------

WILCOXON = '[evaluation]\nprotocol = "kfold"\nfolds = 4\n[pruner]\nname = "wilcoxon"\n'


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[pruner]\nname = "wilcoxon"', "pruner.name"),  # the book's holdout: no folds to pair
        ('[evaluation]\nprotocol = "repeats"\n[pruner]\nname = "wilcoxon"', "pruner.name"),
        (WILCOXON + "p_threshold = 0", "pruner.p_threshold"),
        (WILCOXON + "p_threshold = 1.5", "pruner.p_threshold"),
        (WILCOXON + "n_startup_steps = -1", "pruner.n_startup_steps"),
    ],
)
def test_the_wilcoxon_pruner_needs_folds_and_valid_options(tmp_path, extra, key):
    with pytest.raises(ConfigError) as error:
        load_study_file(_write(tmp_path, extra=extra))
    assert error.value.key == key, error.value


def test_folds_train_one_after_another_and_a_clearly_worse_trial_stops_between_them(tmp_path):
    # Four folds: one-sided signed-rank p is at least 1/8 after three, so p_threshold 0.2.
    spec = load_study_file(_write(tmp_path, extra=WILCOXON + "p_threshold = 0.2"))
    splits = load_splits(spec.data, seed=spec.study.seed)
    study = optuna.create_study(direction="maximize", pruner=spec.build_pruner())
    study.enqueue_trial({"lr": 0.3}, user_attrs={"seed": 1})  # learns
    study.enqueue_trial({"lr": 0.001}, user_attrs={"seed": 2})  # barely moves in 3 epochs
    study.optimize(Objective(spec, splits), n_trials=2)
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE
    assert good.intermediate_values == dict(enumerate(good.user_attrs["scores"]))
    assert bad.state == TrialState.PRUNED
    folds = len(bad.user_attrs["scores"])
    assert folds == 3  # stopped between folds; never after the last, which would save nothing
    assert bad.user_attrs["epochs"] == 3 * folds
    assert len(bad.user_attrs["history"]["val_acc"]) == 3  # the mean curve of those folds
    config = spec.space.suggest(optuna.trial.FixedTrial({"lr": 0.001}), spec.base)
    trainings = trial_trainings(
        spec.evaluation, splits, trial_seed=2, study_seed=3, val_fraction=0.2
    )
    for data, score in zip(trainings, bad.user_attrs["scores"], strict=False):
        assert train_trial(data, config, data.seed)[1].final.val_acc == score
    replayed = replay_record(spec, splits, {"lr": 0.001}, 2, folds=folds)
    assert replayed["history"] == bad.user_attrs["history"]
    assert replayed["scores"] == bad.user_attrs["scores"]


@pytest.mark.slow
def test_two_workers_prune_between_folds_through_the_storage(tmp_path):
    extra = WILCOXON + "p_threshold = 0.2\nn_startup_steps = 1\n[selection]\nfinalists = 2"
    path = _write(tmp_path, study="max_epochs = 240", extra=extra)
    text = path.read_text().replace("low = 1e-3", "low = 1e-5")  # room for hopeless rates
    path.write_text(text)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    run = _hpo("run", str(path), "--storage", storage, "--no-mlflow", "--workers", "2",
               "--no-progress", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    study = optuna.load_study(study_name="robust", storage=storage)
    counted = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sum(map(trial_epochs, counted)) <= 240
    pruned = [
        t for t in counted if t.state == TrialState.PRUNED and "diverged" not in t.user_attrs
    ]
    assert pruned, "no trial was pruned between folds"
    for trial in counted:
        if "diverged" in trial.user_attrs:
            continue  # its last fold stopped part-way: its epochs are not whole folds
        scores = trial.user_attrs.get("scores", [])
        assert trial.intermediate_values == dict(enumerate(scores))  # a step per fold
        assert trial.user_attrs["epochs"] == 3 * len(scores)
        if trial.state == TrialState.PRUNED:
            assert len(scores) < 4  # never after the last fold
    reevaluations = [t for t in counted if SELECTION_OF in t.user_attrs]
    assert len(reevaluations) == 4
    assert all(t.state == TrialState.COMPLETE for t in reevaluations)


def test_a_diverged_training_counts_the_epoch_it_diverged_in(tmp_path):
    spec = load_study_file(_write(tmp_path))
    splits = load_splits(spec.data, seed=spec.study.seed)
    trial = optuna.trial.FixedTrial({"lr": 1e20})
    with pytest.raises(optuna.TrialPruned):
        Objective(spec, splits)(trial)
    diverged_in = trial.user_attrs["diverged"]["epoch"]
    assert len(trial.user_attrs["history"]["val_acc"]) == diverged_in - 1
    assert trial.user_attrs["epochs"] == diverged_in  # what a budget of epochs counts
