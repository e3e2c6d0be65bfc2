"""The comparison's paired statistics, on rows made up for the purpose (no studies run)."""

from __future__ import annotations

import statistics

import pytest

from hpo.analysis.comparison.stats import (
    median_interval,
    render,
    summarize,
    summary_json,
    wilcoxon_signed_rank,
)
from hpo.analysis.comparison.studies import Row

SEEDS = range(1, 11)


def test_ten_seeds_all_gaining_give_the_exact_signed_rank_p():
    """Ten distinct positive differences: W = 0, and the exact two-sided p is 2 / 2**10."""
    w, p = wilcoxon_signed_rank([0.01 * k for k in SEEDS])
    assert w == 0
    assert p == pytest.approx(2 / 1024)


def test_no_difference_or_one_seed_has_no_test():
    assert wilcoxon_signed_rank([0.0, 0.0, 0.0]) is None
    assert wilcoxon_signed_rank([0.05]) is None
    assert median_interval([0.05]) is None


def test_the_bootstrap_interval_holds_the_median_and_recomputes_alike():
    values = [0.01, -0.02, 0.03, 0.05, 0.02, 0.04, -0.01, 0.06, 0.02, 0.03]
    low, high = median_interval(values)
    assert min(values) <= low <= statistics.median(values) <= high <= max(values)
    assert median_interval(values) == (low, high)  # seeded: the report recomputes to it
    assert median_interval(values, confidence=0.5) != (low, high)


def _rows(arm: str, seed: int, test_acc: float, *, n_trials: int = 3) -> list[Row]:
    rows = []
    for index in range(1, n_trials + 1):
        rows.append(Row(
            kind="trial", arm=arm, sampler=arm, pruner="none", seed=seed, study=f"{arm}-{seed}",
            index=index, number=index - 1, state="COMPLETE", value=0.5 + 0.01 * index,
            epochs=5, cumulative_epochs=5 * index, duration_s=1.0,
            best_so_far=0.5 + 0.01 * index,
            test_acc=test_acc if index == n_trials else None,
        ))  # fmt: skip
    return rows


def test_a_consistent_gain_over_ten_seeds_is_significant_and_reported():
    rows = []
    for seed in SEEDS:
        base = 0.80 + 0.01 * (seed % 4)
        rows += _rows("book", seed, base)
        rows += _rows("robust", seed, base + 0.02 + 0.001 * seed)  # gains 0.021 .. 0.030
    summary = summarize(rows, n_trials=3, epochs=5, maximize=True, reference="book")
    robust = summary.arms["robust"]
    assert robust.wilcoxon is not None
    assert robust.wilcoxon[1] == pytest.approx(2 / 1024)
    assert robust.gain_interval is not None
    assert 0.021 <= robust.gain_interval[0] <= robust.gain_interval[1] <= 0.030

    data = summary_json(summary)
    assert [arm["name"] for arm in data["arms"]] == ["book", "robust"]
    entry = data["arms"][1]
    gains = [0.02 + 0.001 * seed for seed in SEEDS]
    assert entry["paired_test_gain_median"] == pytest.approx(statistics.median(gains))
    assert entry["wilcoxon_p"] == pytest.approx(2 / 1024)
    assert entry["seeds"] == 10
    assert entry["epochs_median"] == 15
    assert data["arms"][0]["wilcoxon_p"] is None  # the reference against itself

    report = render(summary, study="s", metric="val_acc", data="d", figures=[], command="c")
    line = next(x for x in report.splitlines() if x.startswith("| robust |") and "U =" in x)
    assert "| 0.00195 |" in line


def test_three_arms_are_paired_two_by_two_and_a_refit_is_taken_apart():
    """Every later arm against every earlier one; a refit arm's configurations before the
    refit against every arm, its own refit included."""
    rows = []
    for seed in SEEDS:
        base = 0.70 + 0.01 * (seed % 3)
        rows += _rows("book", seed, base)
        rows += _rows("tpe", seed, base + 0.01 + 0.001 * seed)
        robust = _rows("robust", seed, base + 0.04 + 0.001 * seed)
        robust[-1].test_acc_without_refit = base - 0.002 * seed  # below the book every time
        rows += robust
    summary = summarize(rows, n_trials=3, epochs=5, maximize=True, reference="book",
                        refit=frozenset({"robust"}))  # fmt: skip
    report = render(summary, study="s", metric="val_acc", data="d", figures=[], command="c")
    lines = report.splitlines()
    pair = next(x for x in lines if x.startswith("| robust | tpe |"))
    assert "+0.030" in pair  # 0.04 - 0.01 on every seed
    assert "| 10 / 0 | 0.00195 |" in pair
    assert any(x.startswith("| tpe | book |") for x in lines)
    assert "Refit (robust)" in report
    before = lines.index(next(x for x in lines if x.startswith("Without the refit, robust's")))
    table = lines[before + 4 : before + 7]
    assert table[0].startswith("| book |")
    assert "| 0 / 10 | 0.00195 |" in table[0]  # lower than the book on every seed
    assert table[2].startswith("| robust (refit) |")
    assert "| 0 / 10 |" in table[2]


def test_a_budget_of_epochs_reports_the_trials_each_study_finished():
    rows = []
    for seed, finished in zip(SEEDS, [4, 6, 8, 6, 6, 4, 8, 6, 6, 6], strict=True):
        rows += _rows("epochs", seed, 0.8, n_trials=finished)
    summary = summarize(rows, n_trials=3, epochs=5, maximize=True, reference=None,
                        budgets={"epochs": (10**6, 5)})  # fmt: skip
    arm = summary.arms["epochs"]
    assert arm.trials == 6  # the median finished, not the unbounded budget
    assert set(arm.finals.values()) == {0.5 + 0.01 * n for n in (4, 6, 8)}  # each its last
    assert summary_json(summary)["arms"][0]["n_trials"] == 6
