"""`hpo compare`: samplers and pruners (or study files) side by side over seeds, with a report."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.analysis.comparison.run import CompareListener
from hpo.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Commands,
    progress_bar,
    storage_flag,
    tracking_flags,
    tracking_from,
)

if TYPE_CHECKING:
    from hpo.analysis.comparison.stats import Summary
    from hpo.analysis.comparison.studies import ComparePlan, JobOutcome
    from hpo.storage.database import StorageSettings
    from hpo.tracking.runs import TrackingSettings


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_compare_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "compare",
        help="samplers and pruners, or study files, side by side over several seeds, "
        "with a report",
        description="Run the study of STUDY.toml once per (sampler, pruner, seed), at the same "
        "trial budget and, per seed, on the same data split; then write report.md, figures "
        "and results.csv (one row per trial, from which every number in the report can be "
        "recomputed). Given several study files (hpo compare A.toml B.toml), each file is an "
        "arm run as it is written (its sampler, pruner and budget), the first the reference; "
        "seed k gives every arm the first file's seed + k, and the files must share their "
        "[data] and metric. Interrupted, the same command resumes.",
    )
    p.add_argument("study_files", nargs="+", metavar="STUDY.toml")
    storage_flag(p)
    p.add_argument(
        "--samplers",
        type=_names,
        help="comma-separated (default: random,tpe; one study file only)",
    )
    p.add_argument(
        "--pruners",
        type=_names,
        help="comma-separated (default: none,median; one study file only)",
    )
    p.add_argument("--seeds", type=int, default=5, help="studies per arm (default 5)")
    p.add_argument(
        "--n-trials", type=int, help="budget per study (default: the file's; one file only)"
    )
    p.add_argument(
        "--parallel", type=int, default=1, metavar="N", help="studies run at once (default 1)"
    )
    # `--workers` means worker processes per study in `hpo run`; here it was studies at once.
    p.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--out",
        type=Path,
        help="report directory (default reports/compare-NAME, or "
        "reports/compare-files-NAME with several files: NAME the first file's study)",
    )
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
    from hpo.analysis.comparison.run import compare
    from hpo.errors import ConfigError

    if args.workers is not None:
        raise ConfigError(
            "is hpo run's flag (worker processes per study); the studies a comparison runs at "
            f"once are --parallel: use --parallel {args.workers}",
            key="--workers",
        )
    tracking = tracking_from(args)
    command = "hpo compare " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "hpo compare"
    done = compare(
        args.study_files, samplers=args.samplers, pruners=args.pruners, seeds=args.seeds,
        n_trials=args.n_trials, storage=args.storage, out=args.out, parallel=args.parallel,
        noise_trainings=args.noise_trainings, audit=args.audit, tracking=tracking,
        report_only=args.report_only, command=command, listener=_Printer(),
    )  # fmt: skip
    if done.interrupted:
        what = "interrupted" if done.interrupted == "SIGINT" else "terminated (SIGTERM)"
        print(f"{what}: run the same command again to resume", file=sys.stderr)
        return 128 + getattr(signal, done.interrupted)
    if done.failed:
        print(f"hpo compare: {len(done.failed)} studies failed; see their logs in "
              f"{done.directory / 'logs'}", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    assert done.summary is not None
    out = done.directory
    print(f"wrote {out / 'report.md'}, {out / 'results.csv'} and {len(done.figures)} figures")
    for line in done.report_text.splitlines():
        if line.startswith("- **"):
            print(line.replace("**", ""))
    if tracking.enabled:
        return _log_report(tracking, done.plan, out, done.summary)
    return EXIT_OK


class _Printer(CompareListener):
    """`hpo compare`'s view: the plan, a line per study as it ends, a bar per measuring step."""

    def planned(self, comparison: ComparePlan, storage: StorageSettings) -> None:
        arms = ", ".join(a.name for a in comparison.arms)
        trials = "its file's trials each" if comparison.files else f"{comparison.n_trials} trials"
        print(
            f"{comparison.prefix}: {len(comparison.arms)} arms ({arms}) × "
            f"{len(comparison.seeds)} seeds = {len(comparison.jobs())} studies of "
            f"{trials} in {storage.redacted()}"
        )

    def study_done(self, outcome: JobOutcome, finished: int, total: int) -> None:
        status = (
            "done" if outcome.returncode == 0 else f"exit {outcome.returncode}, see {outcome.log}"
        )
        print(f"[{finished}/{total}] {outcome.job.study_name}: {status}", flush=True)

    @contextlib.contextmanager
    def step(self, line: str, what: str, total: int | None, unit: str) -> Iterator[Callable]:
        print(line)
        with progress_bar(total, what, unit=unit) as bar:
            yield bar.update


def _log_report(
    tracking: TrackingSettings, comparison: ComparePlan, out: Path, summary: Summary
) -> int:
    from hpo.analysis.comparison.mlflow_run import log_comparison

    experiment = tracking.experiment or comparison.prefix
    try:
        run_id = log_comparison(tracking, experiment, comparison.prefix, out, summary)
    except Exception as error:
        print(f"hpo compare: could not log the report to MLflow at {tracking.describe()}: "
              f"{str(error).splitlines()[0][:200]}", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    print(f"MLflow: the report is in run {run_id} of experiment {experiment!r}")
    return EXIT_OK


def add_parsers(commands: Commands) -> None:
    _add_compare_parser(commands)
