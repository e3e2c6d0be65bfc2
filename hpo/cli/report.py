"""`hpo report`: a study's listing and figures in a directory, and on its MLflow parent run."""

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
    storage_flag,
    tracking_flags,
    tracking_from,
)

if TYPE_CHECKING:
    import optuna

    from hpo.analysis.study_report import Report
    from hpo.spec.study_file import StudySpec
    from hpo.storage.database import StorageSettings
    from hpo.tracking.runs import TrackingSettings


def _add_report_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "report",
        help="the best trials and the study's figures, as files and MLflow artifacts",
        description="Write a study's report to a directory: best.txt (the book's Best-N "
        "listing of every completed trial), figure_6_24.png (the book's Figure 6-24: the "
        "accuracy curves of the best trials), lr_weight_decay.png (learning rate against "
        "weight decay, coloured by the metric), and Optuna's optimization history, "
        "intermediate values, parameter importances and parallel coordinate plots. Unless "
        "--no-mlflow, log the files to the study's MLflow parent run under report/.",
    )
    p.add_argument("name")
    storage_flag(p)
    p.add_argument("--out", metavar="DIR", type=Path, help="default: reports/<NAME>/")
    p.add_argument(
        "--top",
        metavar="N",
        type=int,
        default=20,
        help="trials in figure_6_24.png (default 20, as in the book)",
    )
    tracking_flags(p)
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window; before anything imports pyplot

    from hpo.analysis.results import open_study, report
    from hpo.storage.database import resolve_storage

    check_range(args.top, "--top", 1, 100)
    settings, tracking = resolve_storage(args.storage), tracking_from(args)
    written = report(args.name, storage=settings, out=args.out, top=args.top)
    out = written.directory
    print(f"{args.name}: report in {out}")
    for path in written.written:
        print(f"  wrote {path}")
    for name, reason in written.skipped.items():
        print(f"  skipped {name}: {reason}")
    for path in written.removed:
        print(f"  removed {path} (from an earlier report)")
    if not tracking.enabled:
        return EXIT_OK
    study, spec = open_study(args.name, storage=settings)
    return _log(tracking, settings, spec, study, written)


def _log(
    tracking: TrackingSettings,
    settings: StorageSettings,
    spec: StudySpec,
    study: optuna.Study,
    report: Report,
) -> int:
    """The files are written already, so an MLflow failure is one line and exit status 1."""
    from hpo.analysis.study_report import ARTIFACT_PATH, log_report
    from hpo.tracking.runs import make_client

    try:
        client = make_client(tracking)
        parent, created = log_report(client, tracking, settings, spec, study, report)
    except Exception as error:
        reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        print(
            f"hpo report: MLflow at {tracking.describe()} failed while logging the report "
            f"(the files are in {report.directory}): {reason}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    new = " (created: the study was not mirrored there)" if created else ""
    print(
        f"MLflow ({tracking.describe()}): {len(report.written)} files logged to parent run "
        f"{parent.run_id}{new} under {ARTIFACT_PATH}/"
    )
    return EXIT_OK


def add_parsers(commands: Commands) -> None:
    _add_report_parser(commands)
