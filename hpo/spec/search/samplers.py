"""Samplers by name: the strings of `[sampler]`, mapped to Optuna; pruners re-exported.

Each entry declares its options (type, default, range) as data; a `SamplerSpec` holds the
resolved options, every default included, and builds the sampler with a seed given per worker
(never a file option). Some defaults are pinned where Optuna's differ or may change, so that a
study file means the same under the next Optuna release:

- TPE always receives `multivariate`, `constant_liar` and `n_startup_trials` explicitly. Its
  `warn_independent_sampling` is deprecated and already off by default: not passed.
- GP, CMA-ES and QMC get `warn_independent_sampling=False`: with conditional parameters they
  log a warning for each conditional or categorical parameter of every trial (CMA-ES logged
  96 in 30 trials of studies/chapter6.toml).
- Optuna's ExperimentalWarning (TPE's `group`, QMC, some CMA-ES options) is silenced at build:
  a study file opts in knowingly.

"gp" needs PyTorch, which is optional: a missing `torch` is reported when the spec is built,
so `hpo run` stops before the first trial.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError
from hpo.spec.search.options import Option, Options, lookup, no_check, resolve, spec_repr
from hpo.spec.search.pruners import PRUNERS, PrunerSpec, pruner_decision_epochs

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

    from hpo.spec.search.space import SearchSpace

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "PrunerSpec",
    "SamplerEntry",
    "SamplerSpec",
    "pruner_decision_epochs",
]


@dataclass(frozen=True)
class SamplerEntry:
    """A sampler name's options and factory; `requires` names an optional package."""

    options: Mapping[str, Option]
    make: Callable[..., BaseSampler]  # (options, seed), or (options, seed, space) if uses_space
    check: Callable[[Options], None] = no_check
    requires: str | None = None
    uses_space: bool = False


def _quietly(make: Callable[[], Any]) -> Any:
    """Build without Optuna's ExperimentalWarning: a study file opts in to those knowingly."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return make()


def _random(o: Options, seed: int) -> BaseSampler:
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


def _grid(o: Options, seed: int, space: SearchSpace) -> BaseSampler:
    from optuna.samplers import GridSampler

    class BudgetGridSampler(GridSampler):
        """GridSampler without its `study.stop()` when the grid is done, which works only
        inside `Study.optimize`: the runner's exact budget ends the study instead."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

    return BudgetGridSampler(space.grid(), seed=seed)


def _tpe(o: Options, seed: int) -> BaseSampler:
    from optuna.samplers import TPESampler

    return _quietly(lambda: TPESampler(seed=seed, **o))


def _check_tpe(o: Options) -> None:
    if o["group"] and not o["multivariate"]:
        raise ConfigError("group = true needs multivariate = true", key="sampler.group")


def _gp(o: Options, seed: int) -> BaseSampler:
    _require_torch()
    from optuna.samplers import GPSampler

    return _quietly(lambda: GPSampler(seed=seed, warn_independent_sampling=False, **o))


def _cmaes(o: Options, seed: int) -> BaseSampler:
    from optuna.samplers import CmaEsSampler

    return _quietly(lambda: CmaEsSampler(seed=seed, warn_independent_sampling=False, **o))


def _check_cmaes(o: Options) -> None:
    # The same exclusions as CmaEsSampler.__init__, found at load time rather than at build.
    if o["lr_adapt"] and (o["use_separable_cma"] or o["with_margin"]):
        raise ConfigError(
            "lr_adapt = true cannot be combined with use_separable_cma or with_margin",
            key="sampler.lr_adapt",
        )
    if o["use_separable_cma"] and o["with_margin"]:
        raise ConfigError(
            "use_separable_cma = true cannot be combined with with_margin = true",
            key="sampler.with_margin",
        )


def _qmc(o: Options, seed: int) -> BaseSampler:
    from optuna.samplers import QMCSampler

    return _quietly(lambda: QMCSampler(seed=seed, warn_independent_sampling=False, **o))


_STARTUP = "trials sampled at random before the model is used"
SAMPLERS: dict[str, SamplerEntry] = {
    "random": SamplerEntry({}, _random),
    "tpe": SamplerEntry(
        {
            "n_startup_trials": Option("int", 10, minimum=0, help=_STARTUP),
            "multivariate": Option("bool", True, help="model the parameters jointly"),
            "constant_liar": Option(
                "bool", True, help="treat running trials as bad, so parallel workers spread out"
            ),
            "group": Option(
                "bool", False, help="one joint model per set of parameters sampled together"
            ),
            "n_ei_candidates": Option(
                "int", 24, minimum=1, maximum=10_000, help="candidates per suggestion"
            ),
        },
        _tpe,
        check=_check_tpe,
    ),
    "gp": SamplerEntry(
        {
            "n_startup_trials": Option("int", 10, minimum=0, help=_STARTUP),
            "deterministic_objective": Option("bool", False, help="fit no observation noise"),
        },
        _gp,
        requires="torch",
    ),
    "cmaes": SamplerEntry(
        {
            "n_startup_trials": Option("int", 1, minimum=0, help=_STARTUP),
            "popsize": Option(
                "int", None, minimum=1, maximum=1_000, help="population size (unset: CMA's)"
            ),
            "consider_pruned_trials": Option("bool", False),
            "use_separable_cma": Option("bool", False),
            "with_margin": Option("bool", False, help="for integer and discrete parameters"),
            "lr_adapt": Option("bool", False, help="adapt the learning rate, for noisy tasks"),
        },
        _cmaes,
        check=_check_cmaes,
    ),
    "qmc": SamplerEntry(
        {
            "qmc_type": Option("str", "sobol", choices=("sobol", "halton")),
            "scramble": Option("bool", False),
        },
        _qmc,
    ),
    "grid": SamplerEntry({}, _grid, uses_space=True),
}


def _torch_available() -> bool:
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    return importlib.util.find_spec("torch") is not None


def _torch_missing() -> ConfigError:
    return ConfigError(
        "sampler 'gp' needs PyTorch, an optional dependency that is not installed; install "
        "the CPU build with `pip install torch --index-url https://download.pytorch.org/whl/cpu` "
        f"(or plain `pip install torch`), or choose another sampler: {', '.join(SAMPLERS)}",
        key="sampler.name",
    )


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise _torch_missing() from None


@dataclass(frozen=True, repr=False)
class SamplerSpec:
    """A sampler by name with its resolved options; the seed comes at `build`, per worker."""

    name: str = "tpe"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        entry: SamplerEntry = lookup(SAMPLERS, self.name, what="sampler")
        resolved = resolve(entry.options, self.options, what="sampler", name=self.name)
        entry.check(resolved)
        if entry.requires == "torch" and not _torch_available():
            raise _torch_missing()
        object.__setattr__(self, "options", resolved)

    def build(self, *, seed: int, space: SearchSpace | None = None) -> BaseSampler:
        """The sampler; `space` is required by those that enumerate it (`grid`)."""
        entry = SAMPLERS[self.name]
        if not entry.uses_space:
            return entry.make(self.options, seed)
        if space is None:
            raise ValueError(f"sampler {self.name!r} needs the search space, but got none")
        return entry.make(self.options, seed, space)

    def check_space(self, space: SearchSpace) -> None:
        """Refuse a search space this sampler cannot take (a grid takes choices only)."""
        if SAMPLERS[self.name].uses_space:
            space.grid()

    def __repr__(self) -> str:
        return spec_repr("SamplerSpec", self.name, self.options)
