"""The Optuna objective: one trial is one training run of the chapter's network.

Pure apart from the trial it is given: no storage set-up, no tracking, no printing. It
returns the validation metric after the last epoch (the book ranks trials by it) or raises
`optuna.TrialPruned`; the runner decides how the trial ends.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from hpo.engine.protocols import TrainingData, trial_trainings
from hpo.engine.pruning import PruningMirror
from hpo.spec.config import TrainConfig
from hpo.spec.outcomes import EPOCH_METRICS, SELECTION_OF
from hpo.spec.seeds import INIT_STREAM, SHUFFLE_STREAM, derive_seed, name_key
from hpo.spec.study_file import StudySpec
from hpo.storage.optuna_adapter.internals import initial_user_attrs
from trainer import EpochMetrics, MultiLayerNet, Training, TrainingDiverged, TrainingHistory
from trainer.data import DataSplits

TRIAL_STREAM = 2  # per-trial seeds: derive_seed(seed, TRIAL_STREAM, name_key(name), number)


class TrialObserver(Protocol):
    """Something that follows trials as they run (the MLflow tracker, for one)."""

    def trial_started(self, trial: optuna.trial.BaseTrial, seed: int) -> None: ...

    def epoch_ended(
        self, trial: optuna.trial.BaseTrial, epoch: int, metrics: EpochMetrics
    ) -> None: ...

    def trial_ending(self, trial: optuna.trial.BaseTrial) -> None:
        """Last word before the runner tells Optuna how the trial ended (it can still write
        to the trial)."""


def trial_seed(trial: optuna.trial.BaseTrial, study_seed: int, study_name: str) -> int:
    """The seed that makes this trial reproducible, recorded with the trial when it starts.

    A seed already in the trial's user attributes wins: a trial enqueued to reproduce another
    carries its seed, and Optuna's retry of a trial whose worker died copies the original's
    user attributes, seed included. Otherwise it derives from the study's seed, its name
    and the trial number.
    (A worker killed in the milliseconds between claiming a trial and recording its seed
    trained nothing; the retry then gets the same parameters and a seed of its own.)
    """
    fixed = initial_user_attrs(trial).get("seed")
    if fixed is not None:
        return int(fixed)
    seed = derive_seed(study_seed, TRIAL_STREAM, name_key(study_name), trial.number)
    trial.set_user_attr("seed", seed)
    return seed


@dataclass
class EpochHistory:
    """Every epoch's metrics, kept with the trial as one user attribute (one transaction)."""

    columns: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in EPOCH_METRICS})

    def append(self, metrics: EpochMetrics) -> None:
        for name, value in metrics.as_dict().items():
            self.columns[name].append(value)

    def __len__(self) -> int:
        return len(self.columns["val_acc"])


class Objective:
    """`objective(trial) -> float` for a study: builds, trains and reports one network.

    The data comes split: only the training and validation sets are used here; the test
    split stays inside `splits` for whoever asks for it by name, which this class never does.
    `observers` follow the trial (see `TrialObserver`). With a `mirror` (see
    `hpo.engine.pruning`), pruning is decided in memory and nothing is reported to the storage but
    a pruned trial's last value; without one, every epoch is reported to the trial.
    """

    def __init__(
        self,
        spec: StudySpec,
        splits: DataSplits,
        *,
        observers: tuple[TrialObserver, ...] = (),
        mirror: PruningMirror | None = None,
    ) -> None:
        self.spec = spec
        self.splits = splits
        self.observers = observers
        self.mirror = mirror
        self.decision_epochs = spec.decision_epochs
        self.prune = bool(self.decision_epochs)
        self.by_fold = spec.prunes_by_fold  # folds one after another, a decision after each
        self.metric = spec.study.metric
        self.most_trainings: int | None = None  # a replay of a trial pruned after some folds

    def config_for(self, trial: optuna.trial.BaseTrial) -> TrainConfig:
        return self.spec.space.suggest(trial, self.spec.base)

    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        config = self.config_for(trial)
        seed = trial_seed(trial, self.spec.study.seed, self.spec.study.name)
        # A finalist's re-evaluation is a measurement, not a candidate: it is never pruned.
        candidate = SELECTION_OF not in initial_user_attrs(trial)
        prune = self.prune and candidate
        prune_folds = self.by_fold and candidate
        history = EpochHistory()
        reported: set[int] = set()  # the epochs reported to the trial so far
        for observer in self.observers:
            observer.trial_started(trial, seed)

        session = None
        if self.mirror is not None and prune:
            # A mirror copies a stored study, whose trials are real ones (not FixedTrials).
            assert isinstance(trial, optuna.Trial)
            session = self.mirror.begin(trial)

        def on_epoch_end(epoch: int, metrics: EpochMetrics) -> None:
            history.append(metrics)
            for observer in self.observers:
                observer.epoch_ended(trial, epoch, metrics)
            if not prune:
                return
            value = getattr(metrics, self.metric)
            if session is not None:
                decide = epoch in self.decision_epochs
                if session.should_prune(epoch, value, decide=decide):
                    trial.report(value, epoch)  # the one report: a pruned trial keeps a value
                    reported.add(epoch)
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")
                return
            # No mirror (an in-memory study, where reports cost nothing): Optuna's own way.
            trial.report(value, epoch)
            reported.add(epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        def after_fold(index: int, score: float) -> None:
            if isinstance(trial, optuna.trial.FixedTrial):
                return  # a replay: nothing is stored, nothing pruned
            trial.report(score, index)  # a fold's score is the step the pruner compares
            last = index == len(trainings) - 1  # stopping after the last fold saves nothing
            if prune_folds and not last and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {index + 1}")

        state, final, partial = TrialState.FAIL, None, 0
        trainings: list[TrainingData] = []
        together = TrainedTogether()
        try:
            trainings = self.trainings(seed)[: self.most_trainings]
            if self.by_fold:
                final = train_fold_by_fold(trainings, config, self.metric, after_fold, together)
            else:
                final = train_together(trainings, config, on_epoch_end, together)
            state = TrialState.COMPLETE
        except TrainingDiverged as diverged:
            state, partial = TrialState.PRUNED, 1  # the epoch it diverged in was trained too
            trial.set_user_attr("diverged", {"epoch": diverged.epoch, "reason": diverged.reason})
            raise optuna.TrialPruned(str(diverged)) from None
        except optuna.TrialPruned:
            state = TrialState.PRUNED
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise
        finally:
            if self.by_fold:  # the mean curve of the folds trained, now that they have ended
                for metrics in together.mean_curve():
                    on_epoch_end(metrics.epoch, metrics)
            trial.set_user_attr("history", history.columns)
            if len(trainings) > 1 or partial:  # what a budget of epochs counts, when the
                trial.set_user_attr("epochs", together.epochs + partial)  # history cannot say
            if len(trainings) > 1:  # the mean is the value; what it is the mean of, kept
                scores = together.scores(self.metric)
                if state == TrialState.COMPLETE or (self.by_fold and scores):
                    trial.set_user_attr("scores", scores)  # by fold: those that ended
                if state == TrialState.COMPLETE:
                    trial.set_user_attr("score_std", statistics.stdev(scores))
            if not self.by_fold:  # by fold, the intermediate values are the folds' scores
                _report_every_epoch(trial, history.columns[self.metric], reported)
            for observer in self.observers:
                observer.trial_ending(trial)
            if session is not None:
                value = getattr(final, self.metric) if final is not None else None
                session.finish(state, value)
        return getattr(final, self.metric)

    def trainings(self, seed: int) -> list[TrainingData]:
        """The trial's trainings under the study's protocol (one, for the book's holdout)."""
        return trial_trainings(
            self.spec.evaluation,
            self.splits,
            trial_seed=seed,
            study_seed=self.spec.study.seed,
            val_fraction=self.spec.data.val_fraction,
        )


def _report_every_epoch(
    trial: optuna.trial.BaseTrial, values: list[float], reported: Container[int]
) -> None:
    """The metric's every epoch as the trial's intermediate values, as optuna-dashboard draws
    learning curves from them. Pruning reported only the epochs it decides at (`reported`; a
    trial, retries included, starts with none); the rest are reported now, at the trial's
    end, so that they go to the storage with its final write (one transaction, see
    `hpo.storage.optuna_adapter.batched`)."""
    if isinstance(trial, optuna.trial.FixedTrial):
        return  # a replay: nothing is stored
    for epoch, value in enumerate(values, start=1):
        if epoch not in reported:
            trial.report(value, epoch)


def train_trial(
    splits: DataSplits | TrainingData,
    config: TrainConfig,
    seed: int,
    on_epoch_end: Callable[[int, EpochMetrics], None] | None = None,
) -> tuple[MultiLayerNet, TrainingHistory]:
    """Train one network on `splits`' training arrays, as the objective does: the same seed
    gives the same network, so a retrained best trial is the trial that was recorded."""
    training = _start(splits, config, seed)
    for _ in range(config.epochs):
        metrics = training.epoch()
        if on_epoch_end is not None:
            on_epoch_end(metrics.epoch, metrics)
    return training.network, training.history


def _start(splits: DataSplits | TrainingData, config: TrainConfig, seed: int) -> Training:
    network = config.build_network(
        splits.x_train.shape[1], splits.n_classes, seed=derive_seed(seed, INIT_STREAM)
    )
    return Training(
        network,
        config.build_optimizer(),
        splits.x_train,
        splits.t_train,
        splits.x_val,
        splits.t_val,
        batch_size=config.batch_size,
        seed=derive_seed(seed, SHUFFLE_STREAM),
    )


@dataclass
class TrainedTogether:
    """What `train_together` trained, kept even when it stops early (pruned, diverged)."""

    runs: list[Training] = field(default_factory=list)
    ended: int = 0  # the first `ended` trainings ran to their last epoch

    @property
    def epochs(self) -> int:
        """Epochs trained, all trainings together: what a budget of epochs counts."""
        return sum(len(run.history) for run in self.runs)

    def scores(self, metric: str) -> list[float]:
        """Each finished training's final `metric`, in order."""
        return [getattr(run.history.final, metric) for run in self.runs[: self.ended]]

    def mean_curve(self) -> list[EpochMetrics]:
        """The trainings' metrics averaged epoch by epoch (over those that reached it)."""
        longest = max((len(run.history) for run in self.runs), default=0)
        curve = []
        for e in range(longest):
            each = [run.history.epochs[e] for run in self.runs if len(run.history) > e]
            curve.append(each[0] if len(each) == 1 else _mean(e + 1, each))
        return curve


def train_together(
    trainings: list[TrainingData],
    config: TrainConfig,
    on_epoch_end: Callable[[int, EpochMetrics], None],
    together: TrainedTogether,
) -> EpochMetrics:
    """Train every one of a trial's networks, all advancing one epoch at a time, and give
    `on_epoch_end` the mean of their metrics at each epoch: the curve a pruner judges is the
    trial's estimate so far, never one training's luck. Returns the last epoch's means.

    Each network is exactly the one `train_trial` trains from the same data and seed (one
    training alone: the book's). `together` holds the trainings as they go.
    """
    together.runs = [_start(data, config, data.seed) for data in trainings]
    means = None
    for epoch in range(1, config.epochs + 1):
        each = [run.epoch() for run in together.runs]
        means = each[0] if len(each) == 1 else _mean(epoch, each)
        on_epoch_end(epoch, means)
    assert means is not None
    together.ended = len(together.runs)
    return means


def train_fold_by_fold(
    trainings: list[TrainingData],
    config: TrainConfig,
    metric: str,
    after_fold: Callable[[int, float], None],
    together: TrainedTogether,
) -> EpochMetrics:
    """Train a trial's folds one after another, each to the end, and give `after_fold` each
    one's final `metric` (a pruner between folds may stop the trial there). Returns the mean
    of the folds' last epochs. Each network is the one `train_trial` gives."""
    together.runs = []
    for index, data in enumerate(trainings):
        run = _start(data, config, data.seed)
        together.runs.append(run)
        for _ in range(config.epochs):
            run.epoch()
        together.ended += 1
        after_fold(index, getattr(run.history.final, metric))
    finals = [run.history.final for run in together.runs]
    return finals[0] if len(finals) == 1 else _mean(config.epochs, finals)


def _mean(epoch: int, each: list[EpochMetrics]) -> EpochMetrics:
    columns = [m.as_dict() for m in each]
    return EpochMetrics(
        epoch, **{name: sum(c[name] for c in columns) / len(columns) for name in columns[0]}
    )


def replay_trial(
    spec: StudySpec, splits: DataSplits, params: dict[str, Any], seed: int
) -> dict[str, list[float]]:
    """Train a recorded trial's configuration again with its seed; return every epoch's metrics.

    No pruner intervenes, so a pruned trial replays to the configured end; compare it with the
    record at the epochs the record has.
    """
    return replay_record(spec, splits, params, seed)["history"]


def replay_record(
    spec: StudySpec,
    splits: DataSplits,
    params: dict[str, Any],
    seed: int,
    *,
    folds: int | None = None,
) -> dict[str, Any]:
    """`replay_trial`, with everything the trial records: its `history`, and under a protocol
    of several trainings each one's score (`scores`) and the epochs (`epochs`). `folds`: only
    the first ones, as a trial pruned between folds trained."""
    fixed = optuna.trial.FixedTrial(params)
    fixed.set_user_attr("seed", seed)
    objective = Objective(spec, splits)
    objective.prune = False
    objective.most_trainings = folds
    # A diverged replay raises TrialPruned: the history up to there is what there is.
    with contextlib.suppress(optuna.TrialPruned):
        objective(fixed)
    return dict(fixed.user_attrs)
