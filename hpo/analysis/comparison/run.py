"""`compare`: a whole comparison of search strategies, as `hpo compare` runs it.

The order is kept here, once: everything that could fail after hours of training is checked
first (the data and its test split, every study's name), then the arm-seed studies run (or
resume), then each study is measured (its best retrained and tested, the noise check, the
pruning audit), and the report is computed from `results.csv` alone. Nothing here prints:
the steps are told to a `CompareListener`, and the outcome is a `Comparison`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.spec.limits import MAX_SEEDS, MAX_WORKERS, check_range

if TYPE_CHECKING:  # imported where used: `hpo compare` subclasses CompareListener at start-up
    import optuna

    from hpo.analysis.comparison.stats import Summary
    from hpo.analysis.comparison.studies import ComparePlan, JobOutcome, Row
    from hpo.spec.study_file import StudySpec
    from hpo.storage.database import StorageSettings
    from hpo.tracking.runs import TrackingSettings

FIGURES = (
    "best_so_far_vs_trials.png", "best_so_far_vs_epochs.png", "final_values.png",
    "test_accuracy.png",
)  # fmt: skip


class CompareListener:
    """What `compare` tells as it goes; every method does nothing unless overridden.

    `hpo compare` prints a line per study and draws a bar per measuring step with one.
    """

    def planned(self, comparison: ComparePlan, storage: StorageSettings) -> None:
        """Everything was checked; the studies run next (unless reporting only)."""

    def study_done(self, outcome: JobOutcome, finished: int, total: int) -> None:
        """One arm-seed study ended (`outcome.returncode` 0: it has its budget)."""

    @contextlib.contextmanager
    def step(self, line: str, what: str, total: int | None, unit: str) -> Iterator[Callable]:
        """A measuring step (`line` says what it does); yields what to call per `unit` done."""
        yield lambda: None


@dataclass(frozen=True, repr=False)
class Comparison:
    """What `compare` did. `summary` is None when it stopped before the report: `failed`
    studies (their logs are in `directory/logs`), or `interrupted` by a signal (its name)."""

    plan: ComparePlan
    directory: Path
    failed: tuple[JobOutcome, ...] = ()
    interrupted: str | None = None
    summary: Summary | None = None
    report_text: str = ""  # report.md's text
    figures: tuple[str, ...] = ()  # the figures' file names in `directory`

    @property
    def report_path(self) -> Path:
        return self.directory / "report.md"

    def __repr__(self) -> str:
        what = (
            f"interrupted by {self.interrupted}"
            if self.interrupted
            else f"{len(self.failed)} studies failed"
            if self.failed
            else f"report in {self.report_path}"
        )
        return f"Comparison({self.plan.prefix!r}, {len(self.plan.jobs())} studies, {what})"


def compare(
    study: StudySpec | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    samplers: Sequence[str] | None = None,
    pruners: Sequence[str] | None = None,
    seeds: int = 5,
    n_trials: int | None = None,
    storage: StorageSettings | str | None = None,
    out: str | os.PathLike[str] | None = None,
    parallel: int = 1,
    noise_trainings: int = 20,
    audit: int = 10,
    tracking: TrackingSettings | bool | str = True,
    experiment: str | None = None,
    report_only: bool = False,
    command: str | None = None,
    listener: CompareListener | None = None,
) -> Comparison:
    """Run the study once per (sampler, pruner, seed) at the same budget, then write report.md,
    the figures and results.csv to `out` (default `reports/compare-<name>/`), as `hpo compare`
    does; run again, it resumes. Samplers default to random and tpe, pruners to none and
    median. Given a list of two or more study files, each file is an arm instead, run as it is
    written (no samplers, pruners or n_trials then), the first the reference. Each study is an
    `hpo run` process in `storage`, `parallel` at a time; `tracking` mirrors them to MLflow
    (True, a tracking URI, or False), `experiment` defaulting to the comparison's name.
    `report_only` runs nothing. The report itself is logged to MLflow by `hpo compare`, not
    here. `command` is what the report says made it.
    """
    from hpo.analysis.comparison.files import plan_files
    from hpo.analysis.comparison.studies import plan
    from hpo.spec.load import load_study
    from hpo.spec.names import study_folder
    from hpo.storage.database import StorageSettings, resolve_storage
    from hpo.tracking.runs import TrackingSettings, resolve_tracking

    check_options(parallel=parallel, seeds=seeds, noise_trainings=noise_trainings, audit=audit)
    if isinstance(study, (list, tuple)) and len(study) == 1:
        study = study[0]
    if isinstance(study, (list, tuple)):
        comparison = plan_files(study, seeds=seeds, samplers=samplers, pruners=pruners,
                                n_trials=n_trials)  # fmt: skip
        spec = comparison.spec
    else:
        path: Path | None
        if isinstance(study, (str, os.PathLike)):
            spec, path = load_study(study), Path(study)
        else:
            assert not isinstance(study, Sequence)
            spec, path = study, study.path
        spec.require_training("hpo compare")
        if path is None:
            from hpo.errors import ConfigError

            raise ConfigError(
                "each study of a comparison reads the study file, but this spec has none"
            )
        samplers = list(samplers) if samplers is not None else ["random", "tpe"]
        pruners = list(pruners) if pruners is not None else ["none", "median"]
        comparison = plan(spec, path, samplers=samplers, pruners=pruners, seeds=seeds,
                          n_trials=n_trials)  # fmt: skip
    settings = storage if isinstance(storage, StorageSettings) else resolve_storage(storage)
    if not isinstance(tracking, TrackingSettings):
        tracking = resolve_tracking(uri_flag=tracking if isinstance(tracking, str) else None,
                                    experiment=experiment, disabled=tracking is False)  # fmt: skip
    if not report_only:
        check_before_training(spec, comparison)
    directory = Path(out) if out is not None else study_folder(Path("reports"), comparison.prefix)
    listener = listener or CompareListener()
    listener.planned(comparison, settings)
    if not report_only:
        stopped = _run_studies(comparison, settings, tracking, parallel, directory, listener)
        if stopped is not None:
            return stopped
    rows = measure(comparison, settings, noise_trainings=noise_trainings, audit=audit,
                   listener=listener)  # fmt: skip
    if command is None:
        command = _api_call(comparison, samplers, pruners, seeds)
    return write_comparison(spec, comparison, rows, directory, command=command)


def _api_call(
    comparison: ComparePlan,
    samplers: Sequence[str] | None,
    pruners: Sequence[str] | None,
    seeds: int,
) -> str:
    """The call that made the comparison, as its report says."""
    if comparison.files:
        files = [str(arm.file) for arm in comparison.arms]
        return f"hpo.compare({files!r}, seeds={seeds})"
    return (f"hpo.compare({str(comparison.study_file)!r}, samplers={list(samplers or [])}, "
            f"pruners={list(pruners or [])}, seeds={seeds}, "
            f"n_trials={comparison.n_trials})")  # fmt: skip


def check_options(*, parallel: int, seeds: int, noise_trainings: int, audit: int) -> None:
    """The bounds of `hpo compare`'s numbers, named by their flags."""
    check_range(parallel, "--parallel", 1, MAX_WORKERS)
    check_range(seeds, "--seeds", 1, MAX_SEEDS)
    check_range(noise_trainings, "--noise-trainings", 0, 100)
    check_range(audit, "--audit", 0, 1_000)


def check_before_training(spec: StudySpec, comparison: ComparePlan) -> None:
    """Everything the comparison needs that could fail after hours of training: the data
    loads and keeps a test split (each arm's best is retrained and tested), and every study
    it creates can take its name. File arms share one [data] (`files.plan_files` checked),
    so one split stands for all; each file is named if it has no test split."""
    from hpo.analysis.best import require_test_split
    from hpo.spec.data import load_splits
    from hpo.spec.names import check_new_study_name

    for job in comparison.jobs():
        check_new_study_name(job.study_name)
    splits = load_splits(spec.data, seed=spec.study.seed)
    for arm_spec in [comparison.spec_of(arm) for arm in comparison.arms] or [spec]:
        require_test_split(arm_spec, splits, command="hpo compare")


def _run_studies(
    comparison: ComparePlan,
    settings: StorageSettings,
    tracking: TrackingSettings,
    parallel: int,
    directory: Path,
    listener: CompareListener,
) -> Comparison | None:
    """Run (or resume) every study; the comparison as it stopped, if it did."""
    from hpo.analysis.comparison.studies import run_jobs
    from hpo.engine.signals import signal_name

    try:
        outcomes = run_jobs(comparison, settings, tracking, workers=parallel,
                            log_dir=directory / "logs", on_done=listener.study_done)  # fmt: skip
    except KeyboardInterrupt as stop:
        return Comparison(comparison, directory, interrupted=signal_name(stop))
    failed = tuple(o for o in outcomes if o.returncode != 0)
    return Comparison(comparison, directory, failed=failed) if failed else None


def measure(
    comparison: ComparePlan,
    settings: StorageSettings,
    *,
    noise_trainings: int,
    audit: int,
    listener: CompareListener,
) -> list[Row]:
    """One row per study, with its best configuration's test accuracy, the noise check and
    the pruning audit: everything the report is computed from."""
    from hpo.analysis.comparison.studies import (
        add_noise_check,
        add_pruning_audit,
        add_test_accuracy,
        study_rows,
    )
    from hpo.errors import ConfigError
    from hpo.spec.outcomes import COUNTED
    from hpo.storage.studies import load_existing_study, stored_spec

    jobs = comparison.jobs()
    studies, specs, rows = {}, {}, []
    for job in jobs:
        mine = [load_existing_study(settings, name) for name in job.studies]
        finished = sum(
            t.state in COUNTED for study in mine for t in study.get_trials(deepcopy=False)
        )
        budget = comparison.budget(job.arm)
        if not _complete(comparison.spec_of(job.arm), mine, finished, budget):
            raise ConfigError(
                f"{job.study_name!r} has {finished} of {budget} trials; run "
                "the comparison (without --report-only) to finish it"
            )
        for study in mine:
            studies[study.study_name], specs[study.study_name] = study, stored_spec(study)
        rows += study_rows(job, mine)
    line = "retraining each study's best configuration once for its test accuracy ..."
    with listener.step(line, "test accuracy", len(jobs), "study") as done:
        add_test_accuracy(rows, studies, specs, progress=done)
    line = f"training the best configuration with {noise_trainings} other seeds ..."
    with listener.step(line, "noise check", noise_trainings, "training") as done:
        add_noise_check(rows, studies, specs, noise_trainings, progress=done)
    if any(a.pruner != "none" for a in comparison.arms) and audit > 0:
        line = f"re-training up to {audit} pruned trials per arm to full length ..."
        with listener.step(line, "pruning audit", None, "trial") as done:
            add_pruning_audit(rows, studies, specs, audit, progress=done)
    return rows


def _complete(spec: StudySpec, studies: list[optuna.Study], finished: int, budget: int) -> bool:
    """Whether an arm-seed study has spent its budget (of trials, or epochs and a selection)."""
    from hpo.engine.budget import Budget, Next, decide

    plan = dataclasses.replace(Budget.of(spec), n_trials=budget)  # --n-trials, if given
    if plan.in_trials_only or len(studies) != 1:
        return finished >= budget
    return decide(plan, studies[0].get_trials(deepcopy=False)).next is Next.DONE


def write_comparison(
    spec: StudySpec, comparison: ComparePlan, rows: list[Row], out: Path, *, command: str
) -> Comparison:
    """results.csv, the figures and report.md in `out`, all computed from results.csv."""
    from hpo.analysis.comparison.figures import (
        best_so_far_vs_epochs,
        best_so_far_vs_trials,
        final_values,
        test_accuracy,
    )
    from hpo.analysis.comparison.stats import render, summarize, summary_json
    from hpo.analysis.comparison.studies import read_rows, write_rows

    out.mkdir(parents=True, exist_ok=True)
    write_rows(rows, out / "results.csv")
    rows = read_rows(out / "results.csv")  # the report is computed from the file itself
    metric = spec.study.metric  # file arms agree on it, and on the data
    maximize = spec.study.direction == "maximize"
    reference = comparison.reference.name if comparison.reference else None
    budgets = None
    if comparison.files:  # each file its own trials and epochs
        budgets = {
            arm.name: (comparison.budget(arm), comparison.spec_of(arm).trial_epochs)
            for arm in comparison.arms
        }
    refit = frozenset(a.name for a in comparison.arms if comparison.spec_of(a).evaluation.refit)
    summary = summarize(rows, n_trials=comparison.n_trials, epochs=spec.trial_epochs,
                        maximize=maximize, reference=reference, budgets=budgets,
                        refit=refit)  # fmt: skip
    trials = {arm.name: comparison.budget(arm) for arm in comparison.arms}
    most = max((r.index for r in rows if r.index is not None and r.kind == "trial"), default=1)
    figures = {
        FIGURES[0]: best_so_far_vs_trials(rows, min(most, max(trials.values())), metric),
        FIGURES[1]: best_so_far_vs_epochs(rows, metric),
        FIGURES[2]: final_values(rows, trials, metric, summary.noise_range),
        FIGURES[3]: test_accuracy(rows, reference),
    }
    import matplotlib.pyplot as plt

    for name, figure in figures.items():
        figure.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(figure)
    data = (f"{spec.data.dataset}, n_samples={spec.data.n_samples or 'all'}, "
            f"val_fraction={spec.data.val_fraction}")  # fmt: skip
    text = render(summary, study=spec.study.name, metric=metric, data=data,
                  figures=list(figures), command=command)  # fmt: skip
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary_json(summary), indent=2) + "\n")
    return Comparison(comparison, out, summary=summary, report_text=text, figures=tuple(figures))
