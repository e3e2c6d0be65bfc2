"""From results.csv rows to the comparison's numbers and its report.md.

Everything here is a function of the rows alone, so every number in the report can be
recomputed from results.csv. Medians and quartiles are over seeds, with NumPy's default
(linear) interpolation.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from hpo.analysis.comparison.studies import SELECTION, Row, budget_index
from hpo.spec.limits import MAX_TRIALS

CHECKPOINTS = (0.10, 0.25, 0.50, 1.00)


@dataclass(frozen=True)
class Spread:
    median: float
    q1: float
    q3: float

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        if not values:
            return None
        q1, q3 = np.percentile(values, [25, 75])
        return cls(float(statistics.median(values)), float(q1), float(q3))

    def text(self, digits: int = 3) -> str:
        return f"{self.median:.{digits}f} [{self.q1:.{digits}f}–{self.q3:.{digits}f}]"


@dataclass
class ArmSummary:
    arm: str
    seeds: list[int]
    n_trials: int  # the arm's budget: trials per study (MAX_TRIALS: a budget of epochs)
    epochs: int  # at most, per trial (all its trainings)
    at_checkpoint: dict[float, Spread | None] = field(default_factory=dict)
    finals: dict[int, float] = field(default_factory=dict)  # seed -> final best
    trials_to_target: dict[int, int | None] = field(default_factory=dict)
    epochs_to_target: dict[int, int | None] = field(default_factory=dict)
    epochs_total: dict[int, int] = field(default_factory=dict)
    trials_done: dict[int, int] = field(default_factory=dict)  # finished search trials
    trial_time: dict[int, float] = field(default_factory=dict)
    test_acc: dict[int, float] = field(default_factory=dict)
    test_acc_without_refit: dict[int, float] = field(default_factory=dict)
    pruned: dict[int, int] = field(default_factory=dict)
    epochs_saved: dict[int, int] = field(default_factory=dict)
    audited: int = 0
    audit_would_beat: int = 0
    mann_whitney: tuple[float, float] | None = None  # (U, p) against the reference
    paired_test_gain: dict[int, float] = field(default_factory=dict)  # seed -> gain
    wilcoxon: tuple[float, float] | None = None  # (W, p): the paired test gains
    gain_interval: tuple[float, float] | None = None  # 95% bootstrap CI of their median

    @property
    def trials(self) -> float:
        """Trials per study: the budget's, or under a budget of epochs the median finished."""
        if self.n_trials < MAX_TRIALS or not self.trials_done:
            return self.n_trials
        return float(statistics.median(self.trials_done.values()))


@dataclass
class Summary:
    n_trials: int
    epochs: int
    maximize: bool
    reference: str | None
    target: float | None  # the reference's final median best
    arms: dict[str, ArmSummary]
    noise: Spread | None
    noise_range: tuple[float, float] | None
    noise_count: int
    files: bool = False  # each arm a study file with its own budget: compute compared too
    refit: frozenset[str] = frozenset()  # arms whose final model trains on the whole pool


def _better(a: float, b: float, maximize: bool) -> bool:
    return a >= b if maximize else a <= b


def summarize(
    rows: list[Row],
    *,
    n_trials: int,
    epochs: int,
    maximize: bool,
    reference: str | None,
    budgets: Mapping[str, tuple[int, int]] | None = None,
    refit: frozenset[str] = frozenset(),
) -> Summary:
    """Each arm's numbers over its seeds, then how each compares with the reference arm.
    `budgets` gives file arms their own (trials, epochs), for `n_trials` and `epochs`."""
    by_arm: dict[str, dict[int, list[Row]]] = {}
    for row in rows:
        if row.kind == "trial":
            by_arm.setdefault(row.arm, {}).setdefault(row.seed, []).append(row)
    arms = {}
    for arm, seeds in by_arm.items():
        trials, most = (budgets or {}).get(arm, (n_trials, epochs))
        arms[arm] = _arm_summary(arm, seeds, n_trials=trials, epochs=most, maximize=maximize)
    target = None
    if reference in arms and arms[reference].finals:
        target = float(statistics.median(arms[reference].finals.values()))
    for arm, summary in arms.items():
        _reach_target(summary, by_arm[arm], target, maximize)
        if reference in arms and arm != reference:
            _against_reference(summary, arms[reference])
    noise_values = [r.value for r in rows if r.kind == "noise" and r.value is not None]
    return Summary(
        n_trials=n_trials,
        epochs=epochs,
        maximize=maximize,
        reference=reference,
        target=target,
        arms=arms,
        noise=Spread.of(noise_values),
        noise_range=(min(noise_values), max(noise_values)) if noise_values else None,
        noise_count=len(noise_values),
        files=budgets is not None,
        refit=refit,
    )


def _arm_summary(
    arm: str, seeds: dict[int, list[Row]], *, n_trials: int, epochs: int, maximize: bool
) -> ArmSummary:
    """What one arm's seeds did on their own: finals, costs, pruning, audit, checkpoints."""
    summary = ArmSummary(arm, sorted(seeds), n_trials=n_trials, epochs=epochs)
    for seed, seed_rows in seeds.items():
        _add_seed(summary, seed, seed_rows, n_trials=n_trials, epochs=epochs, maximize=maximize)
    for fraction in CHECKPOINTS:
        values = []
        for seed_rows in seeds.values():
            # A budget of epochs: the share of the trials the seed's study finished.
            done = max((r.index for r in seed_rows if r.index is not None), default=0)
            index = budget_index(fraction, min(n_trials, done))
            hit = next((r for r in seed_rows if r.index == index), None)
            if hit is not None and hit.best_so_far is not None:
                values.append(hit.best_so_far)
        summary.at_checkpoint[fraction] = Spread.of(values)
    return summary


def _add_seed(
    summary: ArmSummary,
    seed: int,
    seed_rows: list[Row],
    *,
    n_trials: int,
    epochs: int,
    maximize: bool,
) -> None:
    finished = sorted(
        (r for r in seed_rows if r.index is not None), key=lambda r: r.finished_index
    )
    # The study's last finished search trial (its budget's, in trials or epochs: the study
    # is complete, see `measure`).
    final = finished[-1] if finished else None
    if final is not None and final.best_so_far is not None:
        summary.finals[seed] = final.best_so_far
    # Compute spent: the search's finished trials and any re-evaluation (selection) trials.
    selection = [r for r in seed_rows if r.role == SELECTION and r.state != "FAIL"]
    summary.epochs_total[seed] = sum(r.epochs for r in [*finished, *selection])
    summary.trials_done[seed] = len(finished)
    summary.trial_time[seed] = sum(r.duration_s or 0.0 for r in seed_rows)
    pruned = [r for r in finished if r.state == "PRUNED"]
    summary.pruned[seed] = len(pruned)
    summary.epochs_saved[seed] = sum(epochs - r.epochs for r in pruned)
    for r in seed_rows:
        if r.test_acc is not None:
            summary.test_acc[seed] = r.test_acc
        if r.test_acc_without_refit is not None:
            summary.test_acc_without_refit[seed] = r.test_acc_without_refit
        if r.full_length_value is not None:
            summary.audited += 1
            best = summary.finals.get(seed)
            if (
                best is not None
                and _better(r.full_length_value, best, maximize)
                and (r.full_length_value != best)
            ):
                summary.audit_would_beat += 1


def _reach_target(
    summary: ArmSummary, seeds: dict[int, list[Row]], target: float | None, maximize: bool
) -> None:
    """The trial and the cumulative epochs at which each seed first reached `target`."""
    for seed, seed_rows in seeds.items():
        summary.trials_to_target[seed] = summary.epochs_to_target[seed] = None
        if target is None:
            continue
        for r in sorted(
            (r for r in seed_rows if r.index is not None), key=lambda r: r.finished_index
        ):
            if r.best_so_far is not None and _better(r.best_so_far, target, maximize):
                summary.trials_to_target[seed] = r.index
                summary.epochs_to_target[seed] = r.cumulative_epochs
                break


def _against_reference(summary: ArmSummary, ref: ArmSummary) -> None:
    """Mann-Whitney U on the final bests, and the test accuracy gained seed by seed."""
    mine = [summary.finals[s] for s in sorted(summary.finals)]
    theirs = [ref.finals[s] for s in sorted(ref.finals)]
    if mine and theirs:
        from scipy.stats import mannwhitneyu

        result = mannwhitneyu(mine, theirs, alternative="two-sided")
        summary.mann_whitney = (float(result.statistic), float(result.pvalue))
    summary.paired_test_gain = {
        s: summary.test_acc[s] - ref.test_acc[s] for s in summary.test_acc if s in ref.test_acc
    }
    gains = [summary.paired_test_gain[s] for s in sorted(summary.paired_test_gain)]
    summary.wilcoxon = wilcoxon_signed_rank(gains)
    summary.gain_interval = median_interval(gains)


def wilcoxon_signed_rank(differences: Sequence[float]) -> tuple[float, float] | None:
    """(W, two-sided p) of Wilcoxon's signed-rank test on paired differences (seed by seed),
    or None when there is nothing to test (fewer than two seeds, or no difference at all).

    SciPy's test: exact p for small samples without ties or zeros, the normal approximation
    otherwise; zero differences are dropped (Wilcoxon's own treatment)."""
    if len(differences) < 2 or not any(differences):
        return None
    from scipy.stats import wilcoxon

    result = wilcoxon(differences, alternative="two-sided", zero_method="wilcox")
    return float(result.statistic), float(result.pvalue)


BOOTSTRAP_RESAMPLES = 10_000


def median_interval(
    values: Sequence[float], *, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """A percentile bootstrap confidence interval of the median: the seeds resampled with
    replacement, from a fixed seed, so the report recomputes to the same interval."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=float)
    picks = rng.integers(0, len(data), size=(BOOTSTRAP_RESAMPLES, len(data)))
    medians = np.median(data[picks], axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def summary_json(summary: Summary) -> dict[str, object]:
    """summary.json: each arm's headline numbers, for scripts (the report's test table)."""
    arms = []
    ref_epochs = epochs_median(summary.arms.get(summary.reference or ""))
    for name, arm in summary.arms.items():
        test = Spread.of(list(arm.test_acc.values()))
        gain = Spread.of(list(arm.paired_test_gain.values()))
        epochs = epochs_median(arm)
        arms.append({
            "name": name,
            "seeds": len(arm.seeds),
            "n_trials": arm.trials,
            "test_acc_median": test.median if test else None,
            "paired_test_gain_median": gain.median if gain else None,
            "paired_test_gain_ci95": list(arm.gain_interval) if arm.gain_interval else None,
            "wilcoxon_p": arm.wilcoxon[1] if arm.wilcoxon else None,
            "epochs_median": epochs,
            "epochs_ratio": epochs / ref_epochs if epochs is not None and ref_epochs else None,
        })  # fmt: skip
    return {"reference": summary.reference, "n_trials": summary.n_trials, "arms": arms}


def epochs_median(arm: ArmSummary | None) -> float | None:
    """Epochs trained per study, median over the arm's seeds: its compute."""
    if arm is None or not arm.epochs_total:
        return None
    return float(statistics.median(arm.epochs_total.values()))


def _median_int(values: list[int | None]) -> float | None:
    reached = [v for v in values if v is not None]
    return float(statistics.median(reached)) if reached else None


def fraction_text(value: float | None, whole: float) -> str:
    return "—" if value is None else f"{value:g} ({100 * value / whole:.0f}%)"


def render(
    summary: Summary,
    *,
    study: str,
    metric: str,
    data: str,
    figures: list[str],
    command: str,
) -> str:
    """report.md: the table, the noise yardstick, what pruning saved and cost, plainly said."""
    s = summary
    ref_epochs = epochs_median(s.arms.get(s.reference or ""))
    if s.files:
        budget = (
            "each arm a study file with its own budget ("
            + ", ".join(
                (
                    f"{arm}: {a.n_trials} trials of at most {a.epochs} epochs"
                    if a.n_trials < MAX_TRIALS
                    else f"{arm}: a budget of epochs, at most {a.epochs} per trial"
                )
                for arm, a in s.arms.items()
            )
            + "), every arm seeded alike, so that each seed splits the data alike"
        )
    else:
        budget = f"{s.n_trials} trials of at most {s.epochs} epochs each"
    lines = [
        f"# Comparison: {study}",
        "",
        f"{len(s.arms)} arms × {max(len(a.seeds) for a in s.arms.values())} seeds, "
        f"{budget}; {data}. Generated "
        f"{date.today().isoformat()} by `{command}`. Every number below is recomputed from "
        "`results.csv`: medians over seeds, [first–third quartile].",
        *_progress_table(s, metric),
        *(_compute_table(s, ref_epochs) if s.files else []),
        *_cost_table(s, ref_epochs),
        *_test_table(s),
        *_noise_section(s, metric),
        *_pruning_sections(s),
    ]
    if s.reference:
        lines += ["", "## Verdict", ""]
        lines += [
            _verdict(s, arm, a, ref_epochs) for arm, a in s.arms.items() if arm != s.reference
        ]
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    lines += ["", "Parameters of every trial: `results.csv` (`params` column, JSON)."]
    return "\n".join(lines) + "\n"


def _progress_table(s: Summary, metric: str) -> list[str]:
    lines = [
        "",
        f"## Best {metric} so far, by share of the budget",
        "",
        "| arm | 10% | 25% | 50% | 100% |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for arm, a in s.arms.items():
        spreads = [a.at_checkpoint.get(f) for f in CHECKPOINTS]
        cells = [spread.text() if spread else "—" for spread in spreads]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _cost_table(s: Summary, ref_epochs: float | None) -> list[str]:
    target_text = f"{s.target:.3f}" if s.target is not None else "—"
    lines = [
        "",
        f"## Cost: reaching {s.reference or 'the reference'}'s final median best ({target_text})",
        "",
        "| arm | seeds that reached it | trials to reach it | epochs to reach it | "
        "epochs trained | trial time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, a in s.arms.items():
        reached = [v for v in a.trials_to_target.values() if v is not None]
        trials = _median_int(list(a.trials_to_target.values()))
        epochs_needed = _median_int(list(a.epochs_to_target.values()))
        total_epochs = statistics.median(a.epochs_total.values()) if a.epochs_total else 0
        lines.append(
            f"| {arm} | {len(reached)}/{len(a.trials_to_target)} | "
            f"{fraction_text(trials, a.trials)} | "
            f"{fraction_text(epochs_needed, ref_epochs) if ref_epochs else '—'} | "
            f"{total_epochs:g} | {statistics.median(a.trial_time.values()):.1f} |"
        )
    return lines


def _test_table(s: Summary) -> list[str]:
    lines = [
        "",
        "## Held-out test accuracy of each seed's best configuration, retrained once",
        "",
        f"| arm | test accuracy | paired gain over {s.reference} [95% CI] | paired gain: "
        f"Wilcoxon signed-rank p | final best: Mann-Whitney U, p against {s.reference} |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for arm, a in s.arms.items():
        test = Spread.of(list(a.test_acc.values()))
        gain = Spread.of(list(a.paired_test_gain.values()))
        test_text = test.text() if test else "—"
        gain_text = f"{gain.median:+.3f}" if gain else "—"
        if a.gain_interval is not None:
            gain_text += f" [{a.gain_interval[0]:+.3f}, {a.gain_interval[1]:+.3f}]"
        wilcoxon = f"{a.wilcoxon[1]:.3g}" if a.wilcoxon else "—"
        mwu = f"U = {a.mann_whitney[0]:g}, p = {a.mann_whitney[1]:.3g}" if a.mann_whitney else "—"
        lines.append(f"| {arm} | {test_text} | {gain_text} | {wilcoxon} | {mwu} |")
    if s.refit:
        lines += [
            "",
            f"Refit ({', '.join(sorted(s.refit))}): the retrained configuration is trained "
            "once more on the whole search pool, training and validation together "
            "(`[evaluation] refit`), after its first training has reproduced the record "
            "exactly, and that network is the one tested"
            + (
                "; the other arms test the network trained on the training split, as the "
                "book does."
                if set(s.arms) - s.refit
                else "."
            ),
            *_without_refit(s),
        ]
    return lines + _pairs_table(s)


def _without_refit(s: Summary) -> list[str]:
    """What a refit arm's configurations tested before the refit, against every other arm:
    how much of its gain is the search and selection, and how much the refit."""
    lines = []
    for arm in sorted(s.refit):
        plain = s.arms[arm].test_acc_without_refit
        spread = Spread.of(list(plain.values()))
        if spread is None:
            continue
        lines += [
            "",
            f"Without the refit, {arm}'s configurations (their first training, reproduced) "
            f"tested {spread.text()}:",
            "",
            "| against | paired gain [95% CI] | seeds better / worse | Wilcoxon signed-rank p |",
            "| --- | ---: | ---: | ---: |",
        ]
        for other, a in s.arms.items():  # the arm itself: what the refit added, negated
            gains = [plain[k] - a.test_acc[k] for k in sorted(plain) if k in a.test_acc]
            if gains:
                lines.append(_gain_cells(other if other != arm else f"{arm} (refit)", gains))
    return lines


def _gain_cells(label: str, gains: list[float]) -> str:
    interval = median_interval(gains)
    ci = f" [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else ""
    test = wilcoxon_signed_rank(gains)
    better, worse = sum(g > 0 for g in gains), sum(g < 0 for g in gains)
    return (
        f"| {label} | {float(np.median(gains)):+.3f}{ci} | {better} / {worse} | "
        f"{f'{test[1]:.3g}' if test else '—'} |"
    )


def _pairs_table(s: Summary) -> list[str]:
    """With three arms or more: every later arm against every earlier one, paired by seed."""
    names = list(s.arms)
    if len(names) < 3:
        return []
    lines = [
        "",
        "Paired test gains between every two arms (the later against the earlier):",
        "",
        "| arm | against | paired gain [95% CI] | seeds better / worse | Wilcoxon signed-rank p |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for j, later in enumerate(names):
        for earlier in names[:j]:
            a, b = s.arms[later], s.arms[earlier]
            seeds = sorted(set(a.test_acc) & set(b.test_acc))
            gains = [a.test_acc[k] - b.test_acc[k] for k in seeds]
            if gains:
                lines.append(f"| {later} " + _gain_cells(earlier, gains))
    return lines


def _noise_section(s: Summary, metric: str) -> list[str]:
    if s.noise is None or s.noise_range is None:
        return ["", "## How much is noise", "", "No noise check was run."]
    return [
        "",
        "## How much is noise",
        "",
        f"The best configuration of the whole comparison, trained {s.noise_count} times with "
        f"different seeds on the same split, reached {metric} from {s.noise_range[0]:.3f} to "
        f"{s.noise_range[1]:.3f} (median {s.noise.median:.3f}, quartiles {s.noise.q1:.3f}–"
        f"{s.noise.q3:.3f}). Differences between arms smaller than that spread are what one "
        "training run's luck can make: read them as noise, not as a ranking.",
    ]


def _pruning_sections(s: Summary) -> list[str]:
    """One section per arm that pruned: the epochs it saved, and the winners it may have cost."""
    lines = []
    for arm, a in s.arms.items():
        if not a.pruned or not any(a.pruned.values()):
            continue
        saved = sum(a.epochs_saved.values())
        possible = a.epochs * sum(a.trials_done.values())
        lines += [
            "",
            f"## What pruning did in {arm}",
            "",
            f"It stopped {sum(a.pruned.values())} trials early across {len(a.seeds)} seeds "
            f"and saved {saved} epochs ({100 * saved / possible:.0f}% of the {possible} a full "
            f"run of every trial would take). Re-trained to full length, "
            f"{a.audit_would_beat} of {a.audited} sampled pruned trials would have beaten their "
            "seed's best: "
            + (
                "pruning cost no winner in the sample."
                if a.audit_would_beat == 0
                else "pruning did cost winners."
            ),
        ]
    return lines


def _finished_in_order(rows: Sequence[Row]) -> list[Row]:
    """The rows of finished trials, in the order they finished."""
    return sorted((r for r in rows if r.index is not None), key=lambda r: r.finished_index)


def _verdict(s: Summary, arm: str, a: ArmSummary, ref_epochs: float | None) -> str:
    """One arm against the reference, in a sentence: cost to its best, test gain, p-value."""
    trials = _median_int(list(a.trials_to_target.values()))
    epochs_needed = _median_int(list(a.epochs_to_target.values()))
    gain = Spread.of(list(a.paired_test_gain.values()))
    p = a.mann_whitney[1] if a.mann_whitney else None
    parts = []
    if trials is None:
        parts.append(f"never reached {s.reference}'s median best")
    else:
        assert epochs_needed is not None  # set with trials_to_target, from one row
        share = 100 * trials / a.trials
        epochs_share = 100 * epochs_needed / ref_epochs if ref_epochs else float("nan")
        parts.append(
            f"reached {s.reference}'s median best after {trials:g} trials "
            f"({share:.0f}% of the budget) and {epochs_share:.0f}% of its epochs"
        )
    if gain is not None:
        parts.append(f"test accuracy {gain.median:+.3f} against {s.reference} (paired)")
    if p is not None:
        plain = "a difference unlikely to be chance" if p < 0.05 else "no evidence of a difference"
        parts.append(f"final best p = {p:.3g}: {plain}")
    if s.files:
        parts.append(_compute_verdict(s, a, ref_epochs))
    return f"- **{arm}**: " + "; ".join(parts) + "."


def _compute_table(s: Summary, ref_epochs: float | None) -> list[str]:
    """File arms: the compute each spent, against the reference's, so that a gain bought with
    more training is read as such."""
    lines = [
        "",
        "## Compute: epochs trained per study (median over seeds)",
        "",
        f"| arm | trials per study | epochs trained per study | ratio to {s.reference} |",
        "| --- | ---: | ---: | ---: |",
    ]
    for arm, a in s.arms.items():
        epochs = epochs_median(a)
        ratio = f"{epochs / ref_epochs:.2f}" if epochs is not None and ref_epochs else "—"
        epochs_text = f"{epochs:g}" if epochs is not None else "—"
        lines.append(f"| {arm} | {a.trials:g} | {epochs_text} | {ratio} |")
    return lines


def _compute_verdict(s: Summary, a: ArmSummary, ref_epochs: float | None) -> str:
    epochs = epochs_median(a)
    if epochs is None or not ref_epochs:
        return "compute against the reference unknown (no epochs recorded)"
    ratio = epochs / ref_epochs
    if epochs > ref_epochs:
        return (
            f"**not at equal compute**: it trained {epochs:g} epochs per study, {ratio:.2f}× "
            f"{s.reference}'s {ref_epochs:g}, so part of any gain may be the extra training"
        )
    return f"at equal or lower compute: {epochs:g} epochs per study, {ratio:.2f}× {s.reference}'s"


def params_of(row: Row) -> dict:
    return json.loads(row.params) if row.params else {}
