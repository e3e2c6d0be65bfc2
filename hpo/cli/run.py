"""`hpo run`: run or resume a study from its file, in this process or several."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
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
    from hpo.engine.launch import RunOutcome
    from hpo.spec.study_file import StudySpec
    from hpo.storage.database import StorageSettings
    from hpo.tracking.mirror import Mirror, TrialMirror
    from hpo.tracking.runs import TrackingSettings


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
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="directory of the IDX files (default: $HPO_DATA_DIR/<dataset>, else the file's "
        "data_dir, else ~/.cache/hpo/<dataset>)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-optuna-adapter",
        action="store_true",
        help="write trials through Optuna's public storage API only, slower; as "
        "HPO_OPTUNA_ADAPTER=off (see hpo.storage.optuna_adapter)",
    )
    tracking_flags(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_run)


def _overrides(args: argparse.Namespace) -> list[str]:
    """The override flags of `hpo run`, to hand to its worker processes."""
    flags = []
    for name in (
        "study_name", "sampler", "pruner", "n_trials", "seed", "timeout", "experiment",
        "data_dir",
    ):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    if args.no_mlflow:
        flags.append("--no-mlflow")
    return flags  # the tracking URI goes through the environment, like the storage URL


def _cmd_run(args: argparse.Namespace) -> int:
    from hpo.errors import ConfigError
    from hpo.spec.limits import MAX_WORKERS
    from hpo.spec.study_file import load_study_file
    from hpo.storage.database import resolve_storage
    from hpo.storage.optuna_adapter import ADAPTER_ENV

    if args.no_optuna_adapter:  # read where the study is joined; worker processes inherit it
        os.environ[ADAPTER_ENV] = "off"
    if args.workers < 1:
        raise ConfigError(f"must be at least 1, but got {args.workers}", key="--workers")
    check_range(args.workers, "--workers", 1, MAX_WORKERS)
    spec = load_study_file(args.study_file).with_overrides(
        study_name=args.study_name,
        sampler=args.sampler,
        pruner=args.pruner,
        n_trials=args.n_trials,
        seed=args.seed,
        timeout=args.timeout,
    )
    if args.data_dir is not None:
        spec = spec.with_data_dir(args.data_dir)
    spec.require_search()
    settings = resolve_storage(args.storage)
    tracking = tracking_from(args)
    if args.worker:  # one of `hpo run --workers N`'s processes
        return _run_as_worker(spec, settings)
    mirror = None
    if tracking.enabled:
        from hpo.tracking.mirror import Mirror

        # Started first: it imports MLflow and opens the store while the study is prepared.
        mirror = Mirror(tracking, settings, spec, channels=args.workers)
    try:
        return _run_study(args, spec, settings, tracking, mirror)
    finally:
        if mirror is not None:
            mirror.abandon()  # a no-op once closed; else ends it without a sync


def _run_study(
    args: argparse.Namespace,
    spec: StudySpec,
    settings: StorageSettings,
    tracking: TrackingSettings,
    mirror: Mirror | None,
) -> int:
    from hpo.analysis.listing import best_lines
    from hpo.engine.launch import load_study_data, run_in_process, run_worker_processes
    from hpo.spec.data import check_data
    from hpo.storage.studies import load_existing_study, prepare_study

    name, n_trials = spec.study.name, spec.study.n_trials
    bar = _progress_bar(n_trials, enabled=not args.no_progress)
    try:
        # The data first: missing or corrupt data is one line, and leaves no study behind.
        bar.phase("loading data")
        splits = None
        if args.workers == 1:
            splits = load_study_data(spec)
        elif spec.trains:  # each worker loads and splits its own
            check_data(spec.data, seed=spec.study.seed)
        bar.phase("preparing the study")
        new = prepare_study(settings, spec)
        if mirror is not None:
            mirror.study_ready()
        _print_header(args, spec, settings, tracking, new=new)
        started = time.perf_counter()
        if args.workers == 1:
            bar.phase("running")
            channel = mirror.worker_end(0) if mirror is not None else None
            outcome = run_in_process(
                spec, settings, mirror=_trial_mirror(channel), splits=splits, progress=bar
            )
        else:
            bar.phase(f"starting {args.workers} workers")
            child = ["run", str(args.study_file), *_overrides(args), "--worker"]
            outcome = run_worker_processes(
                spec, settings, child, args.workers, mirror=mirror, progress=bar
            )
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    mirrored = mirror.close(interrupted=outcome.interrupted) if mirror is not None else None
    study = load_existing_study(settings, name)
    lines = best_lines(study, spec.study.metric, n=5)
    if lines:
        print("\n".join(lines))
    print(f"{name}: {outcome.finished}/{n_trials} trials finished ({elapsed:.0f} s this run)")
    if mirrored:
        print(mirrored)
    for line in outcome.worker_lines:
        print(f"hpo run: {line}", file=sys.stderr)
    if outcome.interrupted:
        return _interrupted(outcome, n_trials)
    if outcome.finished < n_trials and not (outcome.gave_up or outcome.worker_failures):
        if outcome.worker_stops and not outcome.timed_out:
            print(
                f"hpo run: every worker was stopped ({outcome.finished}/{n_trials} finished); "
                "run the same command again to resume",
                file=sys.stderr,
            )
            return 128 + getattr(signal, outcome.worker_stops[-1])
        print(
            f"stopped before the budget ({'timeout' if spec.study.timeout else 'see above'});"
            " run the same command again to continue",
            file=sys.stderr,
        )
    return _exit_status(outcome)


def _print_header(
    args: argparse.Namespace,
    spec: StudySpec,
    settings: StorageSettings,
    tracking: TrackingSettings,
    *,
    new: bool,
) -> None:
    print(
        f"{'created' if new else 'resuming'} study {spec.study.name!r} in "
        f"{settings.redacted()}: {spec.study.n_trials} trials, {spec.sampler.name} sampler, "
        f"{spec.pruner.name} pruner, {args.workers} worker{'s' if args.workers > 1 else ''}; "
        f"MLflow: {tracking.describe()}"
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
    sys.stdout.flush()


def _trial_mirror(channel: Connection | None) -> TrialMirror | None:
    if channel is None:
        return None
    from hpo.tracking.mirror import TrialMirror

    return TrialMirror(channel)


def _run_as_worker(spec: StudySpec, settings: StorageSettings) -> int:
    """A worker process of `hpo run --workers N`: the study is prepared, the mirror runs in
    `hpo run`'s process tree; this one trains until the budget is spent, and ends with it."""
    import os

    from hpo.engine.launch import run_in_process
    from hpo.engine.signals import watch_parent
    from hpo.tracking.mirror import MIRROR_FD_ENV, TrialMirror

    watch_parent()
    fd = os.environ.get(MIRROR_FD_ENV)
    mirror = TrialMirror.from_fd(int(fd)) if fd else None
    outcome = run_in_process(spec, settings, mirror=mirror)
    if outcome.interrupted:
        from hpo.engine.signals import _parent_gone

        if _parent_gone.is_set():
            print(
                f"hpo run (worker {os.getpid()}): the hpo run that started this worker ended; "
                "its running trial was marked failed",
                file=sys.stderr,
            )
        return 128 + getattr(signal, outcome.stop_signal)
    return _exit_status(outcome)


def _interrupted(outcome: RunOutcome, n_trials: int) -> int:
    what = "interrupted" if outcome.stop_signal == "SIGINT" else "terminated (SIGTERM)"
    print(
        f"{what}: the running trials were marked failed (they do not count); run the same "
        f"command again to resume ({outcome.finished}/{n_trials} finished)",
        file=sys.stderr,
    )
    return 128 + getattr(signal, outcome.stop_signal)


def _exit_status(outcome: RunOutcome) -> int:
    if outcome.gave_up:
        print(
            f"hpo run: stopped after {len(outcome.errors)} failed trials in a row; the last: "
            f"{outcome.errors[-1]}. Fix the cause and run the same command to resume.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if outcome.worker_failures:
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

    def phase(self, what: str) -> None:
        """What start-up is doing, until the first count."""
        self._bar.set_description_str(what, refresh=True)

    def __call__(self, finished: int, best: float | None) -> None:
        if self._bar.desc:
            self._bar.set_description_str("", refresh=False)
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
