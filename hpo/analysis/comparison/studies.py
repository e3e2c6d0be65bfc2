"""`hpo compare`: the same study with several samplers and pruners, several seeds each.

Every (sampler, pruner) pair is an arm; every arm runs one study per seed with the same
trial budget, and seed k gives every arm the same data split. Given several study files,
each file is an arm instead, run as it is written (`files.plan_files`). Each study is an ordinary
`hpo run` in a process of its own, in the same storage, under a systematic name, so an
interrupted comparison resumes like any study. What the studies did becomes `results.csv`,
one row per (arm, seed, trial); the report is computed from those rows alone.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import ConfigError
from hpo.spec.outcomes import ENDED, trial_epochs
from hpo.spec.search.samplers import PRUNERS, SAMPLERS
from hpo.spec.seeds import derive_seed
from hpo.spec.study_file import StudySpec
from hpo.storage.database import StorageSettings
from hpo.tracking.runs import TrackingSettings

logger = logging.getLogger(__name__)

NOISE_STREAM = 4  # training seeds of the noise check: derive_seed(seed, NOISE_STREAM, i)
AUDIT_STREAM = 5  # which pruned trials the pruning audit re-trains
SEARCH, SELECTION = "search", "selection"  # Row.role


@dataclass(frozen=True)
class Arm:
    """A (sampler, pruner) pair over one study file, or a study file of its own (`file`):
    then `sampler` and `pruner` are the file's, and `label` (its stem, made unique) names it."""

    sampler: str
    pruner: str
    file: Path | None = None
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or f"{self.sampler}+{self.pruner}"


@dataclass(frozen=True)
class Job:
    """One arm at one seed: one study, or the stages of the narrowing arm, in order."""

    arm: Arm
    seed: int
    study_name: str  # the job's label (its log file's name)
    studies: tuple[str, ...]


@dataclass(frozen=True)
class ComparePlan:
    """What a comparison runs: arms × seeds, each a study of `n_trials` in one storage.

    With file arms, `spec` and `study_file` are the first file's (the reference), and each
    arm has its own spec in `arm_specs` (by arm name) and its file's budget."""

    spec: StudySpec
    study_file: Path
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    n_trials: int
    prefix: str
    stages: int = 3  # of the narrowing arm
    arm_specs: Mapping[str, StudySpec] = field(default_factory=dict)

    @property
    def files(self) -> bool:
        """Whether each arm is a study file of its own (`hpo compare A.toml B.toml`)."""
        return any(arm.file is not None for arm in self.arms)

    def spec_of(self, arm: Arm) -> StudySpec:
        return self.arm_specs.get(arm.name, self.spec)

    def budget(self, arm: Arm) -> int:
        """The arm's trials per study: its file's own, or the comparison's."""
        return self.spec_of(arm).study.n_trials if arm.file is not None else self.n_trials

    def jobs(self) -> list[Job]:
        from hpo.analysis.comparison.narrowing_arm import NARROWING, stage_names

        jobs = []
        for seed in self.seeds:
            for arm in self.arms:
                tag = arm.label if arm.file is not None else f"{arm.sampler}-{arm.pruner}"
                label = f"{self.prefix}--{tag}--seed{seed}"
                studies = (
                    tuple(stage_names(self.prefix, arm.pruner, seed, self.stages))
                    if arm.sampler == NARROWING
                    else (label,)
                )
                jobs.append(Job(arm, seed, label, studies))
        return jobs

    @property
    def reference(self) -> Arm | None:
        """The arm every other is measured against: the first file of file arms, else random
        search without pruning."""
        if self.files:
            return self.arms[0]
        for arm in self.arms:
            if arm == Arm("random", "none"):
                return arm
        return next((a for a in self.arms if a.sampler == "random"), None)


def plan(
    spec: StudySpec,
    study_file: Path,
    *,
    samplers: Sequence[str],
    pruners: Sequence[str],
    seeds: int,
    n_trials: int | None,
) -> ComparePlan:
    from hpo.analysis.comparison.narrowing_arm import NARROWING

    for name in samplers:
        if name not in SAMPLERS and name != NARROWING:
            raise ConfigError(
                f"must be among {sorted([*SAMPLERS, NARROWING])}, but got {name!r}",
                key="--samplers",
            )
    for name in pruners:
        if name not in PRUNERS:
            raise ConfigError(
                f"must be among {sorted(PRUNERS)}, but got {name!r}", key="--pruners"
            )
    if seeds < 1:
        raise ConfigError(f"must be at least 1, but got {seeds}", key="--seeds")
    budget = n_trials if n_trials is not None else spec.study.n_trials
    if budget < 1:
        raise ConfigError(f"must be at least 1, but got {budget}", key="--n-trials")
    arms = tuple(Arm(s, p) for s in dict.fromkeys(samplers) for p in dict.fromkeys(pruners))
    for arm in arms:  # a pruner that cannot decide within the epochs fails here, not later
        sampler = "random" if arm.sampler == NARROWING else arm.sampler
        spec.with_overrides(sampler=sampler, pruner=arm.pruner)
    stages = 3
    if any(a.sampler == NARROWING for a in arms) and spec.study.max_epochs is not None:
        raise ConfigError(
            "the narrowing arm splits a budget of trials into stages, but this study's budget "
            "is in epochs ([study] max_epochs); leave narrowing out of --samplers",
            key="--samplers",
        )
    if any(a.sampler == NARROWING for a in arms) and budget < stages:
        raise ConfigError(
            f"the narrowing arm needs at least {stages} trials, one per stage", key="--n-trials"
        )
    base_seed = spec.study.seed
    return ComparePlan(
        spec=spec,
        study_file=study_file,
        arms=arms,
        seeds=tuple(base_seed + k for k in range(seeds)),
        n_trials=budget,
        prefix=f"compare-{spec.study.name}",
        stages=stages,
    )


# -- running the studies -----------------------------------------------------------------------


@dataclass
class JobOutcome:
    job: Job
    returncode: int
    log: Path


def run_jobs(
    comparison: ComparePlan,
    storage: StorageSettings,
    tracking: TrackingSettings,
    *,
    workers: int,
    log_dir: Path,
    on_done: Callable[[JobOutcome, int, int], None] | None = None,
) -> list[JobOutcome]:
    """Each arm-seed study as `hpo run` in its own process, `workers` at a time.

    A study already complete finishes at once; an interrupted one resumes. Ctrl-C reaches the
    running processes too (same process group): each marks its trial failed and stops.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["HPO_STORAGE"] = storage.url
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    if tracking.uri:
        env["MLFLOW_TRACKING_URI"] = tracking.uri
    pending = list(comparison.jobs())
    running: list[tuple[Job, subprocess.Popen, Path]] = []
    outcomes: list[JobOutcome] = []
    total = len(pending)
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                log = log_dir / f"{job.study_name}.log"
                command = _command(comparison, job, tracking, log_dir.parent / "stages")
                with open(log, "a") as out:
                    process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
                running.append((job, process, log))
            time.sleep(0.2)
            for entry in list(running):
                job, process, log = entry
                if process.poll() is not None:
                    running.remove(entry)
                    outcome = JobOutcome(job, process.returncode, log)
                    outcomes.append(outcome)
                    if on_done is not None:
                        on_done(outcome, len(outcomes), total)
    except KeyboardInterrupt as stop:
        # Each running study is told too (Ctrl-C in a terminal reached them already; a second
        # signal changes nothing for them), marks its running trial failed and ends. One that
        # does not within a minute is killed (its trial is then failed as stale on the resume),
        # so that the interruption itself never ends in a traceback.
        for _job, process, _log in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(getattr(stop, "signum", signal.SIGINT))
        for _job, process, _log in running:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        raise
    return outcomes


def _command(
    comparison: ComparePlan, job: Job, tracking: TrackingSettings, stage_dir: Path
) -> list[str]:
    from hpo.analysis.comparison.narrowing_arm import NARROWING

    common = ["--no-mlflow"] if not tracking.enabled else [
        "--experiment", tracking.experiment or comparison.prefix
    ]  # fmt: skip
    if job.arm.file is not None:  # the file as it is written; only the seed is the comparison's
        return [
            sys.executable, "-m", "hpo.cli", "run", str(job.arm.file),
            "--study-name", job.study_name, "--seed", str(job.seed), "--no-progress", *common,
        ]  # fmt: skip
    if job.arm.sampler == NARROWING:
        return [
            sys.executable, "-m", "hpo.analysis.comparison.narrowing_arm",
            str(comparison.study_file), "--prefix", comparison.prefix,
            "--pruner", job.arm.pruner, "--seed", str(job.seed),
            "--n-trials", str(comparison.n_trials), "--stages", str(comparison.stages),
            "--stage-dir", str(stage_dir), *common,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "hpo.cli", "run", str(comparison.study_file),
        "--study-name", job.study_name, "--sampler", job.arm.sampler,
        "--pruner", job.arm.pruner, "--seed", str(job.seed),
        "--n-trials", str(comparison.n_trials), "--no-progress", *common,
    ]  # fmt: skip


# -- what the studies did, as rows ----------------------------------------------------------------


@dataclass
class Row:
    """One line of results.csv: a trial of an arm-seed study, or a noise-check training."""

    kind: str  # "trial" or "noise"
    arm: str
    sampler: str
    pruner: str
    seed: int
    study: str
    index: int | None  # position among the study's finished trials (the budget's count)
    number: int | None
    state: str
    value: float | None
    epochs: int
    cumulative_epochs: int | None
    duration_s: float | None
    best_so_far: float | None
    test_acc: float | None = None
    full_length_value: float | None = None
    params: str = ""
    role: str = SEARCH  # SELECTION: a re-evaluation trial (user attr `selection_of`)
    # A refit arm's winner: its first training, tested as well, to show what the refit added.
    test_acc_without_refit: float | None = None

    @classmethod
    def header(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @property
    def finished_index(self) -> int:
        """`index` of a row known to have one (a finished trial), e.g. to sort by."""
        assert self.index is not None, f"{self.study}: trial {self.number} has no index"
        return self.index


def _role(trial: FrozenTrial) -> str:
    return SELECTION if "selection_of" in trial.user_attrs else SEARCH


def study_rows(job: Job, studies: Sequence[optuna.Study]) -> list[Row]:
    """The job's trials in order (a narrowing arm's stages one after the other); only finished
    search trials count towards the budget's index and the best so far (selection trials,
    re-evaluations of earlier ones, are rows of their own)."""
    maximize = studies[0].direction == optuna.study.StudyDirection.MAXIMIZE
    rows: list[Row] = []
    index, epochs_so_far, best = 0, 0, None
    trials = [
        (study.study_name, trial)
        for study in studies
        for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    ]
    for study_name, trial in trials:
        if trial.state not in ENDED:
            continue
        epochs = trial_epochs(trial)
        role = _role(trial)
        finished = trial.state != TrialState.FAIL and role == SEARCH
        if finished:
            index += 1
            epochs_so_far += epochs
        value = trial.value if trial.state == TrialState.COMPLETE and role == SEARCH else None
        if value is not None and (best is None or (value > best if maximize else value < best)):
            best = value
        rows.append(
            Row(
                kind="trial",
                arm=job.arm.name,
                sampler=job.arm.sampler,
                pruner=job.arm.pruner,
                seed=job.seed,
                study=study_name,
                index=index if finished else None,
                number=trial.number,
                state=trial.state.name,
                value=trial.value,
                epochs=epochs,
                cumulative_epochs=epochs_so_far if finished else None,
                duration_s=trial.duration.total_seconds() if trial.duration else None,
                best_so_far=best if finished else None,
                params=json.dumps(trial.params, sort_keys=True),
                role=role,
            )
        )
    return rows


def _best_row(rows: list[Row], maximize: bool) -> Row | None:
    complete = [(r.value, r) for r in rows if r.state == "COMPLETE" and r.value is not None]
    if not complete:
        return None
    sign = 1.0 if maximize else -1.0
    # Ties go to the earliest trial in the arm's order (stages one after the other).
    _, (_, best) = max(enumerate(complete), key=lambda item: (sign * item[1][0], -item[0]))
    return best


def write_rows(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=Row.header())
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in vars(row).items()})


def read_rows(path: Path) -> list[Row]:
    """results.csv back into rows (types restored): the report is computed from these."""
    ints = {"seed", "index", "number", "epochs", "cumulative_epochs"}
    floats = {
        "value", "duration_s", "best_so_far", "test_acc", "full_length_value",
        "test_acc_without_refit",
    }  # fmt: skip
    rows = []
    with open(path, newline="") as f:
        for record in csv.DictReader(f):
            values: dict[str, Any] = {}
            for key, text in record.items():
                if key in ints:
                    values[key] = int(text) if text != "" else None
                elif key in floats:
                    values[key] = float(text) if text != "" else None
                else:
                    values[key] = text
            values["epochs"] = values["epochs"] or 0
            rows.append(Row(**values))
    return rows


# -- the extra training: test accuracy, noise, what pruning cost ------------------------------


@dataclass
class Extras:
    """Retraining done for the report, each piece written into the rows it belongs to."""

    noise_config: str = ""
    noise_study: str = ""
    audited: dict[str, int] = field(default_factory=dict)


def add_test_accuracy(
    rows: list[Row],
    studies: dict[str, optuna.Study],
    specs: dict[str, StudySpec],
    progress: Callable[[], None] = lambda: None,
) -> None:
    """Retrain each arm-seed study's winner (`winner.winning_trial`) once, with its own seed
    (so the identical network), and record its accuracy on the held-out test split: the only
    use of that split. A narrowing arm's winner is the best of its stages' winners (ties: the
    earlier stage)."""
    from hpo.analysis.best import evaluate_on_test, retrain

    by_run: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        if row.kind == "trial":
            by_run.setdefault((row.arm, row.seed), []).append(row)
    for run_rows in by_run.values():
        names = dict.fromkeys(r.study for r in run_rows)  # the job's studies, in order
        won = _job_winner([studies[name] for name in names])
        if won is None:
            continue
        study, trial = won
        best = next(
            r for r in run_rows if r.study == study.study_name and r.number == trial.number
        )
        retrained = retrain(specs[best.study], trial)
        if not retrained.identical:
            raise RuntimeError(f"{retrained!r}: the best trial of {best.study} did not reproduce")
        best.test_acc = evaluate_on_test(retrained).acc
        if retrained.refit is not None:  # what the refit added: the first training, tested too
            x_test, t_test = retrained.splits.test()
            best.test_acc_without_refit = float(retrained.network.evaluate(x_test, t_test)[1])
        progress()


def _job_winner(studies: Sequence[optuna.Study]) -> tuple[optuna.Study, FrozenTrial] | None:
    """The best of the studies' winners (ties: the earlier study)."""
    from hpo.analysis.comparison.winner import winning_trial

    found: tuple[optuna.Study, FrozenTrial] | None = None
    best = math.nan
    for study in studies:
        trial = winning_trial(study)
        if trial is None or trial.value is None:
            continue
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        if found is None or (trial.value > best if maximize else trial.value < best):
            found, best = (study, trial), trial.value
    return found


def add_noise_check(
    rows: list[Row],
    studies: dict[str, optuna.Study],
    specs: dict[str, StudySpec],
    trainings: int,
    progress: Callable[[], None] = lambda: None,
) -> Extras:
    """Train the best configuration of all with `trainings` different seeds on its split: how
    far apart results land by chance alone, the yardstick for differences between arms."""
    from hpo.engine.objective import train_trial
    from hpo.spec.data import load_splits

    trial_rows = [r for r in rows if r.kind == "trial" and r.role == SEARCH]
    maximize = next(iter(studies.values())).direction == optuna.study.StudyDirection.MAXIMIZE
    best = _best_row(trial_rows, maximize)
    extras = Extras()
    if best is None or trainings < 1:
        return extras
    spec, study = specs[best.study], studies[best.study]
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == best.number)
    config = spec.space.suggest(optuna.trial.FixedTrial(trial.params), spec.base)
    splits = load_splits(spec.data, seed=spec.study.seed)
    metric = spec.study.metric
    for i in range(trainings):
        seed = derive_seed(spec.study.seed, NOISE_STREAM, i)
        _network, history = train_trial(splits, config, seed)
        rows.append(
            Row(
                kind="noise", arm=best.arm, sampler=best.sampler, pruner=best.pruner,
                seed=best.seed, study=best.study, index=i + 1, number=best.number,
                state="COMPLETE", value=getattr(history.final, metric), epochs=len(history),
                cumulative_epochs=None, duration_s=None, best_so_far=None,
                params=best.params,
            )
        )  # fmt: skip
        progress()
    extras.noise_config, extras.noise_study = best.params, best.study
    return extras


def add_pruning_audit(
    rows: list[Row],
    studies: dict[str, optuna.Study],
    specs: dict[str, StudySpec],
    per_arm: int,
    progress: Callable[[], None] = lambda: None,
) -> None:
    """Re-train a sample of pruned trials to full length (their own seeds) and record where
    they would have ended: what pruning cost, as well as what it saved."""
    import random

    from hpo.engine.objective import replay_trial
    from hpo.spec.data import load_splits

    by_arm: dict[str, list[Row]] = {}
    for row in rows:
        if row.kind == "trial" and row.state == "PRUNED":
            by_arm.setdefault(row.arm, []).append(row)
    splits_cache: dict[str, Any] = {}
    for arm, pruned in sorted(by_arm.items()):
        rng = random.Random(derive_seed(0, AUDIT_STREAM, len(arm)))  # fixed sample per arm
        sample = rng.sample(pruned, min(per_arm, len(pruned)))
        for row in sample:
            spec, study = specs[row.study], studies[row.study]
            trial = next(t for t in study.get_trials(deepcopy=False) if t.number == row.number)
            if row.study not in splits_cache:
                splits_cache[row.study] = load_splits(spec.data, seed=spec.study.seed)
            history = replay_trial(
                spec, splits_cache[row.study], dict(trial.params), int(trial.user_attrs["seed"])
            )
            values = history[spec.study.metric]
            row.full_length_value = values[-1] if values else None
            progress()


def budget_index(fraction: float, n_trials: int) -> int:
    """The trial count at a fraction of the budget (10% of 100 trials is trial 10)."""
    return max(1, math.ceil(fraction * n_trials - 1e-9))
