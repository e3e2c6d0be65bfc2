"""A study's best trial: shown, retrained bit for bit, tested once, published to MLflow.

This is the only module that asks for the test split (`DataSplits.test()`), and it asks only
after the retrained network has reproduced the recorded validation metric exactly: the test
figures are then those of the very network the study selected, and the test split played no
part in selecting it.

Publishing the model is `hpo.tracking.best_model`'s job: this module only hands it the
retrained network, some validation rows as the input example, and the test figures.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.analysis.listing import ranked_trials
from hpo.errors import ConfigError
from hpo.spec.outcomes import trial_scores
from hpo.tracking.best_model import log_best_model

if TYPE_CHECKING:
    from hpo.spec.study_file import StudySpec
    from hpo.tracking.runs import StudyRun, TrackingClient
    from trainer import EpochMetrics, MultiLayerNet
    from trainer.data import DataSplits

logger = logging.getLogger(__name__)

EXAMPLE_ROWS = 5  # validation rows saved as the model's input example
_UNFINISHED = {
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


# -- the best trial --------------------------------------------------------------------------


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best completed trial (`ranked_trials` order: ties go to the lower number)."""
    ranked = ranked_trials(study)
    if not ranked:
        counts = Counter(t.state for t in study.get_trials(deepcopy=False))
        has = ", ".join(f"{counts[s]} {word}" for s, word in _UNFINISHED.items() if counts[s])
        raise ConfigError(
            f"study {study.study_name!r} has no completed trial yet ({has or 'no trials'}); "
            "run it with hpo run first"
        )
    return ranked[0]


def trial_seed_of(trial: FrozenTrial) -> int:
    seed = trial.user_attrs.get("seed")
    if seed is None:
        raise ConfigError(f"trial {trial.number} has no recorded seed, so it cannot be retrained")
    return int(seed)


# -- retraining and the one look at the test split -------------------------------------------


@dataclass(frozen=True, eq=False)
class Retrained:
    """The best trial trained again: its network and both values of the study's metric."""

    trial: FrozenTrial
    seed: int
    metric: str
    network: MultiLayerNet
    splits: DataSplits
    retrained: float
    refit: MultiLayerNet | None = None  # trained on the whole search pool (`[evaluation] refit`)

    @property
    def model(self) -> MultiLayerNet:
        """The network to test and publish: the refit one if there is one."""
        return self.refit if self.refit is not None else self.network

    @property
    def recorded(self) -> float:
        """The trial's record of this training: its value, or under a protocol that trains
        several, the first training's score (the one retrained)."""
        return float(trial_scores(self.trial)[0])

    @property
    def identical(self) -> bool:
        return self.retrained == self.recorded

    def __repr__(self) -> str:
        return (
            f"Retrained(trial={self.trial.number}, seed={self.seed}, {self.metric}: "
            f"recorded={self.recorded!r}, retrained={self.retrained!r})"
        )


@dataclass(frozen=True)
class HeldOutResult:
    loss: float
    acc: float
    n_samples: int
    source: str | None  # where the test split came from (see `DataSplits.test_source`)


def require_test_split(spec: StudySpec, splits: DataSplits, *, command: str) -> None:
    """Refuse, before anything trains, data without the test split `command` evaluates on."""
    if not splits.has_test:
        raise ConfigError(
            f"{command} evaluates on the test split, but the data of study "
            f"{spec.study.name!r} has none; studies keep one when [data] sets test_fraction "
            "(e.g. 0.2), or n_samples smaller than the dataset (the rest is the test split), "
            "or the dataset has an official test set",
            source=str(spec.path) if spec.path else None,
        )


def retrain(
    spec: StudySpec,
    trial: FrozenTrial,
    on_epoch_end: Callable[[int, EpochMetrics], None] | None = None,
) -> Retrained:
    """Train `trial` again on the study's data with its recorded parameters and seed.

    Refuses data without a test split before training, since the point of retraining is the
    test figures. The caller checks `identical` before `evaluate_on_test`.
    """
    from hpo.engine.objective import train_trial
    from hpo.engine.protocols import search_pool, trial_trainings
    from hpo.spec.data import load_splits

    seed = trial_seed_of(trial)
    config = spec.space.suggest(optuna.trial.FixedTrial(dict(trial.params)), spec.base)
    splits = load_splits(spec.data, seed=spec.study.seed)
    require_test_split(spec, splits, command="hpo best --retrain")
    first = trial_trainings(
        spec.evaluation,
        splits,
        trial_seed=seed,
        study_seed=spec.study.seed,
        val_fraction=spec.data.val_fraction,
    )[0]
    network, history = train_trial(first, config, seed, on_epoch_end)
    metric = spec.study.metric
    retrained = Retrained(trial, seed, metric, network, splits, getattr(history.final, metric))
    if spec.evaluation.refit and retrained.identical:
        refit, _history = train_trial(search_pool(splits, seed), config, seed)
        retrained = dataclasses.replace(retrained, refit=refit)
    return retrained


def evaluate_on_test(retrained: Retrained) -> HeldOutResult:
    """Loss and accuracy of the retrained network on the held-out test split."""
    if not retrained.identical:
        raise RuntimeError(f"{retrained!r} did not reproduce the trial: no test for it")
    x_test, t_test = retrained.splits.test()
    loss, acc = retrained.model.evaluate(x_test, t_test)
    return HeldOutResult(float(loss), float(acc), len(t_test), retrained.splits.test_source)


# -- MLflow: the model on the parent run -----------------------------------------------------


def publish(
    client: TrackingClient, parent: StudyRun, retrained: Retrained, test: HeldOutResult
) -> str:
    """Log the test figures, the best trial's tags and the model to the parent run; return the
    model URI (`runs:/<parent run id>/best_model_trial_<n>`)."""
    return log_best_model(
        client,
        parent,
        retrained.model,
        retrained.splits.x_val[:EXAMPLE_ROWS],
        trial_number=retrained.trial.number,
        seed=retrained.seed,
        test_loss=test.loss,
        test_acc=test.acc,
    )


def describe_params(params: dict[str, Any]) -> str:
    from hpo.analysis.listing import fmt

    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items()) or "(none searched)"
