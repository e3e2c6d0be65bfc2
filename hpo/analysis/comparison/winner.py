"""Which trial a study's search chose: the one configuration a comparison retrains and tests.

Kept in one place because the rule will change: a study with a selection phase (its top
trials re-evaluated) chooses by that phase, not simply by the best value of the search.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from hpo.spec.outcomes import ranked_trials


def winning_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's winner: for now its best COMPLETE trial (ties: the lower number), or None
    when no trial completed."""
    ranked = ranked_trials(study)
    return ranked[0] if ranked else None
