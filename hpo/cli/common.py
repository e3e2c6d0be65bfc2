"""What every command shares: exit statuses and the storage and tracking flags."""

from __future__ import annotations

import argparse
from typing import Any

from hpo.spec.limits import check_range as check_range  # for every command

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command killed by it
Commands = argparse._SubParsersAction


def progress_bar(total: int | None, what: str, *, unit: str = "it", **options: Any) -> Any:
    """A tqdm bar on standard error when it is a terminal (silent otherwise), for a long
    command's phases."""
    import sys

    from tqdm import tqdm

    return tqdm(
        total=total, desc=what, unit=unit, dynamic_ncols=True, leave=False,
        disable=not sys.stderr.isatty(), **options,
    )  # fmt: skip


def storage_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        metavar="URL",
        help="database URL (default: $HPO_STORAGE, else sqlite:///hpo.db)",
    )


def tracking_flags(p: argparse.ArgumentParser, *, allow_off: bool = True) -> None:
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    p.add_argument("--experiment", help="MLflow experiment (default: the study's name)")
    if allow_off:
        p.add_argument("--no-mlflow", action="store_true", help="do not mirror to MLflow")


def tracking_from(args: argparse.Namespace):
    from hpo.tracking.runs import resolve_tracking

    return resolve_tracking(
        uri_flag=args.tracking_uri,
        experiment=args.experiment,
        disabled=getattr(args, "no_mlflow", False),
    )
