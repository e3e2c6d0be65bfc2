"""What storing a study costs per trial: in-memory against SQLite and PostgreSQL, side by side.

    python benchmarks/storage_overhead.py [--trials 30] [--postgres URL] [--mnist-dir DIR]

Runs the book's 6.5 trial (MNIST 500, 784-[100]x6-10, SGD, 50 epochs, lr and weight decay
log-uniform) through the real worker path: trials claimed under the storage lock with an
exact budget, a heartbeat thread, per-epoch history kept as one user attribute, `tell`. The
in-memory baseline runs the same objective with the same seeded sampler in Optuna's
InMemoryStorage, so every storage trains the same trials. Each storage's worker loops over
its trials as in `hpo run`, and the storages take turns trial by trial, so they share the
machine's load.

Overhead is the time a trial spends outside training: its claim (lock, count, `ask`), its
writes (parameters and seed at the start, reports, `tell`), and the heartbeat and sweeper
threads' work while it trains, minus the same for the in-memory run, as a share of the
in-memory training time of the whole run. Training is timed inside the trainer (per-epoch
callbacks excluded: they hold the naive row's reports). Identical training varies by up to
20% from one trial to the next on a shared machine, far more than the overhead, so the whole
trial's wall clock (paired with the same trial in memory) is printed only as a cross-check,
with the paired change in training time itself, which would show a storage that slowed
training down (it should be about zero).

Two settings: the book's random search without pruning, and TPE with the median pruner as
`hpo run` prunes (decided on an in-memory mirror of the study, see `hpo.engine.pruning`); a third
row shows what Optuna's usual way costs instead: a report and a pruner call through the
storage at every epoch, each write its own transaction, through Optuna's public storage.
The first two settings also run with hpo's Optuna adapter off (`HPO_OPTUNA_ADAPTER=off`:
Optuna's public storage only, see `hpo.storage.optuna_adapter`), side by side with it on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

import hpo

# Below the public API on purpose: this times the worker's trial loop itself, trial by trial
# and storage against storage, where `hpo.run_study` runs a whole study.
from hpo.engine import worker as _runner
from hpo.engine.launch import build_objective, settle_heap
from hpo.engine.objective import Objective
from hpo.engine.worker import Worker
from hpo.spec.data import load_splits
from hpo.storage.database import resolve_storage
from hpo.storage.studies import join_study, prepare_study, sampler_seed

ADAPTER_OFF = ", adapter off"  # a storage label ending so runs Optuna's public storage only

REPO = Path(__file__).resolve().parents[1]


class EveryEpochObjective(Objective):
    """The naive objective: `trial.report` after every epoch (for comparison only)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.listeners = (self._report_every_epoch,)
        self.prune = False

    def _report_every_epoch(self, trial, epoch, metrics) -> None:
        trial.report(metrics.val_acc, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()


def time_storages(
    spec, splits, urls: dict[str, str], trials: int, naive: bool
) -> tuple[dict[str, list[float]], _Clock]:
    """Each storage's trial times, the storages taking turns trial by trial, and its clock.

    Every storage has one worker looping over its trials as `hpo run` does (one lock
    connection, one sweeper for the whole run), in a thread of its own; a turnstile lets one
    thread run at a time. A trial's time runs from its turn to the end of its `tell`, so it
    includes the claim (lock, count, ask) and the writes.
    """
    objective_cls = EveryEpochObjective if naive else Objective
    seed = sampler_seed(spec, 0)
    memory = optuna.create_study(
        direction=spec.study.direction,
        sampler=spec.sampler.build(seed=seed, space=spec.space),
        pruner=spec.pruner.build(epochs=spec.base.epochs),
    )
    labels = ["in-memory", *urls]
    turns = _Turnstile(labels, trials)
    clock = _Clock(labels)
    owners: dict[int, str] = {}  # id of a worker or its storage -> its label
    runs = {}
    memory_objective = clock.time_training(objective_cls(spec, splits), "in-memory")
    runs["in-memory"] = lambda: memory.optimize(
        memory_objective,
        n_trials=trials,
        callbacks=[lambda _s, _t: turns.trial_ended("in-memory")],
    )
    workers = {}
    for label, url in urls.items():
        settings = resolve_storage(url)
        prepare_study(settings, spec)
        adapter = not label.endswith(ADAPTER_OFF)
        joined = join_study(settings, spec, worker_index=0, adapter=adapter)
        if naive:  # and Optuna's own storage path: a transaction per write
            objective = EveryEpochObjective(spec, splits)
        else:  # exactly what `hpo run` builds
            objective = build_objective(joined, spec, splits)
        workers[label] = Worker(
            joined,
            settings,
            clock.time_training(objective, label),
            n_trials=trials,
            on_trial_end=lambda _t, label=label: turns.trial_ended(label),
        )
        runs[label] = workers[label].run
        owners[id(workers[label])] = owners[id(joined.storage)] = label
    settle_heap()  # as `hpo run` does before its trial loop
    threads = [threading.Thread(target=turns.run, args=(label, runs[label])) for label in labels]
    with clock.timing_background(owners):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    reference = [t.params for t in memory.trials]
    for label, worker in workers.items():
        stored = [t.params for t in worker.study.get_trials(deepcopy=False)]
        assert stored == reference, f"{label} trained other trials than in memory"
        worker.joined.storage.engine.dispose()
    assert all(len(turns.times[label]) == trials for label in labels), turns.times
    assert all(len(clock.training[label]) == trials for label in labels), clock.training
    return turns.times, clock


class _Clock:
    """Each participant's training time per trial, and its storage's work in threads."""

    def __init__(self, labels: list[str]) -> None:
        self.training: dict[str, list[float]] = {label: [] for label in labels}
        self.background: dict[str, float] = dict.fromkeys(labels, 0.0)

    def time_training(self, objective: Objective, label: str) -> Objective:
        """Times `objective`'s calls into the trainer, its per-epoch callbacks excluded."""
        train = objective._train

        def timed_train(config, seed, on_epoch_end):
            in_callbacks = 0.0

            def timed_callback(epoch, metrics):
                nonlocal in_callbacks
                started = time.perf_counter()
                try:
                    on_epoch_end(epoch, metrics)
                finally:
                    in_callbacks += time.perf_counter() - started

            started = time.perf_counter()
            try:
                return train(config, seed, timed_callback)
            finally:
                elapsed = time.perf_counter() - started - in_callbacks
                self.training[label].append(elapsed)

        objective._train = timed_train
        return objective

    @contextlib.contextmanager
    def timing_background(self, owners: dict[int, str]):
        """Adds the heartbeat's and the sweeper's ticks to the time of their storage."""
        originals = {cls: cls.tick for cls in (_runner._Heartbeat, _runner._Sweeper)}

        def timed(tick):
            def timed_tick(periodic) -> None:
                owner = getattr(periodic, "storage", None) or periodic.sweep.__self__
                started = time.perf_counter()
                try:
                    tick(periodic)
                finally:
                    self.background[owners[id(owner)]] += time.perf_counter() - started

            return timed_tick

        for cls, tick in originals.items():
            cls.tick = timed(tick)
        try:
            yield
        finally:
            for cls, tick in originals.items():
                cls.tick = tick

    def outside_training(self, label: str, trial_times: list[float]) -> float:
        """Seconds of the run spent outside training, background work included."""
        inside = self.training[label]
        return sum(trial_times) - sum(inside) + self.background[label]


def paired_overhead(stored: list[float], memory: list[float]) -> tuple[float, float]:
    """Median extra seconds and median extra share of the whole trial, trial by trial.

    Trial i trains the same parameters on every storage, one right after the other, so the
    pair shares the machine's load of the moment; with pruning the trial times are bimodal
    and a difference of medians would compare a pruned trial with a complete one.
    """
    extra = [s - m for s, m in zip(stored, memory, strict=True)]
    share = [s / m - 1 for s, m in zip(stored, memory, strict=True)]
    return statistics.median(extra), statistics.median(share)


class _Turnstile:
    """Lets the participants run one trial each in turn, and times each trial."""

    def __init__(self, labels: list[str], trials: int) -> None:
        self.labels, self.trials = labels, trials
        self.times: dict[str, list[float]] = {label: [] for label in labels}
        self._turn = threading.Condition()
        self._current = 0
        self._started = 0.0

    def run(self, label: str, loop) -> None:
        self._wait(label)
        loop()

    def _wait(self, label: str) -> None:
        with self._turn:
            self._turn.wait_for(lambda: self.labels[self._current] == label)
        self._started = time.perf_counter()

    def trial_ended(self, label: str) -> None:
        self.times[label].append(time.perf_counter() - self._started)
        with self._turn:
            self._current = (self._current + 1) % len(self.labels)
            self._turn.notify_all()
        if len(self.times[label]) < self.trials:
            self._wait(label)


@contextlib.contextmanager
def scratch_database(url: str):
    """An empty database on the same PostgreSQL server, dropped afterwards: the same study
    (same name, so the same trials) stored twice needs two databases."""
    server = make_url(url)
    name = f"hpo_overhead_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            connection.execute(sqlalchemy.text(drop))
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "HPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--mnist-dir", type=Path, default=REPO.parent / "shared/data/mnist")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    settings_list = [
        ("book 6.5: random search, no pruner", "book-6.5.toml", False),
        ("TPE + median pruner, decided in memory (hpo run)", "book-6.5-tpe.toml", False),
        (
            "TPE + median pruner, Optuna's way: report + should_prune every epoch, unbatched",
            "book-6.5-tpe.toml",
            True,
        ),
    ]
    print(f"{args.trials} trials per storage; book 6.5 network on {args.mnist_dir}")
    for label, file_name, naive in settings_list:
        run_id = f"{int(time.time() * 1000)}"
        spec = hpo.load_study(
            REPO / "studies" / file_name,
            study_name=f"overhead-{run_id}",
            n_trials=args.trials,
            data_dir=args.mnist_dir,
        )
        splits = load_splits(spec.data, seed=spec.study.seed)
        with tempfile.TemporaryDirectory() as tmp, scratch_database(args.postgres) as plain:
            urls = {"SQLite": f"sqlite:///{tmp}/overhead.db", "PostgreSQL": args.postgres}
            if naive:  # Optuna's own storage path, as the adapter off is
                urls = {f"{k}{ADAPTER_OFF}": v for k, v in urls.items()}
            else:
                urls |= {
                    f"SQLite{ADAPTER_OFF}": f"sqlite:///{tmp}/overhead-plain.db",
                    f"PostgreSQL{ADAPTER_OFF}": plain,
                }
            times, clock = time_storages(spec, splits, urls, args.trials, naive)
        training = sum(clock.training["in-memory"])
        baseline = clock.outside_training("in-memory", times["in-memory"])
        print(f"\n{label}")
        print(
            f"  in-memory   {statistics.median(times['in-memory']) * 1000:6.1f} ms per trial "
            f"(median; training {statistics.median(clock.training['in-memory']) * 1000:.1f} ms,"
            f" outside it {baseline / args.trials * 1000:.1f} ms)"
        )
        for storage in urls:
            extra = clock.outside_training(storage, times[storage]) - baseline
            share = extra / training
            verdict = "met" if share <= 0.05 else "MISSED"
            target = "" if storage.endswith(ADAPTER_OFF) else f" (target <= 5%: {verdict})"
            wall_extra, wall_share = paired_overhead(times[storage], times["in-memory"])
            _, training_share = paired_overhead(
                clock.training[storage], clock.training["in-memory"]
            )
            print(
                f"  {storage:24s} +{extra / args.trials * 1000:5.1f} ms per trial = "
                f"{share:5.1%} of training time{target}\n"
                f"{'':14s}paired with the same trial in memory: wall clock "
                f"{wall_extra * 1000:+.1f} ms = {wall_share:+.1%}, training {training_share:+.1%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
