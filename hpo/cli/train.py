"""`hpo train` and `hpo download`: one training run, and fetching a dataset."""

from __future__ import annotations

import argparse
import time
from typing import Any

from hpo.cli.common import (
    EXIT_OK,
    Commands,
    check_range,
    progress_bar,
)


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


def _add_train_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "train",
        help="train one network and print a line per epoch",
        description="Train the chapter's network once on a training split, reporting the "
        "validation split after every epoch. The test split is never touched.",
    )
    _add_data_flags(p.add_argument_group("data"))
    _add_network_flags(p.add_argument_group("network"))
    _add_training_flags(p.add_argument_group("training"))
    p.set_defaults(handler=_cmd_train)


def _add_data_flags(data: argparse._ArgumentGroup) -> None:
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


def _add_network_flags(model: argparse._ArgumentGroup) -> None:
    # Each flag is spelled as its study-file key (hidden_size_list: --hidden-size-list); the
    # short spellings of earlier versions still work.
    model.add_argument(
        "--hidden-size-list",
        "--hidden",
        dest="hidden",
        type=_csv_ints,
        default=[100, 100],
        metavar="N,N,...",
        help="hidden layer sizes (default: 100,100)",
    )
    model.add_argument("--activation", default="relu", help="relu, sigmoid or tanh")
    model.add_argument(
        "--weight-init-std",
        "--weight-init",
        dest="weight_init",
        type=_weight_init,
        default="he",
        help="he, xavier, or a standard deviation such as 0.01",
    )
    model.add_argument(
        "--use-batchnorm", "--batchnorm", dest="batchnorm", action="store_true",
        help="batch normalization",
    )  # fmt: skip
    model.add_argument(
        "--dropout-ratio", "--dropout", dest="dropout", type=float, default=0.0,
        help="dropout ratio (0: off)",
    )  # fmt: skip
    model.add_argument(
        "--weight-decay-lambda", "--weight-decay", dest="weight_decay", type=float,
        default=0.0, help="L2 weight decay λ",
    )  # fmt: skip
    model.add_argument("--dtype", default="float32", help="float32 or float64")


def _add_training_flags(fit: argparse._ArgumentGroup) -> None:
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


def _cmd_train(args: argparse.Namespace) -> int:
    from hpo.engine.objective import train_trial
    from hpo.spec.config import DataConfig, TrainConfig
    from hpo.spec.data import load_splits
    from hpo.spec.limits import MAX_SEED
    from trainer import save_network

    check_range(args.seed, "--seed", 0, MAX_SEED)
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

    # As a trial trains: a trial whose seed is --seed gives the same network, epoch by epoch.
    network, history = train_trial(splits, config, args.seed, report)
    best = max(history, key=lambda m: m.val_acc)
    print(f"best validation accuracy {best.val_acc:.4f} at epoch {best.epoch}")
    if args.save:
        path = save_network(network, args.save)
        print(f"saved the network to {path}")
    return EXIT_OK


def _add_download_parser(commands: Commands) -> None:
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
    from hpo.spec.data import default_data_dir
    from trainer.data import download_dataset

    check_range(args.timeout, "--timeout", 0.1, 3600)
    target = args.data_dir or default_data_dir(args.dataset)
    files = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] if args.test_only else None
    bars: dict[str, Any] = {}

    def show(filename: str, done: int, total: int | None) -> None:
        if filename not in bars:
            bars[filename] = progress_bar(total, filename, unit="B", unit_scale=True)
        bars[filename].update(done - bars[filename].n)

    try:
        path = download_dataset(
            args.dataset, target, base_url=args.base_url, files=files, timeout=args.timeout,
            on_progress=show,
        )  # fmt: skip
    finally:
        for bar in bars.values():
            bar.close()
    print(f"{args.dataset}: files verified in {path}")
    return EXIT_OK


def add_parsers(commands: Commands) -> None:
    _add_train_parser(commands)
    _add_download_parser(commands)
