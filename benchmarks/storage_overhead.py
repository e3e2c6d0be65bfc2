"""What storing a study costs per trial: in-memory against SQLite and PostgreSQL, side by side.

    python benchmarks/storage_overhead.py [--trials 30] [--postgres URL] [--mnist-dir DIR]

Runs the book's 6.5 trial (MNIST 500, 784-[100]x6-10, SGD, 50 epochs, lr and weight decay
log-uniform) through the real worker path: trials claimed under the storage lock with an
exact budget, a heartbeat thread, per-epoch history kept as one user attribute, `tell`. The
in-memory baseline runs the same objective with the same seeded sampler in Optuna's
InMemoryStorage, so every storage trains the same trials. Each storage's worker loops over
its trials as in `hpo run`, and the storages take turns trial by trial, so they share the
machine's load. Overhead = median trial time with the storage minus median in memory, as a
percentage of the in-memory time.

Two settings: the book's random search without pruning, and TPE with the median pruner as
`hpo run` prunes (decided on an in-memory mirror of the study, see `hpo._pruning`); a third
row shows what Optuna's usual way, a report and a pruner call through the storage at every
epoch, costs instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import optuna

from hpo._data import load_splits
from hpo._objective import Objective
from hpo._run import build_objective, settle_heap
from hpo._runner import Worker
from hpo._storage import resolve_storage
from hpo._studies import join_study, prepare_study, sampler_seed
from hpo._studyfile import load_study_file

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
) -> dict[str, list[float]]:
    """Each storage's trial times, the storages taking turns trial by trial.

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
    runs = {}
    memory_objective = objective_cls(spec, splits)
    runs["in-memory"] = lambda: memory.optimize(
        memory_objective,
        n_trials=trials,
        callbacks=[lambda _s, _t: turns.trial_ended("in-memory")],
    )
    workers = {}
    for label, url in urls.items():
        settings = resolve_storage(url)
        prepare_study(settings, spec)
        joined = join_study(settings, spec, worker_index=0)
        if naive:
            objective = EveryEpochObjective(spec, splits)
        else:  # exactly what `hpo run` builds
            objective = build_objective(joined, spec, splits)
        workers[label] = Worker(
            joined,
            settings,
            objective,
            n_trials=trials,
            on_trial_end=lambda _t, label=label: turns.trial_ended(label),
        )
        runs[label] = workers[label].run
    settle_heap()  # as `hpo run` does before its trial loop
    threads = [threading.Thread(target=turns.run, args=(label, runs[label])) for label in labels]
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
    return turns.times


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

    env = {"HPO_DATA_DIR": str(args.mnist_dir.parent)}
    settings_list = [
        ("book 6.5: random search, no pruner", "book-6.5.toml", False),
        ("TPE + median pruner, decided in memory (hpo run)", "book-6.5-tpe.toml", False),
        ("TPE + median pruner, report + should_prune every epoch", "book-6.5-tpe.toml", True),
    ]
    print(f"{args.trials} trials per storage; book 6.5 network on {args.mnist_dir}")
    for label, file_name, naive in settings_list:
        spec = load_study_file(REPO / "studies" / file_name, environ=env)
        run_id = f"{int(time.time() * 1000)}"
        spec = spec.with_overrides(study_name=f"overhead-{run_id}", n_trials=args.trials)
        splits = load_splits(spec.data, seed=spec.study.seed)
        with tempfile.TemporaryDirectory() as tmp:
            urls = {
                "SQLite": f"sqlite:///{tmp}/overhead.db",
                "PostgreSQL": args.postgres,
            }
            times = time_storages(spec, splits, urls, args.trials, naive)
        base = statistics.median(times["in-memory"])
        print(f"\n{label}")
        print(f"  in-memory   {base * 1000:7.1f} ms per trial (median)")
        for storage in ("SQLite", "PostgreSQL"):
            median = statistics.median(times[storage])
            overhead = median - base
            verdict = "met" if overhead / base <= 0.05 else "MISSED"
            print(
                f"  {storage:11s} {median * 1000:7.1f} ms: +{overhead * 1000:5.1f} ms = "
                f"{overhead / base:5.1%} of trial time (target <= 5%: {verdict})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
