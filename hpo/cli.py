"""The `hpo` command: parses arguments, calls library code, returns an exit status.

Exit status 0 on success, 2 for a mistake the user can fix (printed as one line, no
traceback), 1 for anything else, 130 when interrupted. Heavy modules (NumPy and everything
above it) are imported inside the handlers, after the BLAS environment is set.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__, _blas

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 100,100, but got {text!r}"
        ) from None


def _weight_init(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text


def _add_train_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train one network and print a line per epoch",
        description="Train the chapter's network once on a training split, reporting the "
        "validation split after every epoch. The test split is never touched.",
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="digits",
        help="digits (default, no download), mnist, fashion-mnist, kmnist or npz",
    )
    data.add_argument(
        "--data-dir",
        help="directory of the IDX files "
        "(default: $HPO_DATA_DIR/<dataset> or ~/.cache/hpo/<dataset>)",
    )
    data.add_argument("--path", help="the .npz file, for --dataset npz")
    data.add_argument(
        "--download",
        action="store_true",
        help="download missing IDX files into the data directory first",
    )
    data.add_argument("--n-samples", type=int, help="use only the first N samples (the book: 500)")
    data.add_argument("--val-fraction", type=float, default=0.2)

    model = p.add_argument_group("network")
    model.add_argument(
        "--hidden",
        type=_csv_ints,
        default=[100, 100],
        metavar="N,N,...",
        help="hidden layer sizes (default: 100,100)",
    )
    model.add_argument("--activation", default="relu", help="relu, sigmoid or tanh")
    model.add_argument(
        "--weight-init",
        type=_weight_init,
        default="he",
        help="he, xavier, or a standard deviation such as 0.01",
    )
    model.add_argument("--batchnorm", action="store_true", help="batch normalization")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout ratio (0: off)")
    model.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay λ")
    model.add_argument("--dtype", default="float32", help="float32 or float64")

    fit = p.add_argument_group("training")
    fit.add_argument(
        "--optimizer", default="adam", help="sgd, momentum, nesterov, adagrad, rmsprop or adam"
    )
    fit.add_argument("--lr", type=float, default=0.001, help="learning rate")
    fit.add_argument("--momentum", type=float, default=0.9, help="for momentum and nesterov")
    fit.add_argument("--epochs", type=int, default=20)
    fit.add_argument("--batch-size", type=int, default=100)
    fit.add_argument(
        "--seed", type=int, default=0, help="drives split, initialisation, dropout and shuffling"
    )
    fit.add_argument("--save", metavar="FILE.npz", help="save the trained network")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from trainer import save_network, train

    from ._config import DataConfig, TrainConfig
    from ._data import load_splits
    from ._seeds import INIT_STREAM, SHUFFLE_STREAM, derive_seed

    data = DataConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        path=args.path,
        n_samples=args.n_samples,
        val_fraction=args.val_fraction,
    )
    config = TrainConfig(
        hidden_size_list=tuple(args.hidden),
        activation=args.activation,
        weight_init_std=args.weight_init,
        use_batchnorm=args.batchnorm,
        dropout_ratio=args.dropout,
        weight_decay_lambda=args.weight_decay,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        epochs=args.epochs,
        batch_size=args.batch_size,
        dtype=args.dtype,
    )
    splits = load_splits(data, seed=args.seed, download=args.download)
    network = config.build_network(
        splits.x_train.shape[1], splits.n_classes, seed=derive_seed(args.seed, INIT_STREAM)
    )
    print(
        f"{data.dataset}: {len(splits.x_train)} training and {len(splits.x_val)} validation "
        f"samples of {splits.x_train.shape[1]} features, {splits.n_classes} classes"
    )
    print(f"network: {config.describe()}")
    started = time.perf_counter()

    def report(epoch: int, metrics) -> None:
        print(
            f"epoch {epoch:3d}/{config.epochs}  "
            f"train loss {metrics.train_loss:.4f} acc {metrics.train_acc:.4f}  "
            f"val loss {metrics.val_loss:.4f} acc {metrics.val_acc:.4f}  "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )

    history = train(
        network,
        config.build_optimizer(),
        splits.x_train,
        splits.t_train,
        splits.x_val,
        splits.t_val,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=derive_seed(args.seed, SHUFFLE_STREAM),
        on_epoch_end=report,
    )
    best = max(history, key=lambda m: m.val_acc)
    print(f"best validation accuracy {best.val_acc:.4f} at epoch {best.epoch}")
    if args.save:
        path = save_network(network, args.save)
        print(f"saved the network to {path}")
    return EXIT_OK


def _add_download_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "download",
        help="download an IDX dataset (checksums verified)",
        description="Fetch the official IDX files of a dataset into its data directory, "
        "verifying each file's MD5. Files already present and verified are kept.",
    )
    p.add_argument("dataset", help="mnist, fashion-mnist or kmnist")
    p.add_argument(
        "--data-dir",
        help="target directory (default: $HPO_DATA_DIR/<dataset> or ~/.cache/hpo/<dataset>)",
    )
    p.add_argument("--base-url", help="a mirror to download from instead of the default")
    p.add_argument(
        "--test-only", action="store_true", help="only the t10k (test) pair, 10,000 images"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per connection")
    p.set_defaults(handler=_cmd_download)


def _cmd_download(args: argparse.Namespace) -> int:
    from trainer.data import download_dataset

    from ._data import default_data_dir

    target = args.data_dir or default_data_dir(args.dataset)
    files = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] if args.test_only else None
    path = download_dataset(
        args.dataset, target, base_url=args.base_url, files=files, timeout=args.timeout
    )
    print(f"{args.dataset}: files verified in {path}")
    return EXIT_OK


def _storage_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        metavar="URL",
        help="database URL (default: $HPO_STORAGE, else sqlite:///hpo.db)",
    )


def _add_run_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "run",
        help="run (or resume) the study a study file describes",
        description="Run the study described by STUDY.toml until it has n_trials finished "
        "trials, counted across every run and worker. Run the same command again to resume "
        "after an interruption; run it on other machines against the same storage to add "
        "workers. Flags override the file.",
    )
    p.add_argument("study_file", metavar="STUDY.toml")
    _storage_flag(p)
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
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_run)


def _overrides(args: argparse.Namespace) -> list[str]:
    """The override flags of `hpo run`, to hand to its worker processes."""
    flags = []
    for name in ("study_name", "sampler", "pruner", "n_trials", "seed", "timeout"):
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def _interrupt_once(signum: int, frame: object) -> None:
    """First Ctrl-C: stop (the running trial is marked failed); later ones are ignored, so
    that nothing interrupts the write that marks it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _cmd_run(args: argparse.Namespace) -> int:
    from ._errors import ConfigError
    from ._report import best_lines
    from ._run import run_in_process, run_worker_processes
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
    signal.signal(signal.SIGINT, _interrupt_once)
    new = prepare_study(settings, spec)
    name, n_trials = spec.study.name, spec.study.n_trials
    if args.worker:
        return _exit_status(run_in_process(spec, settings), args)

    print(
        f"{'created' if new else 'resuming'} study {name!r} in {settings.redacted()}: "
        f"{n_trials} trials, {spec.sampler.name} sampler, {spec.pruner.name} pruner, "
        f"{args.workers} worker{'s' if args.workers > 1 else ''}"
    )
    print(f"network: {spec.base.describe()}")
    for param in spec.space.params:
        print(f"  search {param.describe()}")
    bar = _progress_bar(n_trials, enabled=not args.no_progress)
    started = time.perf_counter()
    try:
        if args.workers == 1:
            outcome = run_in_process(spec, settings, progress=bar)
        else:
            child = ["run", str(args.study_file), *_overrides(args), "--worker"]
            outcome = run_worker_processes(spec, settings, child, args.workers, progress=bar)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    study = load_existing_study(settings, name)
    lines = best_lines(study, spec.study.metric, n=5)
    if lines:
        print("\n".join(lines))
    print(f"{name}: {outcome.finished}/{n_trials} trials finished ({elapsed:.0f} s this run)")
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


def _add_status_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "status",
        help="trial counts and best results of the studies in a storage",
        description="One line per study (or one study and its best trials): trials by state, "
        "best value and parameters.",
    )
    p.add_argument("name", nargs="?", help="one study (default: all)")
    _storage_flag(p)
    p.set_defaults(handler=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    import optuna

    from ._report import best_lines, status_line, study_status
    from ._storage import open_storage, resolve_storage
    from ._studies import FINGERPRINT_ATTR, load_existing_study

    settings = resolve_storage(args.storage)
    if args.name:
        study = load_existing_study(settings, args.name)
        print(status_line(study_status(study)))
        metric = study.user_attrs.get(FINGERPRINT_ATTR, {}).get("metric", "value")
        for line in best_lines(study, metric, n=5):
            print(f"  {line}")
        return EXIT_OK
    storage = open_storage(settings, heartbeat=False)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    if not summaries:
        print(f"no studies in {settings.redacted()}")
    for summary in sorted(summaries, key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        print(status_line(study_status(study)))
    return EXIT_OK


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export",
        help="one row per trial as CSV or JSON",
        description="Every trial of a study: number, state, value, parameters, epochs "
        "trained, duration, seed.",
    )
    p.add_argument("name")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", "-o", metavar="FILE", help="default: standard output")
    _storage_flag(p)
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    import csv
    import io
    import json

    from ._report import export_rows
    from ._storage import resolve_storage
    from ._studies import load_existing_study

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


def _add_replay_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "replay",
        help="retrain one recorded trial and compare",
        description="Train a recorded trial's configuration again with its seed and print "
        "the recorded and the reproduced validation metrics side by side.",
    )
    p.add_argument("name")
    p.add_argument("trial", type=int, help="trial number")
    _storage_flag(p)
    p.set_defaults(handler=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    from ._data import load_splits
    from ._errors import ConfigError
    from ._objective import replay_trial
    from ._report import fmt
    from ._storage import resolve_storage
    from ._studies import load_existing_study, stored_spec

    study = load_existing_study(resolve_storage(args.storage), args.name)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(args.trial)
    if trial is None:
        raise ConfigError(
            f"study {args.name!r} has no trial {args.trial} "
            f"(it has {len(trials)} trials, numbered from 0)"
        )
    recorded = trial.user_attrs.get("history")
    seed = trial.user_attrs.get("seed")
    if not recorded or seed is None:
        raise ConfigError(
            f"trial {args.trial} of {args.name!r} is {trial.state.name} and has "
            "no recorded history to compare with"
        )
    spec = stored_spec(study)
    metric = spec.study.metric
    splits = load_splits(spec.data, seed=spec.study.seed)
    params = ", ".join(f"{k}={fmt(v)}" for k, v in trial.params.items())
    print(f"trial {trial.number} of {args.name!r} ({trial.state.name}, seed {seed}): {params}")
    reproduced = replay_trial(spec, splits, dict(trial.params), int(seed))
    epochs = len(recorded[metric])
    same = reproduced[metric][:epochs] == recorded[metric]
    print(f"  recorded   {metric} {recorded[metric][-1]:.6f} at epoch {epochs}")
    print(f"  reproduced {metric} {reproduced[metric][epochs - 1]:.6f} at epoch {epochs}")
    print("  identical at every recorded epoch" if same else "  DIFFERENT")
    return EXIT_OK if same else EXIT_FAILURE


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
    _add_run_parser(commands)
    _add_status_parser(commands)
    _add_export_parser(commands)
    _add_replay_parser(commands)
    _add_train_parser(commands)
    _add_download_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if "numpy" not in sys.modules:  # only before NumPy loads does it count
        _blas.single_blas_thread()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(level)
    from trainer import TrainingDiverged
    from trainer.data import DatasetError

    from ._errors import ConfigError

    try:
        return args.handler(args)
    except (ConfigError, DatasetError) as error:
        print(f"hpo {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as error:
        print(f"hpo {args.command}: {error}; try a smaller learning rate", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"hpo {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
