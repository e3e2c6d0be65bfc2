"""`hpo compare`: samplers and pruners side by side over seeds, with a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Commands,
    check_range,
    progress_bar,
    storage_flag,
    tracking_flags,
    tracking_from,
)
from hpo.engine.signals import exit_status, signal_name

if TYPE_CHECKING:
    from hpo.analysis.compare import ComparePlan, Row
    from hpo.analysis.compare_stats import Summary
    from hpo.spec.study_file import StudySpec
    from hpo.storage.database import StorageSettings
    from hpo.tracking.runs import TrackingSettings

FIGURES = ("best_so_far_vs_trials.png", "best_so_far_vs_epochs.png", "final_values.png")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_compare_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "compare",
        help="samplers and pruners side by side over several seeds, with a report",
        description="Run the study of STUDY.toml once per (sampler, pruner, seed), at the same "
        "trial budget and, per seed, on the same data split; then write report.md, figures "
        "and results.csv (one row per trial, from which every number in the report can be "
        "recomputed). Interrupted, the same command resumes.",
    )
    p.add_argument("study_file", metavar="STUDY.toml")
    storage_flag(p)
    p.add_argument(
        "--samplers",
        type=_names,
        default=["random", "tpe"],
        help="comma-separated (default: random,tpe)",
    )
    p.add_argument(
        "--pruners",
        type=_names,
        default=["none", "median"],
        help="comma-separated (default: none,median)",
    )
    p.add_argument("--seeds", type=int, default=5, help="studies per arm (default 5)")
    p.add_argument("--n-trials", type=int, help="budget per study (default: the file's)")
    p.add_argument(
        "--parallel", type=int, default=1, metavar="N", help="studies run at once (default 1)"
    )
    # `--workers` means worker processes per study in `hpo run`; here it was studies at once.
    p.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="report directory (default reports/compare-NAME)")
    p.add_argument(
        "--noise-trainings",
        type=int,
        default=20,
        help="trainings of the best configuration with other seeds (default 20)",
    )
    p.add_argument(
        "--audit",
        type=int,
        default=10,
        help="pruned trials per arm re-trained to full length (default 10)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="do not run anything; report on the studies as they are",
    )
    tracking_flags(p)
    p.set_defaults(handler=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from hpo.analysis.compare import plan
    from hpo.spec.names import study_folder
    from hpo.spec.study_file import load_study_file
    from hpo.storage.database import resolve_storage

    _check_flags(args)
    spec = load_study_file(args.study_file)
    spec.require_search()
    spec.require_training("hpo compare")
    comparison = plan(spec, Path(args.study_file), samplers=args.samplers,
                      pruners=args.pruners, seeds=args.seeds, n_trials=args.n_trials)  # fmt: skip
    settings = resolve_storage(args.storage)
    tracking = tracking_from(args)
    if not args.report_only:
        _check_before_training(spec, comparison)
    out = args.out or study_folder(Path("reports"), comparison.prefix)
    arms = ", ".join(a.name for a in comparison.arms)
    print(
        f"{comparison.prefix}: {len(comparison.arms)} arms ({arms}) × {len(comparison.seeds)} "
        f"seeds = {len(comparison.jobs())} studies of {comparison.n_trials} trials in "
        f"{settings.redacted()}"
    )
    if not args.report_only:
        status = _run_studies(args, comparison, settings, tracking, out)
        if status is not None:
            return status
    rows = _measured_rows(args, comparison, settings)
    summary = _write_report(spec, comparison, rows, out)
    if tracking.enabled:
        return _log_report(tracking, comparison, out, summary)
    return EXIT_OK


def _check_flags(args: argparse.Namespace) -> None:
    from hpo.errors import ConfigError
    from hpo.spec.limits import MAX_SEEDS, MAX_WORKERS

    if args.workers is not None:
        raise ConfigError(
            "is hpo run's flag (worker processes per study); the studies a comparison runs at "
            f"once are --parallel: use --parallel {args.workers}",
            key="--workers",
        )
    check_range(args.parallel, "--parallel", 1, MAX_WORKERS)
    check_range(args.seeds, "--seeds", 1, MAX_SEEDS)
    check_range(args.noise_trainings, "--noise-trainings", 0, 100)
    check_range(args.audit, "--audit", 0, 1_000)


def _run_studies(
    args: argparse.Namespace,
    comparison: ComparePlan,
    settings: StorageSettings,
    tracking: TrackingSettings,
    out: Path,
) -> int | None:
    """Run (or resume) every study of the comparison; an exit status if that failed."""
    from hpo.analysis.compare import run_jobs

    def done(outcome, finished, total) -> None:
        status = (
            "done" if outcome.returncode == 0 else f"exit {outcome.returncode}, see {outcome.log}"
        )
        print(f"[{finished}/{total}] {outcome.job.study_name}: {status}", flush=True)

    try:
        outcomes = run_jobs(comparison, settings, tracking, workers=args.parallel,
                            log_dir=out / "logs", on_done=done)  # fmt: skip
    except KeyboardInterrupt as stop:
        what = "interrupted" if signal_name(stop) == "SIGINT" else "terminated (SIGTERM)"
        print(f"{what}: run the same command again to resume", file=sys.stderr)
        return exit_status(stop)
    failed = [o for o in outcomes if o.returncode != 0]
    if failed:
        print(f"hpo compare: {len(failed)} studies failed; see their logs in {out / 'logs'}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    return None


def _measured_rows(
    args: argparse.Namespace, comparison: ComparePlan, settings: StorageSettings
) -> list[Row]:
    """One row per study, with its best configuration's test accuracy, the noise check and
    the pruning audit: everything the report is computed from."""
    from hpo.analysis.compare import (
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
        if finished < comparison.n_trials:
            raise ConfigError(
                f"{job.study_name!r} has {finished} of {comparison.n_trials} trials; run "
                "the comparison (without --report-only) to finish it"
            )
        for study in mine:
            studies[study.study_name], specs[study.study_name] = study, stored_spec(study)
        rows += study_rows(job, mine)
    print("retraining each study's best configuration once for its test accuracy ...")
    with progress_bar(len(jobs), "test accuracy", unit="study") as bar:
        add_test_accuracy(rows, studies, specs, progress=bar.update)
    print(f"training the best configuration with {args.noise_trainings} other seeds ...")
    with progress_bar(args.noise_trainings, "noise check", unit="training") as bar:
        add_noise_check(rows, studies, specs, args.noise_trainings, progress=bar.update)
    if any(a.pruner != "none" for a in comparison.arms) and args.audit > 0:
        print(f"re-training up to {args.audit} pruned trials per arm to full length ...")
        with progress_bar(None, "pruning audit", unit="trial") as bar:
            add_pruning_audit(rows, studies, specs, args.audit, progress=bar.update)
    return rows


def _write_report(spec: StudySpec, comparison: ComparePlan, rows: list[Row], out: Path) -> Summary:
    """results.csv, the figures and report.md in `out`, all computed from results.csv."""
    from hpo.analysis.compare import read_rows, write_rows
    from hpo.analysis.compare_figures import (
        best_so_far_vs_epochs,
        best_so_far_vs_trials,
        final_values,
    )
    from hpo.analysis.compare_stats import render, summarize

    out.mkdir(parents=True, exist_ok=True)
    write_rows(rows, out / "results.csv")
    rows = read_rows(out / "results.csv")  # the report is computed from the file itself
    metric = spec.study.metric
    maximize = spec.study.direction == "maximize"
    reference = comparison.reference.name if comparison.reference else None
    summary = summarize(rows, n_trials=comparison.n_trials, epochs=spec.base.epochs,
                        maximize=maximize, reference=reference)  # fmt: skip
    figures = {
        FIGURES[0]: best_so_far_vs_trials(rows, comparison.n_trials, metric),
        FIGURES[1]: best_so_far_vs_epochs(rows, metric),
        FIGURES[2]: final_values(rows, comparison.n_trials, metric, summary.noise_range),
    }
    import matplotlib.pyplot as plt

    for name, figure in figures.items():
        figure.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(figure)
    data = (f"{spec.data.dataset}, n_samples={spec.data.n_samples or 'all'}, "
            f"val_fraction={spec.data.val_fraction}")  # fmt: skip
    command = "hpo compare " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "hpo compare"
    report = render(summary, study=spec.study.name, metric=metric, data=data,
                    figures=list(figures), command=command)  # fmt: skip
    (out / "report.md").write_text(report)
    print(f"wrote {out / 'report.md'}, {out / 'results.csv'} and {len(figures)} figures")
    for line in report.splitlines():
        if line.startswith("- **"):
            print(line.replace("**", ""))
    return summary


def _log_report(
    tracking: TrackingSettings, comparison: ComparePlan, out: Path, summary: Summary
) -> int:
    from hpo.analysis.compare_mlflow import log_comparison

    experiment = tracking.experiment or comparison.prefix
    try:
        run_id = log_comparison(tracking, experiment, comparison.prefix, out, summary)
    except Exception as error:
        print(f"hpo compare: could not log the report to MLflow at {tracking.describe()}: "
              f"{str(error).splitlines()[0][:200]}", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    print(f"MLflow: the report is in run {run_id} of experiment {experiment!r}")
    return EXIT_OK


def _check_before_training(spec: StudySpec, comparison: ComparePlan) -> None:
    """Everything the comparison needs that could fail after hours of training: the data
    loads and keeps a test split (each arm's best is retrained and tested), and every study
    it creates can take its name."""
    from hpo.analysis.best import require_test_split
    from hpo.spec.data import load_splits
    from hpo.spec.names import check_new_study_name

    for job in comparison.jobs():
        check_new_study_name(job.study_name)
    splits = load_splits(spec.data, seed=spec.study.seed)
    require_test_split(spec, splits, command="hpo compare")


def add_parsers(commands: Commands) -> None:
    _add_compare_parser(commands)
