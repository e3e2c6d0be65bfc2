"""`hpo run`: run or resume a study from its file, in this process or several."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from hpo.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Commands,
    check_range,
    storage_flag,
    tracking_flags,
    tracking_from,
)
from hpo.engine.run import RunListener

if TYPE_CHECKING:
    from hpo.engine.launch import RunOutcome
    from hpo.engine.run import RunResult
    from hpo.spec.study_file import StudySpec
    from hpo.storage.database import StorageSettings
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


def _cmd_run(args: argparse.Namespace) -> int:
    from hpo.engine.run import run_study
    from hpo.errors import ConfigError
    from hpo.spec.limits import MAX_WORKERS
    from hpo.spec.load import load_study
    from hpo.storage.database import resolve_storage
    from hpo.storage.optuna_adapter import ADAPTER_ENV

    if args.no_optuna_adapter:  # read where the study is joined; worker processes inherit it
        os.environ[ADAPTER_ENV] = "off"
    if args.workers < 1:
        raise ConfigError(f"must be at least 1, but got {args.workers}", key="--workers")
    check_range(args.workers, "--workers", 1, MAX_WORKERS)
    spec = load_study(
        args.study_file,
        study_name=args.study_name,
        sampler=args.sampler,
        pruner=args.pruner,
        n_trials=args.n_trials,
        seed=args.seed,
        timeout=args.timeout,
        data_dir=args.data_dir,
    )
    settings = resolve_storage(args.storage)
    tracking = tracking_from(args)
    if args.worker:  # one of `hpo run --workers N`'s processes
        return _run_as_worker(spec, settings)
    # A budget of epochs has no count of trials to fill: the bar counts them without a total.
    total = spec.study.n_trials if spec.study.max_epochs is None else None
    printer = _Printer(total, args.workers, tracking, progress=not args.no_progress)
    result = run_study(
        spec, storage=settings, workers=args.workers, tracking=tracking, listener=printer
    )
    return _report(result)


def _report(result: RunResult) -> int:
    """What `hpo run` prints once the trials have stopped, and its exit status."""
    from hpo.analysis.listing import best_lines

    outcome, spec = result.outcome, result.spec
    name, n_trials = spec.study.name, spec.study.n_trials
    lines = best_lines(result.study, spec.study.metric, n=5)
    if lines:
        print("\n".join(lines))
    elapsed = result.elapsed_s
    if spec.study.max_epochs is not None or spec.selection.enabled:
        done = (
            f"{outcome.finished} trials finished, {result.epochs_trained:,}"
            + (f"/{spec.study.max_epochs:,}" if spec.study.max_epochs is not None else "")
            + " epochs trained"
        )
        counted = f"{outcome.finished} trials, {result.epochs_trained:,} epochs finished"
    else:
        done = f"{outcome.finished}/{n_trials} trials finished"
        counted = f"{outcome.finished}/{n_trials} finished"
    print(f"{name}: {done} ({elapsed:.0f} s this run)")
    if result.mirrored:
        print(result.mirrored)
    for line in outcome.worker_lines:
        print(f"hpo run: {line}", file=sys.stderr)
    if outcome.interrupted:
        return _interrupted(outcome, counted)
    if not result.complete and not (outcome.gave_up or outcome.worker_failures):
        if outcome.worker_stops and not outcome.timed_out:
            print(
                f"hpo run: every worker was stopped ({counted}); "
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
    spec: StudySpec,
    settings: StorageSettings,
    tracking: TrackingSettings,
    workers: int,
    *,
    new: bool,
) -> None:
    print(
        f"{'created' if new else 'resuming'} study {spec.study.name!r} in "
        f"{settings.redacted()}: {spec.describe_budget()}, {spec.sampler.name} sampler, "
        f"{spec.pruner.name} pruner, {workers} worker{'s' if workers > 1 else ''}; "
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


def _interrupted(outcome: RunOutcome, counted: str) -> int:
    what = "interrupted" if outcome.stop_signal == "SIGINT" else "terminated (SIGTERM)"
    print(
        f"{what}: the running trials were marked failed (they do not count); run the same "
        f"command again to resume ({counted})",
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


class _Printer(RunListener):
    """`hpo run`'s view of a run: the header once the study is ready, and a tqdm bar over
    finished trials (on a terminal), updated from absolute counts."""

    def __init__(
        self, total: int | None, workers: int, tracking: TrackingSettings, *, progress: bool
    ) -> None:
        self.total, self.workers, self.tracking, self.enabled = total, workers, tracking, progress
        self._bar: Any = None

    def _tqdm(self) -> Any:
        if self._bar is None:  # made as the run starts, after the MLflow mirror
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                unit="trial",
                dynamic_ncols=True,
                disable=not (self.enabled and sys.stderr.isatty()),
            )
        return self._bar

    def phase(self, what: str) -> None:
        """What start-up is doing, until the first count."""
        self._tqdm().set_description_str(what, refresh=True)

    def ready(self, created: bool, spec: StudySpec, storage: StorageSettings) -> None:
        _print_header(spec, storage, self.tracking, self.workers, new=created)

    def progress(self, finished: int, best: float | None) -> None:
        bar = self._tqdm()
        if bar.desc:
            bar.set_description_str("", refresh=False)
        bar.n = finished
        if best is not None:
            bar.set_postfix_str(f"best {best:.4g}", refresh=False)
        bar.refresh()

    def stopped(self) -> None:
        if self._bar is not None:
            self._bar.close()


def add_parsers(commands: Commands) -> None:
    _add_run_parser(commands)
