"""What mirroring a study to MLflow costs: end to end as users run it, and per trial.

    python benchmarks/tracking_overhead.py [--repeats 3] [--workers N] [--trials 24]
                                           [--skip-per-trial] [--mnist-dir DIR]

1. End to end (the case users run, and the target): `hpo run studies/book-6.5.toml --workers
   N` (N = the machine's cores by default) in a fresh directory, once with MLflow's default
   local store (`./mlflow.db`, created by the run: store creation included) and once with
   `--no-mlflow`, taking turns `--repeats` times, so that both meet the same machine load.
   Overhead = median wall clock with tracking over median without, minus one; each pair's own
   ratio is printed too. Target: at most +10%.
2. Per trial: the book's 6.5 trial through the real worker path in this process, untracked,
   tracked to a local `sqlite:///` store, and tracked to a local `mlflow server` this script
   starts on 127.0.0.1, in turns of `--block` trials. After each block the mirror is left to
   send what it holds, untimed. Overhead = median trial time with tracking minus without.
"""

from __future__ import annotations

import argparse
import os
import resource
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

import hpo

# Below the public API on purpose: the per-trial part times one worker's trials with and
# without a mirror, in turns, where `hpo.run_study` runs a whole study with one setting.
from hpo.engine.objective import Objective
from hpo.engine.worker import Worker
from hpo.spec.data import load_splits
from hpo.storage.database import resolve_storage
from hpo.storage.studies import join_study, prepare_study
from hpo.tracking.mirror import Mirror, TrialMirror
from hpo.tracking.runs import TrackingSettings

REPO = Path(__file__).resolve().parents[1]
HPO = [sys.executable, "-m", "hpo.cli"]


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


# -- 1. end to end ------------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(workers: int, data_root: Path, *, tracking: bool) -> tuple[float, float]:
    """`hpo run studies/book-6.5.toml --workers N` in a fresh directory: its wall clock, and
    the CPU time of all its processes (workers and mirror included: each is waited for)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [*HPO, "run", str(REPO / "studies/book-6.5.toml"), "--workers", str(workers),
                   "--no-progress", *([] if tracking else ["--no-mlflow"])]  # fmt: skip
        env = os.environ | {"HPO_DATA_DIR": str(data_root)}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("HPO_STORAGE", None)
        began, cpu = time.perf_counter(), _children_cpu()
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        elapsed, cpu = time.perf_counter() - began, _children_cpu() - cpu
        if done.returncode != 0 or "100/100 trials finished" not in done.stdout:
            raise RuntimeError(f"hpo run failed ({done.returncode}): {done.stderr[-2000:]}")
        if tracking and "100 already complete" not in done.stdout:
            raise RuntimeError(f"the mirror is incomplete: {done.stdout[-500:]}")
        if "WARNING" in done.stderr:
            raise RuntimeError(f"hpo run warned: {done.stderr[-2000:]}")
        return elapsed, cpu


def end_to_end(workers: int, repeats: int, data_root: Path) -> None:
    pairs: list[tuple[float, float]] = []
    cpus: list[tuple[float, float]] = []
    for i in range(repeats):
        order = (True, False) if i % 2 == 0 else (False, True)
        times = {tracking: run_once(workers, data_root, tracking=tracking) for tracking in order}
        (on_wall, on_cpu), (off_wall, off_cpu) = times[True], times[False]
        pairs.append((on_wall, off_wall))
        cpus.append((on_cpu, off_cpu))
        print(
            f"  repeat {i + 1}: MLflow {on_wall:5.1f} s, --no-mlflow {off_wall:5.1f} s "
            f"({on_wall / off_wall - 1:+.1%}); CPU {on_cpu:5.1f} s vs {off_cpu:5.1f} s",
            flush=True,
        )
    on = statistics.median(p[0] for p in pairs)
    off = statistics.median(p[1] for p in pairs)
    paired = statistics.median(p[0] / p[1] - 1 for p in pairs)
    cpu_on = statistics.median(c[0] for c in cpus)
    cpu_off = statistics.median(c[1] for c in cpus)
    print(
        f"  CPU time, all processes: MLflow {cpu_on:.1f} s, --no-mlflow {cpu_off:.1f} s "
        f"({cpu_on - cpu_off:+.1f} s); median of the pairs' own ratios {paired:+.1%}"
    )
    overhead = on / off - 1
    verdict = "met" if overhead <= 0.10 else "MISSED"
    print(
        f"  median: MLflow {on:.1f} s, --no-mlflow {off:.1f} s: {overhead:+.1%} "
        f"(target <= +10%: {verdict})"
    )


# -- 2. per trial -------------------------------------------------------------------------------


def per_trial(trials: int, block: int, data_root: Path) -> None:
    spec = hpo.load_study(
        REPO / "studies/book-6.5.toml", n_trials=trials, data_dir=data_root / "mnist"
    )
    splits = load_splits(spec.data, seed=spec.study.seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.chdir(tmp)  # a local MLflow store keeps its artifacts in ./mlruns
        server, server_uri = start_server(tmp)
        mirrors: list[Mirror] = []
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
                tracker = None
                if tracking.enabled:
                    mirrors.append(Mirror(tracking, settings, spec))
                    mirrors[-1].study_ready()
                    tracker = TrialMirror(mirrors[-1].worker_end(0))
                    assert tracker.wait_ready(120), "the mirror did not start"
                observers = (tracker,) if tracker else ()
                workers[label] = Worker(
                    joined, settings, Objective(spec, splits, observers=observers), n_trials=0,
                    on_trial_end=tracker.trial_finished if tracker else None,
                )  # fmt: skip
                trackers[label], times[label] = tracker, []
            for start in range(0, trials, block):
                for label, worker in workers.items():
                    for n in range(start + 1, min(start + block, trials) + 1):
                        worker.n_trials = n
                        began = time.perf_counter()
                        worker.run()
                        times[label].append(time.perf_counter() - began)
                    if trackers[label]:
                        trackers[label].wait_idle(60)
            summaries = [mirror.close(interrupted=False) for mirror in mirrors]
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    base = statistics.median(times["no tracking"])
    print(f"  no tracking        {base * 1000:7.1f} ms per trial (median)")
    for label, summary in zip(("local sqlite:///", "local server"), summaries, strict=True):
        median = statistics.median(times[label])
        print(
            f"  {label:18s} {median * 1000:7.1f} ms: {(median - base) / base:+6.1%} of trial "
            f"time; closing sync: {summary.split('): ')[-1] if summary else 'FAILED'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end pairs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--trials", type=int, default=24, help="per-trial: trials per way")
    parser.add_argument("--block", type=int, default=4, help="per-trial: trials per turn")
    parser.add_argument("--skip-per-trial", action="store_true")
    parser.add_argument("--mnist-dir", type=Path, default=REPO.parent / "shared/data/mnist")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data_root = args.mnist_dir.resolve().parent
    print(
        f"1. end to end: hpo run studies/book-6.5.toml --workers {args.workers}, fresh "
        f"directory, default MLflow store vs --no-mlflow, {args.repeats} pairs"
    )
    end_to_end(args.workers, args.repeats, data_root)
    if not args.skip_per_trial:
        print(f"2. per trial: {args.trials} book-6.5 trials per way, turns of {args.block}")
        per_trial(args.trials, args.block, data_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
