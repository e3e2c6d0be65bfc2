"""Trials per second with 1, 2, 4 and 8 workers on one study, on PostgreSQL and on SQLite.

    python benchmarks/workers_scaling.py [--workers 1,2,4,8] [--trials 48] [--postgres URL]
                                         [--mnist-dir DIR]

Each setting is a fresh study of the book's 6.5 network (MNIST 500, 784-[100]x6-10, SGD,
50 epochs; `studies/book-6.5.toml`) run by `hpo run --workers N`, exactly as a user runs it:
N processes with one BLAS thread each, claiming trials from the shared storage. The rate is
the steady state, read from the trials' completion times between the N-th and the
(total - N)-th completion, so that start-up and the last trials (when workers run out of
work) do not count. Also printed: trials that failed, workers that exited with an error, and,
on PostgreSQL, the peak number of connections to the study's database (pg_stat_activity,
sampled every 0.1 s).

Settings run one after the other, so load from elsewhere on a shared machine moves all of
them; ratios within one run are the figure to read. On a 2-core machine the ratio stops
growing at 2 workers: past that, workers share cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

import hpo

REPO = Path(__file__).resolve().parents[1]
STUDY_FILE = REPO / "studies" / "book-6.5.toml"


class PeakConnections(threading.Thread):
    def __init__(self, admin_url: str, database: str) -> None:
        super().__init__(daemon=True)
        self.engine = sqlalchemy.create_engine(admin_url, poolclass=sqlalchemy.pool.NullPool)
        self.database, self.peak = database, 0
        self.done = threading.Event()

    def run(self) -> None:
        query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db")
        with self.engine.connect() as connection:
            while not self.done.wait(0.1):
                self.peak = max(
                    self.peak, connection.execute(query, {"db": self.database}).scalar()
                )
                connection.commit()


def steady_rate(study: optuna.Study, workers: int) -> float:
    ends = sorted(
        t.datetime_complete.timestamp()
        for t in study.get_trials(deepcopy=False)
        if t.state.name in ("COMPLETE", "PRUNED")
    )
    first, last = workers - 1, len(ends) - workers
    if last <= first:
        raise SystemExit(f"too few trials ({len(ends)}) for {workers} workers; raise --trials")
    return (last - first) / (ends[last] - ends[first])


def run_setting(url: str, workers: int, trials: int, env: dict[str, str]) -> dict:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "run", str(STUDY_FILE), "--workers", str(workers),
         "--study-name", "scaling", "--n-trials", str(trials), "--storage", url,
         "--no-mlflow", "--no-progress"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    study, _spec = hpo.open_study("scaling", storage=url)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    return {
        "rate": steady_rate(study, workers),
        "wall": wall,
        "failed": states.count("FAIL"),
        "exit": result.returncode,
        "errors": sum(
            "Traceback" in line or "ERROR" in line for line in result.stderr.splitlines()
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "HPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--mnist-dir", type=Path, default=REPO.parent / "shared/data/mnist")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    env = os.environ | {"HPO_DATA_DIR": str(args.mnist_dir.parent)}
    admin = make_url(args.postgres).set(database="postgres")
    admin_engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")

    print(f"book 6.5 trials (MNIST 500, 50 epochs), {args.trials} per setting, {os.cpu_count()} "
          "cores; steady-state trials/s")  # fmt: skip
    print(f"{'storage':11s} {'workers':>7s} {'trials/s':>9s} {'vs 1':>6s} {'wall s':>7s} "
          f"{'failed':>6s} {'errors':>6s} {'peak conn':>9s}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("PostgreSQL", "SQLite"):
            base = None
            for workers in counts:
                peak = None
                if backend == "SQLite":
                    url = f"sqlite:///{tmp}/scaling-{workers}.db"
                    outcome = run_setting(url, workers, args.trials, env)
                else:
                    database = f"hpo_scaling_{uuid.uuid4().hex[:8]}"
                    with admin_engine.connect() as connection:
                        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
                    url = make_url(args.postgres).set(database=database).render_as_string(False)
                    counter = PeakConnections(admin, database)
                    counter.start()
                    try:
                        outcome = run_setting(url, workers, args.trials, env)
                    finally:
                        counter.done.set()
                        counter.join()
                        counter.engine.dispose()
                        with admin_engine.connect() as connection:
                            connection.execute(
                                sqlalchemy.text(f'DROP DATABASE "{database}" WITH (FORCE)')
                            )
                    peak = counter.peak
                base = base or outcome["rate"]
                print(
                    f"{backend:11s} {workers:7d} {outcome['rate']:9.2f} "
                    f"{outcome['rate'] / base:5.2f}x {outcome['wall']:7.1f} "
                    f"{outcome['failed']:6d} {outcome['errors'] + (outcome['exit'] != 0):6d} "
                    f"{peak if peak is not None else '-':>9}"
                )
    admin_engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
