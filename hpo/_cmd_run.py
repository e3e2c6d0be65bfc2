"""`hpo run`: run or resume a study from its file, in this process or several."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from ._cli_common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Commands,
    storage_flag,
    tracking_flags,
    tracking_from,
)


def _add_run_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "run",
        help="run (or resume) the study a study file describes",
        description="Run the study described by STUDY.toml until it has n_trials finished "
        "trials, counted across every run and worker. Run the same command again to resume "
        "after an interruption; run it on other machines against the same storage to add "
        "workers. Flags override the file.",
    )
    p.add_argument("study_file", metavar="STUDY.toml")
    storage_flag(p)
    p.add_argument("--study-name", help="default: [study] name, else the file's name")
    p.add_argument("--sampler", help="random, tpe, gp, cmaes or qmc (with default options)")
    p.add_argument("--pruner", help="none, median, successive_halving or hyperband")
    p.add_argument("--n-trials", type=int, help="the study's total budget of finished trials")
    p.add_argument("--seed", type=int, help="seed of the split, the trials and the samplers")
    p.add_argument("--timeout", type=float, help="stop starting trials after S seconds")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine, one BLAS thread each (default 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    tracking_flags(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_run)


def _overrides(args: argparse.Namespace) -> list[str]:
    """The override flags of `hpo run`, to hand to its worker processes."""
    flags = []
    for name in ("study_name", "sampler", "pruner", "n_trials", "seed", "timeout", "experiment"):
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    if args.no_mlflow:
        flags.append("--no-mlflow")
    return flags  # the tracking URI goes through the environment, like the storage URL


def _interrupt_once(signum: int, frame: object) -> None:
    """First Ctrl-C: stop (the running trial is marked failed); later ones are ignored, so
    that nothing interrupts the write that marks it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _cmd_run(args: argparse.Namespace) -> int:
    from ._errors import ConfigError
    from ._report import best_lines
    from ._run import finish_tracking, run_in_process, run_worker_processes
    from ._storage import resolve_storage
    from ._studies import load_existing_study, prepare_study
    from ._studyfile import load_study_file

    if args.workers < 1:
        raise ConfigError(f"must be at least 1, but got {args.workers}", key="--workers")
    spec = load_study_file(args.study_file).with_overrides(
        study_name=args.study_name,
        sampler=args.sampler,
        pruner=args.pruner,
        n_trials=args.n_trials,
        seed=args.seed,
        timeout=args.timeout,
    )
    settings = resolve_storage(args.storage)
    tracking = tracking_from(args)
    signal.signal(signal.SIGINT, _interrupt_once)
    new = prepare_study(settings, spec)
    name, n_trials = spec.study.name, spec.study.n_trials
    if args.worker:  # one of `hpo run --workers N`'s processes: it mirrors its own trials
        outcome = run_in_process(spec, settings, tracking=tracking)
        finish_tracking(
            spec, settings, tracking, interrupted=outcome.interrupted, settled=outcome.trials
        )
        return _exit_status(outcome, args)

    print(
        f"{'created' if new else 'resuming'} study {name!r} in {settings.redacted()}: "
        f"{n_trials} trials, {spec.sampler.name} sampler, {spec.pruner.name} pruner, "
        f"{args.workers} worker{'s' if args.workers > 1 else ''}; MLflow: {tracking.describe()}"
    )
    if spec.trains:
        print(f"network: {spec.base.describe()}")
    else:  # nothing is trained: say what a trial computes instead
        assert spec.probe is not None
        print(f"{spec.study.kind}: {spec.probe.describe()}")
        if spec.study.kind == "activations":
            print(f"  hidden layers {list(spec.base.hidden_size_list)}, untrained")
    for param in spec.space.params:
        print(f"  search {param.describe()}")
    bar = _progress_bar(n_trials, enabled=not args.no_progress)
    started = time.perf_counter()
    try:
        if args.workers == 1:
            outcome = run_in_process(spec, settings, tracking=tracking, progress=bar)
        else:
            child = ["run", str(args.study_file), *_overrides(args), "--worker"]
            outcome = run_worker_processes(
                spec, settings, child, args.workers, tracking=tracking, progress=bar
            )
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    mirrored = finish_tracking(
        spec, settings, tracking, interrupted=outcome.interrupted, settled=outcome.trials
    )
    study = load_existing_study(settings, name)
    lines = best_lines(study, spec.study.metric, n=5)
    if lines:
        print("\n".join(lines))
    print(f"{name}: {outcome.finished}/{n_trials} trials finished ({elapsed:.0f} s this run)")
    if mirrored:
        print(mirrored)
    if outcome.interrupted:
        print(
            f"interrupted: run the same command again to resume ({outcome.finished}/"
            f"{n_trials} finished)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if outcome.finished < n_trials:
        print(
            f"stopped before the budget ({'timeout' if spec.study.timeout else 'see above'});"
            " run the same command again to continue",
            file=sys.stderr,
        )
    return _exit_status(outcome, args)


def _exit_status(outcome, args: argparse.Namespace) -> int:
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    if outcome.gave_up:
        print(
            f"hpo run: stopped after {len(outcome.errors)} failed trials in a row; the last: "
            f"{outcome.errors[-1]}. Fix the cause and run the same command to resume.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if outcome.worker_failures:
        print(
            f"hpo run: {outcome.worker_failures} worker process(es) failed; see above",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


class _Progress:
    """A tqdm bar over finished trials (on a terminal), updated from absolute counts."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            unit="trial",
            dynamic_ncols=True,
            disable=not (enabled and sys.stderr.isatty()),
        )

    def __call__(self, finished: int, best: float | None) -> None:
        self._bar.n = finished
        if best is not None:
            self._bar.set_postfix_str(f"best {best:.4g}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _progress_bar(total: int, enabled: bool) -> _Progress:
    return _Progress(total, enabled)


def add_parsers(commands: Commands) -> None:
    _add_run_parser(commands)
