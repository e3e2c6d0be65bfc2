"""How a trial is scored (`[evaluation]`) and how the winner is chosen (`[selection]`).

On a small validation split, one training's luck can outweigh the differences between
configurations, so the search then picks the luckiest trial. A protocol other than the book's
single holdout scores each configuration on several trainings; a selection re-evaluates the
best few before one of them wins. Both are validated here, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpo.errors import ConfigError
from hpo.spec.keys import is_int, toml_repr

HOLDOUT, KFOLD, RESHUFFLED, REPEATS = "holdout", "kfold", "reshuffled", "repeats"
PROTOCOLS: dict[str, str] = {
    HOLDOUT: "the book's: one training, scored on the study's one validation split",
    KFOLD: "k-fold cross-validation over the search pool (training + validation), "
    "stratified and seeded by the study: `folds` trainings per trial",
    RESHUFFLED: "one training, on a train/validation split of the search pool drawn anew "
    "for each trial (from its seed)",
    REPEATS: "`repeats` trainings with different seeds on the study's one split",
}
MAX_TRAININGS = 20  # per trial: folds or repeats
MAX_FINALISTS = 100


@dataclass(frozen=True)
class EvaluationSpec:
    """The `[evaluation]` section: what one trial trains and how its value is computed.

    The value is the mean of the trainings' final metric, and the learning curve the pruner
    sees is the mean of their curves, epoch by epoch (the trainings advance together).
    """

    protocol: str = HOLDOUT
    folds: int = 5
    repeats: int = 3
    # The final model (`hpo best --retrain`) trained on the whole search pool, training and
    # validation together, once the winner's first training has reproduced exactly: the
    # validation split has done its job by then, and a small pool's last fifth is worth having.
    refit: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.refit, bool):
            raise ConfigError(
                f"must be true or false, but got {toml_repr(self.refit)}", key="evaluation.refit"
            )
        if self.protocol not in PROTOCOLS:
            raise ConfigError(
                f"must be one of {', '.join(map(toml_repr, PROTOCOLS))}, but got "
                f"{toml_repr(self.protocol)}",
                key="evaluation.protocol",
            )
        for name, low in (("folds", 2), ("repeats", 2)):
            value = getattr(self, name)
            if not is_int(value) or not low <= value <= MAX_TRAININGS:
                raise ConfigError(
                    f"must be an integer from {low} to {MAX_TRAININGS}, but got "
                    f"{toml_repr(value)}",
                    key=f"evaluation.{name}",
                )

    @property
    def trainings(self) -> int:
        """Networks trained per trial."""
        return {KFOLD: self.folds, REPEATS: self.repeats}.get(self.protocol, 1)

    def as_dict(self) -> dict[str, Any]:
        """What the study stores (its fingerprint): only the settings the protocol uses."""
        result: dict[str, Any] = {"protocol": self.protocol}
        if self.protocol == KFOLD:
            result["folds"] = self.folds
        if self.protocol == REPEATS:
            result["repeats"] = self.repeats
        return result

    def describe(self) -> str:
        if self.protocol == KFOLD:
            return f"{self.folds}-fold cross-validation"
        if self.protocol == REPEATS:
            return f"{self.repeats} trainings per trial, other seeds"
        if self.protocol == RESHUFFLED:
            return "a holdout reshuffled per trial"
        return "one holdout"


@dataclass(frozen=True)
class SelectionSpec:
    """The `[selection]` section: once the search has spent its budget, the `finalists` best
    configurations are each evaluated `evaluations` more times (new trials of the study, with
    other seeds and, for a reshuffled holdout, other splits); the best mean over all of a
    configuration's evaluations wins. Off (0 finalists) by default: the best trial wins.
    """

    finalists: int = 0
    evaluations: int = 2

    def __post_init__(self) -> None:
        if not is_int(self.finalists) or not 0 <= self.finalists <= MAX_FINALISTS:
            raise ConfigError(
                f"must be an integer from 0 (no selection) to {MAX_FINALISTS}, but got "
                f"{toml_repr(self.finalists)}",
                key="selection.finalists",
            )
        if not is_int(self.evaluations) or not 1 <= self.evaluations <= MAX_TRAININGS:
            raise ConfigError(
                f"must be an integer from 1 to {MAX_TRAININGS}, but got "
                f"{toml_repr(self.evaluations)}",
                key="selection.evaluations",
            )

    @property
    def enabled(self) -> bool:
        return self.finalists > 0

    @property
    def trials(self) -> int:
        """The re-evaluation trials a selection adds."""
        return self.finalists * self.evaluations if self.enabled else 0
