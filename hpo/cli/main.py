"""The `hpo` command: parses arguments, calls library code, returns an exit status.

Exit status 0 on success, 2 for a mistake the user can fix (printed as one line, no
traceback), 1 for anything else, 130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM).
Heavy modules (NumPy and everything above it) are imported inside the handlers, after the
BLAS environment is set.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hpo import __version__
from hpo.cli import best as _cmd_best
from hpo.cli import compare as _cmd_compare
from hpo.cli import narrow as _cmd_narrow
from hpo.cli import report as _cmd_report
from hpo.cli import run as _cmd_run
from hpo.cli import status as _cmd_inspect
from hpo.cli import sync as _cmd_mlflow
from hpo.cli import train as _cmd_train
from hpo.cli.common import EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_USAGE
from hpo.engine import blas as _blas

if TYPE_CHECKING:
    from trainer.data import DatasetError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpo",
        description="Hyperparameter optimisation for the networks of Deep Learning from "
        "Scratch, chapter 6.",
    )
    parser.add_argument("--version", action="version", version=f"hpo {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands_in_order = (
        _cmd_run, _cmd_inspect, _cmd_best, _cmd_report, _cmd_narrow, _cmd_compare, _cmd_mlflow,
        _cmd_train,
    )  # fmt: skip
    for module in commands_in_order:
        module.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if "numpy" not in sys.modules:  # only before NumPy loads does it count
        _blas.single_blas_thread()
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    from hpo.engine.signals import stop_on_signals
    from hpo.errors import ConfigError
    from hpo.storage.retry import StorageUnreachable
    from trainer import TrainingDiverged
    from trainer.data import DatasetError

    # SIGTERM stops every command as Ctrl-C does, and Ctrl-C works even in a process started
    # with SIGINT ignored (a background job).
    stop_on_signals()
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"hpo {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except DatasetError as error:
        print(f"hpo {args.command}: error: {_in_cli_terms(error)}", file=sys.stderr)
        return EXIT_USAGE
    except StorageUnreachable as error:
        print(f"hpo {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except TrainingDiverged as error:
        print(f"hpo {args.command}: {error}; try a smaller learning rate", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt as stop:
        from hpo.engine.signals import exit_status, signal_name

        what = "interrupted" if signal_name(stop) == "SIGINT" else "terminated (SIGTERM)"
        print(f"hpo {args.command}: {what}", file=sys.stderr)
        return exit_status(stop)
    except BrokenPipeError:
        # The reader went away (`hpo status | head`): stop quietly, as other commands do, and
        # keep Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as error:
        status = _storage_trouble(args.command, error)
        if status is None:
            raise
        return status


def _configure_logging(verbose: int) -> None:
    """-v for INFO, -vv for DEBUG, Optuna's logging at the same level."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(level)


def _storage_trouble(command: str, error: Exception) -> int | None:
    """One line and an exit status for a full disk or a storage that went away; None for
    anything else, which is a bug to show in full."""
    from hpo.storage.retry import describe_error, is_disk_full, is_transient

    if is_disk_full(error):
        print(
            f"hpo {command}: error: out of disk space ({describe_error(error)}); free "
            "some, then run the same command again: a trial this left running is failed "
            "and retried once its grace period has passed",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not is_transient(error):
        return None
    # A storage that went away where nothing waits for it (a read after the run, say).
    print(
        f"hpo {command}: the storage could not be reached ({describe_error(error)}); "
        "nothing was lost: run the same command again once it is back",
        file=sys.stderr,
    )
    return EXIT_FAILURE


def _in_cli_terms(error: DatasetError) -> str:
    """A data error's fix said with this command line's commands and flags."""
    if error.remedy == "download":
        dataset = error.dataset or "mnist"
        return f"{error.problem} Run `hpo download {dataset}` to fetch them."
    if error.remedy == "mirror":
        return f"{error.problem} Pass another --base-url to `hpo download`."
    return str(error)
