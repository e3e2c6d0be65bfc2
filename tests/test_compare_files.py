"""`hpo compare A.toml B.toml`: each study file an arm, seeded alike, compute compared."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import optuna
import pytest

from hpo.analysis.comparison.files import arm_names, plan_files
from hpo.analysis.comparison.stats import render, summarize, summary_json
from hpo.analysis.comparison.studies import (
    Arm,
    Job,
    Row,
    _command,
    read_rows,
    study_rows,
    write_rows,
)
from hpo.analysis.comparison.winner import winning_trial
from hpo.errors import ConfigError
from hpo.storage.studies import stored_spec
from hpo.tracking.runs import TrackingSettings

HPO = [sys.executable, "-m", "hpo.cli"]


@pytest.fixture
def two_files(tiny_study_file):
    """tiny.toml (random, 3 trials of 4 epochs, seed 1) and tiny-long.toml (TPE, 3 trials of
    6 epochs, seed 7): the same data and metric, different searches and compute."""
    first = tiny_study_file(n_trials=3, epochs=4, name="tiny.toml")
    second = tiny_study_file(n_trials=3, epochs=6, name="tiny-long.toml")
    second.write_text(
        second.read_text()
        .replace('name = "random"', 'name = "tpe"\nn_startup_trials = 2')
        .replace("seed = 1", "seed = 7")
    )
    return first, second


# -- planning: names, seeds, the commands, the refusals (nothing runs) -----------------------


def test_each_file_is_an_arm_named_by_its_stem_and_seeded_from_the_first(two_files):
    first, second = two_files
    comparison = plan_files([first, second], seeds=3)
    assert [a.name for a in comparison.arms] == ["tiny", "tiny-long"]
    assert [(a.sampler, a.pruner) for a in comparison.arms] == [
        ("random", "none"),
        ("tpe", "none"),
    ]
    assert comparison.reference == comparison.arms[0]
    assert comparison.seeds == (1, 2, 3)  # the first file's seed + k; the second's 7 is unused
    assert [comparison.budget(a) for a in comparison.arms] == [3, 3]
    names = [job.study_name for job in comparison.jobs()]
    assert names == [
        f"compare-files-tiny--{arm}--seed{seed}"
        for seed in (1, 2, 3)
        for arm in ("tiny", "tiny-long")
    ]
    job = comparison.jobs()[1]
    command = _command(comparison, job, TrackingSettings(enabled=False), Path("s"))
    # The file's own sampler, pruner and budget: no overrides.
    assert command[1:] == [
        "-m", "hpo.cli", "run", str(second),
        "--study-name", "compare-files-tiny--tiny-long--seed1",
        "--seed", "1", "--no-progress", "--no-mlflow",
    ]  # fmt: skip


def test_colliding_stems_are_told_apart_by_their_folders_deterministically():
    paths = [Path("/r/a/book.toml"), Path("/r/b/book.toml"), Path("/r/book-robust.toml")]
    assert arm_names(paths) == ["a-book", "b-book", "book-robust"]
    # Paths that make the same name however far up it goes: a position tells them apart.
    tangled = [Path("/x/a b/s.toml"), Path("/x/a_b/s.toml"), Path("/x/t.toml")]
    names = arm_names(tangled)
    assert names == ["x-a_b-s", "x-a_b-s-2", "t"]
    assert arm_names(tangled) == names


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("n_samples = 600", "n_samples = 500"), "data.n_samples"),
        (("n_samples = 600", "n_samples = 600\nval_fraction = 0.3"), "data.val_fraction"),
        (("n_trials = 3", 'n_trials = 3\nmetric = "val_loss"'), "study.metric"),
    ],
)
def test_files_that_differ_in_data_or_metric_are_refused(two_files, edit, key):
    first, second = two_files
    second.write_text(second.read_text().replace(*edit))
    with pytest.raises(ConfigError) as raised:
        plan_files([first, second], seeds=2)
    assert (raised.value.key, raised.value.source) == (key, str(second))
    assert str(first) in raised.value.message


def test_flags_that_would_override_the_files_are_refused(two_files):
    for kwargs, key in [
        ({"samplers": ["random"]}, "--samplers"),
        ({"pruners": ["none"]}, "--pruners"),
        ({"n_trials": 5}, "--n-trials"),
    ]:
        with pytest.raises(ConfigError, match="each file is an arm") as raised:
            plan_files(two_files, seeds=2, **kwargs)
        assert raised.value.key == key
    with pytest.raises(ConfigError, match="given twice"):
        plan_files([two_files[0], two_files[0]], seeds=2)


def _cli(tmp_path, *args):
    return subprocess.run(
        [*HPO, "compare", *map(str, args), "--storage", f"sqlite:///{tmp_path / 'c.db'}",
         "--no-mlflow", "--seeds", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.slow  # a process start per case
def test_compare_refuses_several_files_in_one_line_before_training(two_files, tmp_path):
    first, second = two_files
    missing = tmp_path / "missing.toml"
    no_test = [tmp_path / "a.toml", tmp_path / "b.toml"]
    for path, source in zip(no_test, two_files, strict=True):
        path.write_text(source.read_text().replace("n_samples = 600\n", ""))
    cases = [
        ([first, second, "--samplers", "random,tpe"], "--samplers: with several study files"),
        ([first, second, "--n-trials", "4"], "--n-trials: with several study files"),
        ([first, missing], f"{missing}: cannot read the study file"),
        ([*no_test], f"{no_test[0]}: hpo compare evaluates on the test split"),
    ]
    for args, message in cases:
        done = _cli(tmp_path, *args)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
        assert done.stderr.strip().count("\n") == 0, done.stderr
    assert not (tmp_path / "c.db").exists() or not optuna.get_all_study_summaries(
        f"sqlite:///{tmp_path / 'c.db'}"
    )  # nothing was created


# -- rows: the epochs a trial trained, search and selection trials, the winner ---------------


def _trial(value, **attrs):
    return optuna.trial.create_trial(
        value=value,
        params={"lr": 0.01},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
        user_attrs={"history": {"val_acc": [0.1] * 5}, **attrs},
    )


def test_rows_count_a_trials_own_epochs_and_tell_selection_trials_apart(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(0.5))
    study.add_trial(_trial(0.7, epochs=15))  # three trainings of 5 epochs (k folds)
    study.add_trial(_trial(0.9, selection_of=1, epochs=10))  # a re-evaluation of trial 1
    rows = study_rows(Job(Arm("random", "none"), 1, "s", ("s",)), [study])
    assert [(r.role, r.epochs, r.index) for r in rows] == [
        ("search", 5, 1), ("search", 15, 2), ("selection", 10, None),
    ]  # fmt: skip
    assert [r.best_so_far for r in rows] == [0.5, 0.7, None]  # the search's alone
    assert rows[1].cumulative_epochs == 20
    # results.csv keeps the role; a file written before it existed reads as search rows.
    write_rows(rows, tmp_path / "results.csv")
    assert read_rows(tmp_path / "results.csv") == rows
    with open(tmp_path / "results.csv", newline="") as f:
        records = list(csv.DictReader(f))
    newer = ("role", "test_acc_without_refit")  # the columns added since the first version
    with open(tmp_path / "old.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in records[0] if k not in newer])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k not in newer} for r in records)
    old_rows = read_rows(tmp_path / "old.csv")
    assert {r.role for r in old_rows} == {"search"}
    assert {r.test_acc_without_refit for r in old_rows} == {None}


def test_the_winner_is_the_best_complete_trial_the_lower_number_on_ties():
    study = optuna.create_study(direction="minimize")
    assert winning_trial(study) is None
    for value in [0.3, 0.2, 0.2, 0.4]:
        study.add_trial(_trial(value))
    winner = winning_trial(study)
    assert winner is not None
    assert winner.number == 1


# -- the report: compute against the reference -----------------------------------------------


def _seed_rows(arm: str, seed: int, test_acc: float, epochs: int) -> list[Row]:
    return [
        Row(
            kind="trial", arm=arm, sampler="random", pruner="none", seed=seed,
            study=f"{arm}-{seed}", index=i, number=i - 1, state="COMPLETE",
            value=0.5 + 0.01 * i, epochs=epochs,
            cumulative_epochs=epochs * i, duration_s=1.0, best_so_far=0.5 + 0.01 * i,
            test_acc=test_acc if i == 3 else None,
        )
        for i in (1, 2, 3)
    ]  # fmt: skip


def test_the_report_compares_the_compute_of_file_arms():
    rows = []
    for seed in (1, 2, 3):
        rows += _seed_rows("book-6.5", seed, 0.80, epochs=5)
        rows += _seed_rows("book-6.5-robust", seed, 0.82, epochs=15)
        rows += _seed_rows("book-6.5-lean", seed, 0.79, epochs=4)
    budgets = {"book-6.5": (3, 5), "book-6.5-robust": (3, 15), "book-6.5-lean": (3, 5)}
    summary = summarize(rows, n_trials=3, epochs=5, maximize=True, reference="book-6.5",
                        budgets=budgets)  # fmt: skip
    data = {arm["name"]: arm for arm in summary_json(summary)["arms"]}
    assert data["book-6.5"]["epochs_median"] == 15
    assert data["book-6.5-robust"]["epochs_median"] == 45
    assert data["book-6.5-robust"]["epochs_ratio"] == 3
    report = render(summary, study="s", metric="val_acc", data="d", figures=[], command="c")
    section = report.split("## Compute: epochs trained per study (median over seeds)", 1)[1]
    assert "| book-6.5-robust | 3 | 45 | 3.00 |" in section
    assert "| book-6.5-lean | 3 | 12 | 0.80 |" in section
    verdict = report.split("## Verdict", 1)[1]
    robust = next(line for line in verdict.splitlines() if "**book-6.5-robust**" in line)
    assert "**not at equal compute**" in robust
    lean = next(line for line in verdict.splitlines() if "**book-6.5-lean**" in line)
    assert "not at equal compute" not in lean


# -- a whole comparison of two files ---------------------------------------------------------


@pytest.mark.slow  # four arm-seed studies, each an `hpo run` process
def test_two_files_compared_end_to_end(two_files, tmp_path):
    first, second = two_files
    storage = f"sqlite:///{tmp_path / 'cmp.db'}"
    done = subprocess.run(
        [*HPO, "compare", str(first), str(second), "--storage", storage, "--seeds", "2",
         "--no-mlflow", "--out", str(tmp_path / "report"), "--noise-trainings", "2",
         "--parallel", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        env=os.environ | {"OPENBLAS_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp_path / "report"
    rows = [r for r in read_rows(out / "results.csv") if r.kind == "trial"]
    by_study = defaultdict(list)
    for r in rows:
        by_study[(r.arm, r.seed)].append(r)
    assert sorted(by_study) == [("tiny", 1), ("tiny", 2), ("tiny-long", 1), ("tiny-long", 2)]
    assert {r.sampler for r in rows if r.arm == "tiny-long"} == {"tpe"}  # the file's own
    # Each arm-seed study ran its file with the comparison's seed, so the same split.
    for (arm, seed), study_rows_ in by_study.items():
        study = optuna.load_study(study_name=study_rows_[0].study, storage=storage)
        assert study.study_name == f"compare-files-tiny--{arm}--seed{seed}"
        assert len(study.trials) == 3
        assert stored_spec(study).study.seed == seed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == "tiny"
    arms = {a["name"]: a for a in summary["arms"]}
    assert list(arms) == ["tiny", "tiny-long"]
    epochs = {
        arm: statistics.median(sum(r.epochs for r in by_study[(arm, s)]) for s in (1, 2))
        for arm in arms
    }
    assert epochs == {"tiny": 12, "tiny-long": 18}  # no pruning: 3 trials × the file's epochs
    tests = {(r.arm, r.seed): r.test_acc for r in rows if r.test_acc is not None}
    for arm, entry in arms.items():
        assert entry["seeds"] == 2
        assert entry["epochs_median"] == epochs[arm]
        assert entry["test_acc_median"] == statistics.median(tests[(arm, s)] for s in (1, 2))
    gains = [tests[("tiny-long", s)] - tests[("tiny", s)] for s in (1, 2)]
    assert arms["tiny-long"]["paired_test_gain_median"] == statistics.median(gains)
    report = (out / "report.md").read_text()
    assert "| tiny-long | 3 | 18 | 1.50 |" in report.split("## Compute: epochs trained", 1)[1]
    assert "**not at equal compute**: it trained 18 epochs per study, 1.50×" in report
