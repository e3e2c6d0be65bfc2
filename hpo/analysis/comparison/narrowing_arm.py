"""The comparison's `narrowing` arm: the book's own method, as one job of `hpo compare`.

Random search in stages that share the arm's trial budget: stage 1 searches the study file's
ranges; after each stage, the ranges are narrowed around its top trials (`hpo narrow`'s
rule) and the next stage searches those. The arm's trials are the stages' trials in order,
so its best so far is never lost between stages, and the parent trials `hpo narrow` would
enqueue are not trained twice. Each stage is an ordinary study; the narrowing is recomputed
from the finished previous stage every time (it is deterministic), so the arm resumes
exactly; the stage files are written beside the report as a record.

    python -m hpo.analysis.comparison.narrowing_arm STUDY.toml --prefix P --pruner none --seed 0 \\
        --n-trials 100 --stages 3 --stage-dir DIR [--no-mlflow | --experiment E]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from hpo.engine import blas as _blas
from hpo.engine.signals import exit_status, stop_on_signals

NARROWING = "narrowing"


def stage_budgets(n_trials: int, stages: int) -> list[int]:
    """The arm's budget split into stages: equal shares, the first taking what is left over."""
    share = n_trials // stages
    return [n_trials - share * (stages - 1)] + [share] * (stages - 1)


def stage_names(prefix: str, pruner: str, seed: int, stages: int) -> list[str]:
    return [f"{prefix}--{NARROWING}-{pruner}--seed{seed}--stage{j}" for j in range(1, stages + 1)]


def run_arm(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    from hpo.analysis.narrowing import narrow_study, write_next_stage
    from hpo.engine.run import run_study
    from hpo.spec.load import load_study
    from hpo.storage.database import resolve_storage
    from hpo.storage.studies import load_existing_study
    from hpo.tracking.runs import resolve_tracking

    settings = resolve_storage(None)  # HPO_STORAGE, set by hpo compare
    tracking = resolve_tracking(uri_flag=None, experiment=args.experiment,
                                disabled=args.no_mlflow)  # fmt: skip
    budgets = stage_budgets(args.n_trials, args.stages)
    names = stage_names(args.prefix, args.pruner, args.seed, args.stages)
    spec = load_study(
        args.study_file, study_name=names[0], sampler="random", pruner=args.pruner,
        seed=args.seed, n_trials=budgets[0],
    )  # fmt: skip
    for j, (name, budget) in enumerate(zip(names, budgets, strict=True)):
        if j > 0:
            previous = load_existing_study(settings, names[j - 1])
            completed = len(previous.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            if completed:  # around as many top trials as the stage completed, up to --top
                result = narrow_study(previous, top=min(args.top, completed), margin=args.margin)
                stage = write_next_stage(
                    result, name=name, out=args.stage_dir / f"{name}.toml", force=True
                )
                spec = dataclasses.replace(stage.spec, enqueue=())
            # else: nothing completed (all pruned or failed), so the ranges stay as they were
            spec = spec.with_overrides(
                study_name=name, sampler="random", pruner=args.pruner, n_trials=budget
            )
        # One stage, as `hpo run` runs a study in one process: mirrored to MLflow if on.
        outcome = run_study(spec, storage=settings, tracking=tracking).outcome
        if outcome.interrupted:
            return 130
        if outcome.finished < budget:
            print(f"stage {name} stopped at {outcome.finished}/{budget}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    if "numpy" not in sys.modules:
        _blas.single_blas_thread()
    parser = argparse.ArgumentParser(prog="python -m hpo.analysis.comparison.narrowing_arm")
    parser.add_argument("study_file", type=Path)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--pruner", default="none")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--n-trials", type=int, required=True)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--stage-dir", type=Path, required=True)
    parser.add_argument("--experiment")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    args.stage_dir.mkdir(parents=True, exist_ok=True)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    stop_on_signals()  # whatever this process inherited: see `hpo.cli.main`
    try:
        return run_arm(args)
    except KeyboardInterrupt as stop:
        return exit_status(stop)


if __name__ == "__main__":
    sys.exit(main())
