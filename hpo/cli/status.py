"""`hpo status`, `hpo export` and `hpo replay`: looking at a study."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpo.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Commands,
    storage_flag,
)


def _add_status_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "status",
        help="trial counts and best results of the studies in a storage",
        description="One line per study (or one study and its best trials): trials by state, "
        "best value and parameters.",
    )
    p.add_argument("name", nargs="?", help="one study (default: all)")
    storage_flag(p)
    p.set_defaults(handler=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    import optuna

    from hpo.analysis.listing import best_lines, status_line, study_status
    from hpo.storage.database import open_storage, resolve_storage
    from hpo.storage.studies import FINGERPRINT_ATTR, load_existing_study, records

    settings = resolve_storage(args.storage)
    if args.name:
        study = load_existing_study(settings, args.name)
        print(status_line(study_status(study)))
        metric = records(study).get(FINGERPRINT_ATTR, {}).get("metric", "value")
        for line in best_lines(study, metric, n=5):
            print(f"  {line}")
        return EXIT_OK
    storage = open_storage(settings, heartbeat=False, create=False)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    if not summaries:
        print(f"no studies in {settings.redacted()}")
    for summary in sorted(summaries, key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        print(status_line(study_status(study)))
    return EXIT_OK


def _add_export_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "export",
        help="one row per trial as CSV or JSON",
        description="Every trial of a study: number, state, value, parameters, epochs "
        "trained, duration, seed.",
    )
    p.add_argument("name")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", "-o", metavar="FILE", help="default: standard output")
    storage_flag(p)
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    import csv
    import io
    import json

    from hpo.analysis.listing import export_rows
    from hpo.storage.database import resolve_storage
    from hpo.storage.studies import load_existing_study

    rows = export_rows(load_existing_study(resolve_storage(args.storage), args.name))
    buffer = io.StringIO()
    if args.format == "json":
        json.dump(rows, buffer, indent=2)
        buffer.write("\n")
    else:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["number"])
        writer.writeheader()
        writer.writerows(rows)
    if args.output:
        Path(args.output).write_text(buffer.getvalue())
    else:
        sys.stdout.write(buffer.getvalue())
    return EXIT_OK


def _add_replay_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "replay",
        help="retrain one recorded trial and compare",
        description="Train a recorded trial's configuration again with its seed and print "
        "the recorded and the reproduced validation metrics side by side.",
    )
    p.add_argument("name")
    p.add_argument("trial", type=int, help="trial number")
    storage_flag(p)
    p.set_defaults(handler=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    from hpo.analysis.listing import fmt
    from hpo.analysis.results import open_study, replay_of, replayable_trial
    from hpo.spec.data import load_splits
    from hpo.storage.database import resolve_storage

    study, spec = open_study(args.name, storage=resolve_storage(args.storage))
    trial = replayable_trial(study, spec, args.trial)
    splits = load_splits(spec.data, seed=spec.study.seed)
    params = ", ".join(f"{k}={fmt(v)}" for k, v in trial.params.items())
    seed = trial.user_attrs["seed"]
    print(f"trial {trial.number} of {args.name!r} ({trial.state.name}, seed {seed}): {params}")
    replay = replay_of(spec, trial, splits=splits)
    metric, epochs = replay.metric, replay.epochs
    print(f"  recorded   {metric} {replay.recorded_value:.6f} at epoch {epochs}")
    print(f"  reproduced {metric} {replay.reproduced_value:.6f} at epoch {epochs}")
    if replay.recorded_scores:
        n = len(replay.recorded_scores)
        print(f"  recorded   scores of its {n} trainings: {_scores(replay.recorded_scores)}")
        print(f"  reproduced scores of its {n} trainings: {_scores(replay.reproduced_scores)}")
    print("  identical at every recorded epoch" if replay.identical else "  DIFFERENT")
    return EXIT_OK if replay.identical else EXIT_FAILURE


def _scores(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:.6f}" for v in values)


def add_parsers(commands: Commands) -> None:
    _add_status_parser(commands)
    _add_export_parser(commands)
    _add_replay_parser(commands)
