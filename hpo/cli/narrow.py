"""`hpo narrow`: the book's step 3, narrow a finished study's ranges and write the next stage."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hpo.cli.common import EXIT_OK, Commands, storage_flag


def _add_narrow_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "narrow",
        help="narrow a finished study's ranges around its best trials; write the next stage",
        description="Narrow the ranges of a finished study around its top completed trials "
        "(the book's 6.5.3: narrow the range from the results and repeat), and write the next "
        "stage's study file: the same definition and study seed with the new ranges, whose "
        "first trials reproduce the parent's top trials exactly. An end of a range where the "
        "top trials crowd is kept, not narrowed (the optimum may lie beyond it); --widen "
        "extends it instead.",
    )
    p.add_argument("name", help="the parent study")
    storage_flag(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--top", type=int, metavar="K", help="narrow around the K best completed trials (5)"
    )
    which.add_argument(
        "--quantile",
        type=float,
        metavar="Q",
        help="narrow around the best Q (in (0, 1]) of the completed trials instead",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.5,
        metavar="M",
        help="extend the top values' span by M times itself on each side (0.5)",
    )
    p.add_argument(
        "--widen",
        action="store_true",
        help="move a crowded end out (a decade, or one width) instead of keeping it",
    )
    p.add_argument("--name", dest="new_name", metavar="NEW", help="the new study (NAME-stage2)")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="the study file to write (NEW.toml beside the parent's study file, else here)",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(handler=_cmd_narrow)


def _cmd_narrow(args: argparse.Namespace) -> int:
    from hpo.analysis.listing import fmt
    from hpo.analysis.narrowing import narrow_study, next_stage_name, range_text, write_next_stage
    from hpo.errors import ConfigError
    from hpo.storage.database import open_storage, resolve_storage
    from hpo.storage.studies import load_existing_study

    settings = resolve_storage(args.storage)
    study = load_existing_study(settings, args.name)
    result = narrow_study(
        study, top=args.top, quantile=args.quantile, margin=args.margin, widen=args.widen
    )
    name = args.new_name if args.new_name is not None else next_stage_name(args.name)
    storage = open_storage(settings, heartbeat=False)
    try:
        taken = {s.study_name for s in storage.get_all_studies()}
    finally:
        storage.engine.dispose()
    if name in taken:
        raise ConfigError(
            f"a study named {name!r} exists already in {settings.redacted()}; choose another "
            "name for the new stage with --name"
        )
    stage = write_next_stage(result, name=name, out=args.out, force=args.force)

    metric = result.spec.study.metric
    best = result.top[0]
    print(
        f"{result.parent}: {result.n_complete} completed trials, best {metric} "
        f"{fmt(best.value)} (trial {best.number}); narrowing around the top {len(result.top)}"
    )
    width = max(len(c.name) for c in result.changes)
    old_width = max(len(range_text(c.old)) for c in result.changes)
    new_width = max(len(range_text(c.new)) for c in result.changes)
    for c in result.changes:
        print(
            f"  {c.name:<{width}}  {range_text(c.old):<{old_width}} -> "
            f"{range_text(c.new):<{new_width}}  {c.action}: {c.reason}"
        )
    print(f"rule: {result.rule}")
    enqueued = len(stage.spec.enqueue)
    print(
        f"wrote {_shown(stage.path)}: study {stage.name!r}, seed {stage.spec.study.seed}, "
        f"{enqueued} of the top {len(result.top)} trials enqueued to run first"
    )
    storage_arg = f" --storage {settings.redacted()}" if args.storage else ""
    print(f"next: hpo run {_shown(stage.path)}{storage_arg}")
    return EXIT_OK


def _shown(path: Path) -> str:
    """The path as the user would type it: relative when it is below the current directory."""
    relative = os.path.relpath(path.absolute())
    return path.as_posix() if relative.startswith("..") else relative


def add_parsers(commands: Commands) -> None:
    _add_narrow_parser(commands)
