"""Pruners by name: the strings of `[pruner]`, mapped to Optuna, with the epochs they decide at.

Every `trial.report` is one committed storage transaction, so the objective reports only where
a pruner can decide: `PrunerSpec.decision_epochs`, derived from Optuna 5's pruner source (see
the comments at each rule), and `PrunerSpec.report_epochs`, which says what to report after
each epoch so that pruning decides exactly as if every epoch were reported. The full per-epoch
history is kept elsewhere. tests/test_samplers.py proves the equivalence on real studies.

Hyperband's `max_resource` defaults to the run's epochs, never Optuna's "auto", which reads the
last reported step of finished trials and so would depend on which epochs were reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError
from hpo.spec.search.options import Option, Options, lookup, no_check, resolve, spec_repr

if TYPE_CHECKING:
    from optuna.pruners import BasePruner


@dataclass(frozen=True)
class PrunerEntry:
    """A pruner name's options, factory and the epochs at which it can decide.

    `best_so_far`: the pruner compares the trial's best reported value (PercentilePruner's
    `_get_best_intermediate_result_over_steps`), so the epoch of that best must be reported too.
    """

    options: Mapping[str, Option]
    make: Callable[[Options, int], BasePruner]
    epochs: Callable[[Options, int], frozenset[int]]
    first_key: str | None = None
    check: Callable[[Options], None] = no_check
    best_so_far: bool = False


def _percentile_epochs(o: Options, epochs: int) -> frozenset[int]:
    # PercentilePruner.prune returns False while `step < n_warmup_steps`, then only when
    # `_is_first_in_interval_step`: the previous reported step lies below the nearest pruning
    # step (step - w) // i * i + w. Reporting every epoch, that holds exactly when
    # (step - w) % i == 0; steps are 1-based epochs, so step 0 never occurs.
    w, i = o["n_warmup_steps"], o["interval_steps"]
    return frozenset(s for s in range(max(w, 1), epochs + 1) if (s - w) % i == 0)


def _rungs(min_resource: int, reduction_factor: int, rate: int, epochs: int) -> set[int]:
    # SuccessiveHalvingPruner.prune returns False while
    # step < min_resource * reduction_factor ** (min_early_stopping_rate + rung), and records
    # rung `rung` at the first reported step at or above it: with every epoch reported, that is
    # the rung step itself.
    step = min_resource
    for _ in range(rate):  # not reduction_factor ** rate, which a huge rate makes endless
        step *= reduction_factor
        if step > epochs:
            return set()
    steps = set()
    while step <= epochs:
        steps.add(step)
        step *= reduction_factor
    return steps


def _halving_epochs(o: Options, epochs: int) -> frozenset[int]:
    rungs = _rungs(o["min_resource"], o["reduction_factor"], o["min_early_stopping_rate"], epochs)
    return frozenset(rungs)


def n_brackets(min_resource: int, max_resource: int, reduction_factor: int) -> int:
    """HyperbandPruner._try_initialization's count, floating-point quirks included."""
    return math.floor(math.log(max_resource / min_resource, reduction_factor)) + 1


def _hyperband_epochs(o: Options, epochs: int) -> frozenset[int]:
    # Bracket b is a SuccessiveHalvingPruner with min_early_stopping_rate=b; max_resource only
    # sets the number of brackets, never a rung. The union is bracket 0's rungs.
    mr, rf = o["min_resource"], o["reduction_factor"]
    count = n_brackets(mr, o["max_resource"] or epochs, rf)
    return frozenset(s for b in range(max(count, 0)) for s in _rungs(mr, rf, b, epochs))


def _nop(o: Options, epochs: int) -> BasePruner:
    from optuna.pruners import NopPruner

    return NopPruner()


def _median(o: Options, epochs: int) -> BasePruner:
    from optuna.pruners import MedianPruner

    return MedianPruner(**o)


def _halving(o: Options, epochs: int) -> BasePruner:
    from optuna.pruners import SuccessiveHalvingPruner

    return SuccessiveHalvingPruner(**o)


def _hyperband(o: Options, epochs: int) -> BasePruner:
    from optuna.pruners import HyperbandPruner

    return HyperbandPruner(**{**o, "max_resource": o["max_resource"] or epochs})


def _wilcoxon(o: Options, epochs: int) -> BasePruner:
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.pruners import WilcoxonPruner

    with warnings.catch_warnings():  # experimental since Optuna 3.6; pinned by our tests
        warnings.simplefilter("ignore", ExperimentalWarning)
        return WilcoxonPruner(
            p_threshold=float(o["p_threshold"]), n_startup_steps=o["n_startup_steps"]
        )


def _check_hyperband(o: Options) -> None:
    if o["max_resource"] is not None and o["max_resource"] < o["min_resource"]:
        raise ConfigError(
            f"must be >= min_resource ({o['min_resource']}), but got {o['max_resource']}",
            key="pruner.max_resource",
        )


_RATE = "rungs at min_resource * reduction_factor ** (this + k) epochs"
_BOOTSTRAP = "prune until this many trials have reached a rung"
PRUNERS: dict[str, PrunerEntry] = {
    "none": PrunerEntry({}, _nop, lambda o, epochs: frozenset()),
    "median": PrunerEntry(
        {
            "n_startup_trials": Option(
                "int", 5, minimum=0, help="complete trials before any pruning"
            ),
            "n_warmup_steps": Option("int", 10, minimum=0, help="the first epoch that can prune"),
            "interval_steps": Option("int", 1, minimum=1, help="epochs between decisions"),
            "n_min_trials": Option("int", 1, minimum=1, help="complete trials with a value there"),
        },
        _median,
        _percentile_epochs,
        first_key="n_warmup_steps",
        best_so_far=True,
    ),
    "successive_halving": PrunerEntry(
        {
            "min_resource": Option("int", 5, minimum=1, help="epochs before the first rung"),
            "reduction_factor": Option("int", 3, minimum=2),
            "min_early_stopping_rate": Option("int", 0, minimum=0, help=_RATE),
            "bootstrap_count": Option("int", 0, minimum=0, help=_BOOTSTRAP),
        },
        _halving,
        _halving_epochs,
        first_key="min_resource",
    ),
    "hyperband": PrunerEntry(
        {
            "min_resource": Option("int", 5, minimum=1, help="epochs before the first rung"),
            "max_resource": Option("int", None, minimum=1, help="unset: the run's epochs"),
            "reduction_factor": Option("int", 3, minimum=2),
            "bootstrap_count": Option("int", 0, minimum=0, help=_BOOTSTRAP),
        },
        _hyperband,
        _hyperband_epochs,
        first_key="min_resource",
        check=_check_hyperband,
    ),
    # Decides between folds, not epochs (see `BY_FOLD`): a trial's fold scores against the
    # best trial's on the same folds, by Wilcoxon's signed-rank test.
    "wilcoxon": PrunerEntry(
        {
            "p_threshold": Option(
                "fraction", 0.1, help="prune when the trial is worse than the best at this p"
            ),
            "n_startup_steps": Option("int", 2, minimum=0, help="folds before any decision"),
        },
        _wilcoxon,
        lambda o, epochs: frozenset(),
    ),
}
BY_FOLD: frozenset[str] = frozenset({"wilcoxon"})  # pruners fed one score per fold


@dataclass(frozen=True, repr=False)
class PrunerSpec:
    """A pruner by name with its resolved options; the run's epochs come at `build`."""

    name: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        entry: PrunerEntry = lookup(PRUNERS, self.name, what="pruner")
        resolved = resolve(entry.options, self.options, what="pruner", name=self.name)
        entry.check(resolved)
        object.__setattr__(self, "options", resolved)

    def for_epochs(self, epochs: int) -> PrunerSpec:
        """This spec with epoch-dependent defaults resolved, checked against `epochs`."""
        options = dict(self.options)
        if "max_resource" in options:
            if options["max_resource"] is None:
                options["max_resource"] = epochs
            elif options["max_resource"] > epochs:
                raise ConfigError(
                    f"must be <= the run's epochs ({epochs}), but got {options['max_resource']}",
                    key="pruner.max_resource",
                )
        spec = PrunerSpec(self.name, options)
        entry = PRUNERS[self.name]
        if entry.first_key and not spec.decision_epochs(epochs):
            key = entry.first_key
            if options.get("min_early_stopping_rate") and PrunerSpec(
                self.name, {**options, "min_early_stopping_rate": 0}
            ).decision_epochs(epochs):
                key = "min_early_stopping_rate"  # the rate puts the first rung too late
            raise ConfigError(
                f"pruner {self.name!r} can never prune within {epochs} epochs with "
                f'{key} = {options[key]}; lower it, or set name = "none"',
                key=f"pruner.{key}",
            )
        return spec

    def build(self, *, epochs: int) -> BasePruner:
        spec = self.for_epochs(epochs)
        return PRUNERS[self.name].make(spec.options, epochs)

    def decision_epochs(self, epochs: int) -> frozenset[int]:
        """The 1-based epochs (reported as `step=epoch`) at which `prune()` can return True."""
        return pruner_decision_epochs(self.name, self.options, epochs)

    def report_epochs(self, history: Sequence[float], *, direction: str) -> tuple[int, ...]:
        """The epochs to `trial.report` now, in order, after epoch `len(history)`.

        `history[e - 1]` is epoch e's metric. Reporting these (and calling `should_prune` when
        there are any) prunes exactly as reporting every epoch would: the decision epoch
        itself, and for the median pruner, which compares the trial's best reported value,
        also the epoch of the best value so far when no earlier call returned it.
        """
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', but got {direction=}")
        epoch = len(history)
        decisions = self.decision_epochs(epoch)
        if epoch not in decisions:
            return ()
        if not PRUNERS[self.name].best_so_far:
            return (epoch,)
        sign = 1.0 if direction == "maximize" else -1.0
        finite = [e for e in range(1, epoch + 1) if not math.isnan(history[e - 1])]
        if not finite:
            return (epoch,)
        best = max(finite, key=lambda e: (sign * history[e - 1], -e))  # earliest of the best
        previous = max((d for d in decisions if d < epoch), default=0)
        # A best at or before `previous` was the best there too, so it was reported then.
        return (best, epoch) if best not in decisions and best > previous else (epoch,)

    def __repr__(self) -> str:
        return spec_repr("PrunerSpec", self.name, self.options)


def pruner_decision_epochs(name: str, options: Options, epochs: int) -> frozenset[int]:
    """The epochs in 1..epochs at which pruner `name` with `options` can prune a trial."""
    entry: PrunerEntry = lookup(PRUNERS, name, what="pruner")
    return entry.epochs(resolve(entry.options, options, what="pruner", name=name), epochs)
