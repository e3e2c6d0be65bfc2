"""`hpo compare` as a user runs it; every number of its report recomputed from results.csv."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import optuna
import pytest
from scipy.stats import mannwhitneyu, wilcoxon

from hpo.analysis.comparison.stats import median_interval

pytestmark = pytest.mark.slow  # the fast tier: pytest -m 'not slow'

HPO = [sys.executable, "-m", "hpo.cli"]
N_TRIALS, SEEDS, EPOCHS = 8, 2, 15
ARMS = ["random+none", "random+median", "tpe+none", "tpe+median"]


@pytest.fixture
def compare_file(tiny_study_file):
    path = tiny_study_file(
        n_trials=N_TRIALS,
        epochs=EPOCHS,
        pruner="median",
        extra="n_startup_trials = 2\nn_warmup_steps = 3\n",
    )
    # TPE's own model takes over after 4 random trials, so its arm differs from random's.
    path.write_text(
        path.read_text().replace(
            'name = "random"',
            'name = "tpe"\nn_startup_trials = 4\nmultivariate = true\nconstant_liar = true',
        )
    )
    return path


def _compare(compare_file, tmp_path, *extra, **kwargs):
    command = [
        *HPO,
        "compare",
        str(compare_file),
        "--storage",
        f"sqlite:///{tmp_path / 'cmp.db'}",
        "--seeds",
        str(SEEDS),
        "--pruners",
        "none,median",
        "--no-mlflow",
        "--out",
        str(tmp_path / "report"),
        "--noise-trainings",
        "6",
        "--audit",
        "3",
        *extra,
    ]
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        command,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        **kwargs,
    )


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(text):
    return None if text == "" else float(text)


def _spread(values):
    q1, q3 = np.percentile(values, [25, 75])
    return f"{statistics.median(values):.3f} [{q1:.3f}–{q3:.3f}]"


def _table(report: str, heading: str) -> dict[str, list[str]]:
    """The rows of the markdown table under `heading`, by their first cell."""
    section = report.split(heading, 1)[1]
    table = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            if table:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] not in ("arm", "---"):
            table[cells[0]] = cells[1:]
    return table


def _running_trials(database: Path) -> int:
    """RUNNING trials in a SQLite study database, read directly (0 while it is busy)."""
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=1)) as connection:
            query = "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'"
            return int(connection.execute(query).fetchone()[0])
    except sqlite3.Error:
        return 0


def test_every_number_in_the_report_comes_from_results_csv(compare_file, tmp_path):
    done = _compare(compare_file, tmp_path, "--parallel", "2")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "report"
    for name in (
        "report.md",
        "results.csv",
        "best_so_far_vs_trials.png",
        "best_so_far_vs_epochs.png",
        "final_values.png",
    ):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    rows = _rows(out / "results.csv")
    trials = [r for r in rows if r["kind"] == "trial"]

    # One row per (arm, seed, trial), the budget exact in every study.
    by_study = defaultdict(list)
    for r in trials:
        by_study[(r["arm"], int(r["seed"]))].append(r)
    assert sorted(by_study) == sorted((a, s) for a in ARMS for s in (1, 2))
    for key, study_rows in by_study.items():
        finished = [r for r in study_rows if r["index"] != ""]
        assert sorted(int(r["index"]) for r in finished) == list(range(1, N_TRIALS + 1)), key
        assert sum(r["test_acc"] != "" for r in study_rows) == 1, key

    def curve(arm, seed):
        return {int(r["index"]): r for r in by_study[(arm, seed)] if r["index"] != ""}

    # Best so far at 10, 25, 50 and 100% of the budget.
    table = _table(report, "## Best val_acc so far")
    for arm in ARMS:
        expected = []
        for fraction in (0.10, 0.25, 0.50, 1.00):
            index = max(1, math.ceil(fraction * N_TRIALS - 1e-9))
            expected.append(_spread([float(curve(arm, s)[index]["best_so_far"]) for s in (1, 2)]))
        assert table[arm] == expected, arm

    # Cost of reaching random+none's final median best.
    finals = {(a, s): float(curve(a, s)[N_TRIALS]["best_so_far"]) for a in ARMS for s in (1, 2)}
    target = statistics.median(finals[("random+none", s)] for s in (1, 2))
    assert f"random+none's final median best ({target:.3f})" in report
    table = _table(report, "## Cost:")
    ref_epochs = statistics.median(
        sum(int(r["epochs"]) for r in curve("random+none", s).values()) for s in (1, 2)
    )
    for arm in ARMS:
        hits = []
        for s in (1, 2):
            c = curve(arm, s)
            hit = next((i for i in sorted(c) if float(c[i]["best_so_far"]) >= target), None)
            hits.append((hit, int(c[hit]["cumulative_epochs"]) if hit else None))
        reached = [h for h in hits if h[0] is not None]
        assert table[arm][0] == f"{len(reached)}/2"
        trials_needed = statistics.median(h[0] for h in reached)
        epochs_needed = statistics.median(h[1] for h in reached)
        assert table[arm][1] == f"{trials_needed:g} ({100 * trials_needed / N_TRIALS:.0f}%)"
        assert table[arm][2] == f"{epochs_needed:g} ({100 * epochs_needed / ref_epochs:.0f}%)"
        epochs_total = statistics.median(
            sum(int(r["epochs"]) for r in curve(arm, s).values()) for s in (1, 2)
        )
        assert table[arm][3] == f"{epochs_total:g}"
        trial_time = statistics.median(
            sum(_num(r["duration_s"]) or 0 for r in by_study[(arm, s)]) for s in (1, 2)
        )
        assert table[arm][4] == f"{trial_time:.1f}"

    # Test accuracy, paired gains, and the rank test.
    test = {(r["arm"], int(r["seed"])): float(r["test_acc"]) for r in trials if r["test_acc"]}
    table = _table(report, "## Held-out test accuracy")
    summary = json.loads((out / "summary.json").read_text())
    summary_arms = {entry["name"]: entry for entry in summary["arms"]}
    assert list(summary_arms) == list(ARMS)
    for arm in ARMS:
        assert table[arm][0] == _spread([test[(arm, s)] for s in (1, 2)])
        if arm == "random+none":
            continue
        gains = [test[(arm, s)] - test[("random+none", s)] for s in (1, 2)]
        gain = statistics.median(gains)
        low, high = median_interval(gains)
        assert table[arm][1] == f"{gain:+.3f} [{low:+.3f}, {high:+.3f}]"
        paired = wilcoxon(gains) if any(gains) else None
        assert table[arm][2] == (f"{paired.pvalue:.3g}" if paired else "—")
        result = mannwhitneyu(
            [finals[(arm, s)] for s in (1, 2)],
            [finals[("random+none", s)] for s in (1, 2)],
            alternative="two-sided",
        )
        assert table[arm][3] == f"U = {result.statistic:g}, p = {result.pvalue:.3g}"
        # summary.json: the same numbers, for scripts.
        entry = summary_arms[arm]
        assert entry["test_acc_median"] == statistics.median(test[(arm, s)] for s in (1, 2))
        assert entry["paired_test_gain_median"] == gain
        assert entry["wilcoxon_p"] == (paired.pvalue if paired else None)
        assert entry["seeds"] == 2
        epochs_median = statistics.median(
            sum(int(r["epochs"]) for r in curve(arm, s).values()) for s in (1, 2)
        )
        assert entry["epochs_median"] == epochs_median

    # The noise yardstick.
    noise = [float(r["value"]) for r in rows if r["kind"] == "noise"]
    assert len(noise) == 6
    assert f"from {min(noise):.3f} to {max(noise):.3f}" in report
    assert f"(median {statistics.median(noise):.3f}" in report

    # What pruning saved and what it cost.
    for arm in ("random+median", "tpe+median"):
        pruned = [r for r in trials if r["arm"] == arm and r["state"] == "PRUNED"]
        saved = sum(EPOCHS - int(r["epochs"]) for r in pruned)
        audited = [r for r in pruned if r["full_length_value"] != ""]
        beaten = sum(
            float(r["full_length_value"]) > finals[(arm, int(r["seed"]))] for r in audited
        )
        section = report.split(f"## What pruning did in {arm}", 1)[1]
        assert (
            f"It stopped {len(pruned)} trials early across 2 seeds and saved {saved} epochs"
            in section
        )
        assert f"{beaten} of {len(audited)} sampled pruned trials" in section
        assert len(audited) == min(3, len(pruned))
    # The params of every trial are there to recompute anything else.
    assert all(json.loads(r["params"]).keys() == {"lr"} for r in trials)


def test_an_interrupted_comparison_resumes_without_duplicating_trials(compare_file, tmp_path):
    compare_file.write_text(
        compare_file.read_text().replace("hidden_size_list = [32]", "hidden_size_list = [256]")
    )
    command_args = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process = subprocess.Popen(
        [
            *HPO,
            "compare",
            str(compare_file),
            "--storage",
            f"sqlite:///{tmp_path / 'cmp.db'}",
            "--seeds",
            "2",
            "--pruners",
            "none",
            "--samplers",
            "random,tpe",
            "--no-mlflow",
            "--out",
            str(tmp_path / "report"),
            "--noise-trainings",
            "2",
        ],
        cwd=tmp_path,
        env=os.environ | {"OPENBLAS_NUM_THREADS": "1"},
        **command_args,
        start_new_session=True,
        # As a background job starts: with SIGINT ignored. Ctrl-C must stop it all the same.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = process.stdout.readline()
        if out.startswith("[1/4]"):
            break
    # The first study has ended: a running trial is the second study's (or a later one's).
    while time.monotonic() < deadline and not _running_trials(tmp_path / "cmp.db"):
        time.sleep(0.1)
    assert process.poll() is None, "the comparison ended before it could be interrupted"
    storage = f"sqlite:///{tmp_path / 'cmp.db'}"
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole group, as in a terminal
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert names  # something was done before the interruption
    resumed = subprocess.run(
        [
            *HPO,
            "compare",
            str(compare_file),
            "--storage",
            storage,
            "--seeds",
            "2",
            "--pruners",
            "none",
            "--samplers",
            "random,tpe",
            "--no-mlflow",
            "--out",
            str(tmp_path / "report"),
            "--noise-trainings",
            "2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = Counter(t.state.name for t in study.trials)
        assert states["COMPLETE"] + states["PRUNED"] == N_TRIALS, (summary.study_name, states)
        assert states["RUNNING"] == 0
        numbers = [t.number for t in study.trials]
        assert len(numbers) == len(set(numbers))
    rows = _rows(tmp_path / "report" / "results.csv")
    every_trial = sum(
        len(optuna.load_study(study_name=summary.study_name, storage=storage).trials)
        for summary in optuna.get_all_study_summaries(storage)
    )
    assert sum(r["kind"] == "trial" for r in rows) == every_trial  # the failed one included
    assert sum(r["kind"] == "noise" for r in rows) == 2


def test_report_is_logged_to_a_comparison_run(compare_file, tmp_path, tracking_uri):
    from mlflow import MlflowClient

    experiment = f"cmp-{os.urandom(4).hex()}"
    done = subprocess.run(
        [
            *HPO,
            "compare",
            str(compare_file),
            "--storage",
            f"sqlite:///{tmp_path / 'c.db'}",
            "--seeds",
            "1",
            "--samplers",
            "random",
            "--pruners",
            "none",
            "--n-trials",
            "3",
            "--tracking-uri",
            tracking_uri,
            "--experiment",
            experiment,
            "--out",
            str(tmp_path / "report"),
            "--noise-trainings",
            "2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], "tags.`hpo.role` = 'comparison'")
    assert len(runs) == 1
    files = {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/report.md", "report/results.csv", "report/final_values.png"} <= files
    # Each study of the comparison is mirrored in the same experiment.
    parents = client.search_runs([found.experiment_id], "tags.`hpo.role` = 'study'")
    assert len(parents) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samplers", "random,bayes"], "--samplers: must be among"),
        (["--pruners", "median,sometimes"], "--pruners: must be among"),
        (["--seeds", "0"], "--seeds: must be from 1 to 100, but got 0"),
        (["--parallel", "0"], "--parallel: must be from 1 to 256, but got 0"),
        (["--workers", "2"], "--workers: is hpo run's flag"),
        (["--noise-trainings", "-1"], "--noise-trainings: must be from 0 to 100"),
    ],
)
def test_compare_mistakes_exit_2_with_one_line(compare_file, tmp_path, args, message):
    done = _compare(compare_file, tmp_path, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert re.search("Traceback", done.stderr) is None


def test_the_narrowing_arm_runs_the_books_stages_within_the_same_budget(compare_file, tmp_path):
    done = _compare(compare_file, tmp_path, "--samplers", "random,narrowing", "--pruners",
                    "none", "--seeds", "1", "--n-trials", "9")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [r for r in _rows(tmp_path / "report" / "results.csv") if r["kind"] == "trial"]
    arm = [r for r in rows if r["arm"] == "narrowing+none"]
    stages = [r["study"].rsplit("--", 1)[1] for r in arm]
    assert stages == ["stage1"] * 3 + ["stage2"] * 3 + ["stage3"] * 3  # 9 trials, 3 stages
    assert [int(r["index"]) for r in arm] == list(range(1, 10))  # one sequence, one budget
    bests = [float(r["best_so_far"]) for r in arm]
    assert bests == sorted(bests)  # the best so far is never lost between stages
    from hpo.spec.study_file import load_study_file

    stage_dir = tmp_path / "report" / "stages"
    for j in (2, 3):
        spec = load_study_file(stage_dir / f"compare-tiny--narrowing-none--seed1--stage{j}.toml")
        lr = spec.space.params[0]
        assert 1e-4 <= lr.low < lr.high <= 1e-1  # narrowed, never outside the file's range
        assert spec.narrowing["parent"].endswith(f"stage{j - 1}")
