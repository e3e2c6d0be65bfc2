"""Training throughput of the NumPy trainer, against this machine's matmul peak and PyTorch.

    python benchmarks/trainer_speed.py [--repeats 7] [--seconds 0.6] [--mnist-dir DIR]

For three networks of chapter 6 it times the training step (batch gather, forward, backward,
weight decay, optimizer update: `trainer._training.train_epoch`, the loop `train` runs) and
prints samples per second (median of the repeats), achieved GFLOP/s counted from the matrix
products, that as a percentage of the float32 matrix-multiply throughput measured in the same
run, and, when PyTorch is importable, our speed as a multiple of PyTorch's on the identical
network. Ours and PyTorch's repeats alternate, so both see the same machine load.

Everything runs with one BLAS thread (and one PyTorch thread): the service runs one
single-threaded worker per core. The figures that count are those of the environment as
configured. When the environment pins OpenBLAS's kernels (`OPENBLAS_CORETYPE`; this
development machine pins Haswell, AVX2), a second process measures again with the pin removed,
so that OpenBLAS picks kernels for the CPU itself, and both are printed, labelled. Each
percentage is of the matrix-multiply throughput measured in the same process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Setting:
    label: str
    hidden: list[int]
    batch_size: int
    optimizer: str
    lr: float
    use_batchnorm: bool = False
    dropout_ratio: float = 0.0
    weight_decay_lambda: float = 1e-6
    target_vs_torch: float = 2.0
    target_of_peak: float = 0.40


SETTINGS = [
    Setting("book 6.5: 784-[100]x6-10, SGD, batch 100", [100] * 6, 100, "sgd", 0.01),
    Setting(
        "784-[100]x4-10, batchnorm, dropout 0.15, Adam, batch 100",
        [100] * 4,
        100,
        "adam",
        0.001,
        use_batchnorm=True,
        dropout_ratio=0.15,
    ),
    Setting(
        "784-[512]x3-10, Adam, batch 256",
        [512] * 3,
        256,
        "adam",
        0.001,
        target_vs_torch=1.2,
        target_of_peak=0.60,
    ),
]


def load_images(mnist_dir: Path | None) -> tuple[Any, Any, str]:
    """The shared MNIST test images when present (real data), else random images of that shape."""
    import numpy as np

    if mnist_dir is not None and (mnist_dir / "t10k-images-idx3-ubyte.gz").exists():
        from trainer.data import load_dataset

        data = load_dataset("mnist", data_dir=mnist_dir)
        return data.x[:5000], data.y[:5000], f"MNIST from {mnist_dir}"
    rng = np.random.default_rng(0)
    return (
        rng.random((5000, 784), dtype=np.float32),
        rng.integers(0, 10, 5000),
        "random 784-pixel images (no MNIST directory found)",
    )


def flops_per_sample(hidden: list[int]) -> int:
    """Matrix-product FLOPs per training sample: forward, weight gradient, input gradient.

    The first layer needs no input gradient, so it does two products, the others three.
    """
    sizes = [784, *hidden, 10]
    total = 0
    for i in range(1, len(sizes)):
        products = 2 if i == 1 else 3
        total += products * 2 * sizes[i - 1] * sizes[i]
    return total


def matmul_peak_gflops(seconds: float) -> float:
    """Single-threaded float32 GEMM throughput on large square matrices (the BLAS's peak)."""
    import numpy as np

    n = 1024
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    rates = []
    for _ in range(5):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            np.matmul(a, b, out=c)
            reps += 1
        rates.append(2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return max(rates)


class NumpyRunner:
    def __init__(self, s: Setting, x: Any, t: Any) -> None:
        import numpy as np

        from trainer import MultiLayerNet, make_optimizer

        self.np = np
        self.net = MultiLayerNet(
            784,
            s.hidden,
            10,
            use_batchnorm=s.use_batchnorm,
            dropout_ratio=s.dropout_ratio,
            weight_decay_lambda=s.weight_decay_lambda,
            seed=0,
        )
        self.opt = make_optimizer(s.optimizer, lr=s.lr)
        self.x, self.t, self.batch_size = x, t.astype(np.intp), s.batch_size
        self.rng = np.random.default_rng(0)

    def epoch(self) -> int:
        from trainer._training import train_epoch

        order = self.rng.permutation(len(self.x))
        train_epoch(self.net, self.opt, self.x, self.t, order, self.batch_size)
        return len(order)


class TorchRunner:
    """The identical network in PyTorch, trained the way its tutorials do."""

    def __init__(self, s: Setting, x: Any, t: Any) -> None:
        import numpy as np
        import torch
        from torch import nn

        torch.manual_seed(0)
        layers: list[nn.Module] = []
        sizes = [784, *s.hidden]
        for n_in, n_out in itertools.pairwise(sizes):
            layers.append(nn.Linear(n_in, n_out))
            if s.use_batchnorm:
                layers.append(nn.BatchNorm1d(n_out, eps=1e-6, momentum=0.1))
            layers.append(nn.ReLU())
            if s.dropout_ratio:
                layers.append(nn.Dropout(s.dropout_ratio))
        layers.append(nn.Linear(sizes[-1], 10))
        self.model = nn.Sequential(*layers).train()
        optimizer = torch.optim.SGD if s.optimizer == "sgd" else torch.optim.Adam
        # Weight decay on weight matrices only, as in ours.
        decayed = [p for p in self.model.parameters() if p.ndim == 2]
        others = [p for p in self.model.parameters() if p.ndim != 2]
        self.opt = optimizer(
            [{"params": decayed, "weight_decay": s.weight_decay_lambda}, {"params": others}],
            lr=s.lr,
        )
        self.x = torch.from_numpy(x.copy())
        self.t = torch.from_numpy(t.astype(np.int64))
        self.batch_size = s.batch_size
        self.generator = torch.Generator().manual_seed(0)
        self.torch = torch

    def epoch(self) -> int:
        torch = self.torch
        order = torch.randperm(len(self.x), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            self.opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self.model(self.x[batch]), self.t[batch])
            loss.backward()
            self.opt.step()
        return len(order)


def samples_per_second(runner: NumpyRunner | TorchRunner, seconds: float) -> float:
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        samples += runner.epoch()
    return samples / (time.perf_counter() - start)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure for the BLAS kernels this process loaded, as a dict."""
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    try:
        import torch

        torch.set_num_threads(1)
        torch_version = None if args.no_torch else torch.__version__
    except ImportError:
        torch_version = None

    with threadpool_limits(limits=1):
        x, t, source = load_images(args.mnist_dir)
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        result: dict[str, Any] = {
            "data": source,
            "numpy": np.__version__,
            "torch": torch_version,
            "blas": f"{blas[0]['internal_api']} {blas[0]['version']} "
            f"({blas[0].get('architecture', '?')} kernels)"
            if blas
            else "unknown",
            "peak_gflops": matmul_peak_gflops(args.seconds),
            "settings": [],
        }
        for setting in SETTINGS:
            ours_runner = NumpyRunner(setting, x, t)
            torch_runner = TorchRunner(setting, x, t) if torch_version else None
            ours_runner.epoch()  # warm-up: buffers, caches
            if torch_runner:
                torch_runner.epoch()
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(samples_per_second(ours_runner, args.seconds))
                if torch_runner:
                    theirs.append(samples_per_second(torch_runner, args.seconds))
            rate = statistics.median(ours)
            result["settings"].append(
                {
                    "label": setting.label,
                    "samples_per_s": rate,
                    "gflops": rate * flops_per_sample(setting.hidden) / 1e9,
                    "torch_samples_per_s": statistics.median(theirs) if theirs else None,
                }
            )
    return result


def run_child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if mode == "unpinned":
        env.pop("OPENBLAS_CORETYPE", None)
    env["OPENBLAS_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        __file__,
        "--child",
        "--repeats",
        str(args.repeats),
        "--seconds",
        str(args.seconds),
        "--mnist-dir",
        str(args.mnist_dir),
    ]
    if args.no_torch:
        command.append("--no-torch")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.6, help="length of one repeat")
    parser.add_argument("--mnist-dir", type=Path, default=REPO.parent / "shared/data/mnist")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return 0

    pinned = os.environ.get("OPENBLAS_CORETYPE")
    modes = {"as configured": "configured"}
    if pinned:
        modes["OpenBLAS's own pick"] = "unpinned"
    results = {label: run_child(mode, args) for label, mode in modes.items()}
    first = results["as configured"]
    print(f"data: {first['data']}; numpy {first['numpy']}; torch {first['torch'] or 'absent'}")
    print(f"1 BLAS thread, 1 torch thread; median of {args.repeats} repeats of {args.seconds} s")
    if pinned:
        print(f"this environment sets OPENBLAS_CORETYPE={pinned}; the second rows unset it")
    for label, r in results.items():
        print(f"matmul throughput, {label:20s} {r['peak_gflops']:6.1f} GFLOP/s  ({r['blas']})")
    print()
    for i, setting in enumerate(SETTINGS):
        print(setting.label)
        for label, r in results.items():
            row = r["settings"][i]
            share = row["gflops"] / r["peak_gflops"]
            line = (
                f"  {label:20s} {row['samples_per_s']:8.0f} samples/s "
                f"{row['gflops']:6.1f} GFLOP/s = {share:5.1%} of matmul throughput "
                f"(target {setting.target_of_peak:.0%}: {verdict(share, setting.target_of_peak)})"
            )
            if row["torch_samples_per_s"]:
                ratio = row["samples_per_s"] / row["torch_samples_per_s"]
                line += (
                    f"\n  {'':20s} PyTorch {row['torch_samples_per_s']:8.0f} samples/s: "
                    f"ours is {ratio:.2f}x (target {setting.target_vs_torch}x: "
                    f"{verdict(ratio, setting.target_vs_torch)})"
                )
            print(line)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
