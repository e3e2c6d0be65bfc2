"""`hpo sync-mlflow`: the MLflow mirror, made whole."""

from __future__ import annotations

import argparse

from hpo.cli.common import (
    EXIT_OK,
    Commands,
    check_range,
    storage_flag,
    tracking_flags,
    tracking_from,
)


def _add_sync_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "sync-mlflow",
        help="mirror a study's missing or incomplete trials to MLflow",
        description="Create the MLflow runs a study lacks and complete the incomplete ones, "
        "from the Optuna storage (the truth). Idempotent: a second run changes nothing.",
    )
    p.add_argument("name")
    storage_flag(p)
    tracking_flags(p, allow_off=False)
    p.add_argument(
        "--settle",
        type=float,
        default=30.0,
        metavar="S",
        help="while workers run, leave trials that ended less than S s ago to them (default 30)",
    )
    p.set_defaults(handler=_cmd_sync)


def _cmd_sync(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    from hpo.errors import ConfigError
    from hpo.storage.database import resolve_storage
    from hpo.storage.studies import load_existing_study, stored_spec
    from hpo.tracking.runs import ensure_parent_run, make_client
    from hpo.tracking.sync import sync_study

    check_range(args.settle, "--settle", 0, 86_400)
    settings, tracking = resolve_storage(args.storage), tracking_from(args)
    study = load_existing_study(settings, args.name)
    spec = stored_spec(study)
    client = make_client(tracking)
    try:
        parent = ensure_parent_run(client, tracking, settings, spec, study)
        # With no trial running, no worker is active, so nothing can be in flight.
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        settle = args.settle if running else 0.0
        report = sync_study(
            client, parent, study, spec.study.metric, storage=settings, settle_s=settle
        )
    except Exception as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(
            f"cannot reach MLflow at {tracking.describe()}: {str(error).splitlines()[0][:300]}"
        ) from None
    print(
        f"{args.name}: {report.describe()} (MLflow {tracking.describe()}, parent run "
        f"{parent.run_id})"
    )
    return EXIT_OK


def add_parsers(commands: Commands) -> None:
    _add_sync_parser(commands)
