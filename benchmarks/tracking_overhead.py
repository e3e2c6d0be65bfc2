"""What mirroring a study to MLflow costs per trial: none, a local store, a local server.

    python benchmarks/tracking_overhead.py [--trials 24] [--block 4] [--mnist-dir DIR]

Runs the book's 6.5 trial (MNIST 500, 784-[100]x6-10, SGD, 50 epochs, random search) through
the real worker path three ways: without tracking, tracked to a local `sqlite:///` MLflow
store, and tracked to a local `mlflow server` this script starts on 127.0.0.1 (on the same
2-core machine, as a developer would run it). Each way runs a block of trials, the three take
turns block by block (so they share the machine's load), and after each block the tracker is
left to send what it still holds, untimed: the timed trials include whatever the tracker's
background thread took from training, nothing more. Overhead = median trial time with
tracking minus without, as a percentage of the time without.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import optuna

from hpo._data import load_splits
from hpo._objective import Objective
from hpo._run import start_tracker
from hpo._runner import Worker
from hpo._storage import resolve_storage
from hpo._studies import join_study, prepare_study
from hpo._studyfile import load_study_file
from hpo._tracking import TrackingSettings

REPO = Path(__file__).resolve().parents[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return process, uri
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("mlflow server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="per way of tracking")
    parser.add_argument("--block", type=int, default=4, help="trials per turn")
    parser.add_argument("--mnist-dir", type=Path, default=REPO.parent / "shared/data/mnist")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    spec = load_study_file(
        REPO / "studies/book-6.5.toml", environ={"HPO_DATA_DIR": str(args.mnist_dir.parent)}
    ).with_overrides(n_trials=args.trials)
    splits = load_splits(spec.data, seed=spec.study.seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.chdir(tmp)  # a local MLflow store keeps its artifacts in ./mlruns
        server, server_uri = start_server(tmp)
        try:
            ways = {
                "no tracking": TrackingSettings(enabled=False),
                "local sqlite:///": TrackingSettings(True, f"sqlite:///{tmp / 'mlflow.db'}", "b"),
                "local server": TrackingSettings(True, server_uri, "b"),
            }
            workers, trackers, times = {}, {}, {}
            for label, tracking in ways.items():
                settings = resolve_storage(f"sqlite:///{tmp / label.replace(' ', '_')}.db")
                prepare_study(settings, spec)
                joined = join_study(settings, spec, worker_index=0)
                tracker = start_tracker(joined, spec, settings, tracking)
                if tracker is not None:
                    assert tracker.wait_ready(), "the tracking process did not start"
                observers = (tracker,) if tracker else ()
                workers[label] = Worker(
                    joined, settings, Objective(spec, splits, observers=observers), n_trials=0,
                    on_trial_end=tracker.trial_finished if tracker else None,
                )  # fmt: skip
                trackers[label], times[label] = tracker, []
            for start in range(0, args.trials, args.block):
                for label, worker in workers.items():
                    for n in range(start + 1, min(start + args.block, args.trials) + 1):
                        worker.n_trials = n
                        began = time.perf_counter()
                        worker.run()
                        times[label].append(time.perf_counter() - began)
                    if trackers[label]:
                        trackers[label].wait_idle()
            missed = {label: t.close() for label, t in trackers.items() if t}
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    base = statistics.median(times["no tracking"])
    print(f"{args.trials} trials per way, blocks of {args.block}; book 6.5 on {args.mnist_dir}")
    print(f"  no tracking        {base * 1000:7.1f} ms per trial (median)")
    for label in ("local sqlite:///", "local server"):
        median = statistics.median(times[label])
        overhead = (median - base) / base
        target = "  (target <= 5%: " + ("met)" if overhead <= 0.05 else "MISSED)")
        print(
            f"  {label:18s} {median * 1000:7.1f} ms: {overhead:+6.1%} of trial time"
            f"{target if label == 'local server' else ''}; runs not mirrored: "
            f"{len(missed[label])}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
