"""Which trial a study's search chose: the one configuration a comparison retrains and tests.

A study with a selection phase (its best trials re-evaluated) chooses by that phase: the
finalist with the best mean, not simply the best value of the search (`ranked_trials`).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from hpo.spec.outcomes import ranked_trials


def winning_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's winner: the selection's, else its best completed trial (ties: the lower
    number); None when no trial completed."""
    ranked = ranked_trials(study)
    return ranked[0] if ranked else None
