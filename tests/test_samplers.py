"""Samplers and pruners by name, and the proof that pruners need only their decision epochs."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from types import MappingProxyType

import numpy as np
import optuna
import pytest

from hpo.errors import ConfigError
from hpo.spec.search.pruners import n_brackets
from hpo.spec.search.samplers import (
    PRUNERS,
    SAMPLERS,
    PrunerSpec,
    SamplerSpec,
    pruner_decision_epochs,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- samplers ---------------------------------------------------------------------------


def test_tpe_always_gets_its_pinned_options_explicitly(monkeypatch):
    received = {}

    class Recording(optuna.samplers.TPESampler):
        def __init__(self, **kwargs):
            received.update(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(optuna.samplers, "TPESampler", Recording)
    SamplerSpec("tpe").build(seed=7)
    assert received == {
        "seed": 7,
        "n_startup_trials": 10,
        "multivariate": True,
        "constant_liar": True,
        "group": False,
        "n_ei_candidates": 24,
    }


@pytest.mark.parametrize(
    ("name", "options", "cls"),
    [
        ("random", {}, optuna.samplers.RandomSampler),
        ("tpe", {"group": True, "n_startup_trials": 3}, optuna.samplers.TPESampler),
        ("cmaes", {"popsize": 8, "with_margin": True}, optuna.samplers.CmaEsSampler),
        ("qmc", {"qmc_type": "halton", "scramble": True}, optuna.samplers.QMCSampler),
    ],
)
def test_each_sampler_builds_without_warnings(name, options, cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ExperimentalWarning for group, QMC, with_margin
        sampler = SamplerSpec(name, options).build(seed=3)
    assert type(sampler) is cls


def test_resolved_options_hold_every_default_and_are_read_only():
    spec = SamplerSpec("cmaes", {"n_startup_trials": 4})
    assert dict(spec.options) == {
        "n_startup_trials": 4,
        "popsize": None,
        "consider_pruned_trials": False,
        "use_separable_cma": False,
        "with_margin": False,
        "lr_adapt": False,
    }
    assert isinstance(spec.options, MappingProxyType)
    with pytest.raises(TypeError):
        spec.options["popsize"] = 3  # type: ignore[index]
    assert SamplerSpec("cmaes", spec.options) == spec  # resolving again changes nothing
    assert repr(SamplerSpec("qmc")) == "SamplerSpec('qmc', qmc_type='sobol', scramble=False)"


def test_every_declared_option_is_an_argument_of_the_factory():
    # Building with every option away from its default catches a declared name Optuna lacks.
    for name, entry in SAMPLERS.items():
        if entry.requires == "torch" and not _has_torch():
            continue
        for key, option in entry.options.items():
            value = {"bool": True, "int": 2, "str": option.choices[-1] if option.choices else ""}
            options = {key: value[option.kind]}
            if key == "group":
                options["multivariate"] = True
            SamplerSpec(name, options).build(seed=0)


@pytest.mark.parametrize(
    ("name", "options", "key", "fragment"),
    [
        ("bayes", {}, "sampler.name", "choose one of random, tpe, gp, cmaes, qmc"),
        ("tpe", {"n_startup": 3}, "sampler.n_startup", "its options are n_startup_trials"),
        ("tpe", {"multivariate": "yes"}, "sampler.multivariate", "true or false for sampler"),
        ("tpe", {"n_startup_trials": True}, "sampler.n_startup_trials", "an integer >= 0"),
        ("tpe", {"n_startup_trials": -1}, "sampler.n_startup_trials", "but got -1"),
        ("tpe", {"group": True, "multivariate": False}, "sampler.group", "multivariate = true"),
        ("random", {"multivariate": True}, "sampler.multivariate", "it takes no options"),
        ("tpe", {"seed": 1}, "sampler.seed", "comes from `seed` in [study]"),
        ("qmc", {"qmc_type": "latin"}, "sampler.qmc_type", 'one of "sobol", "halton"'),
        ("cmaes", {"lr_adapt": True, "with_margin": True}, "sampler.lr_adapt", "cannot be"),
        ("cmaes", {"popsize": 0}, "sampler.popsize", "an integer from 1 to 1,000"),
    ],
)
def test_bad_sampler_settings_say_what_is_allowed(name, options, key, fragment):
    with pytest.raises(ConfigError) as error:
        SamplerSpec(name, options)
    assert error.value.key == key
    assert fragment in str(error.value)


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_gp_without_torch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs PyTorch.*pip install torch") as error:
        SamplerSpec("gp")
    assert error.value.key == "sampler.name"
    assert "optional" in str(error.value)


def test_gp_build_checks_torch_again(monkeypatch):
    # A spec made where torch exists, built in a process where it does not.
    spec = object.__new__(SamplerSpec)
    object.__setattr__(spec, "name", "gp")
    object.__setattr__(spec, "options", MappingProxyType(dict(SAMPLERS["gp"].options)))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigError, match="pip install torch"):
        spec.build(seed=0)


@pytest.mark.skipif(not _has_torch(), reason="PyTorch is optional and not installed")
def test_gp_builds_when_torch_is_installed():
    sampler = SamplerSpec("gp", {"n_startup_trials": 3}).build(seed=0)
    assert isinstance(sampler, optuna.samplers.GPSampler)


# --- pruners: construction --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("none", optuna.pruners.NopPruner),
        ("median", optuna.pruners.MedianPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
    ],
)
def test_each_pruner_builds(name, cls):
    assert type(PrunerSpec(name).build(epochs=50)) is cls


def test_hyperband_max_resource_defaults_to_the_runs_epochs():
    spec = PrunerSpec("hyperband")
    assert spec.options["max_resource"] is None
    resolved = spec.for_epochs(50)
    assert dict(resolved.options) == {
        "min_resource": 5,
        "max_resource": 50,
        "reduction_factor": 3,
        "bootstrap_count": 0,
    }
    assert resolved.build(epochs=50)._max_resource == 50
    assert (
        PrunerSpec("hyperband", {"max_resource": 30}).for_epochs(50).options["max_resource"] == 30
    )


@pytest.mark.parametrize(
    ("name", "options", "epochs", "key", "fragment"),
    [
        ("asha", {}, 50, "pruner.name", "none, median, successive_halving, hyperband"),
        ("median", {"n_warmup_steps": -1}, 50, "pruner.n_warmup_steps", ">= 0"),
        ("median", {"interval_steps": 0}, 50, "pruner.interval_steps", ">= 1"),
        ("median", {"n_warmup_steps": 1.5}, 50, "pruner.n_warmup_steps", "but got 1.5"),
        ("median", {"n_warmup_steps": 60}, 50, "pruner.n_warmup_steps", "never prune"),
        ("successive_halving", {"min_resource": "auto"}, 50, "pruner.min_resource", "integer"),
        ("successive_halving", {"reduction_factor": 1}, 50, "pruner.reduction_factor", ">= 2"),
        ("successive_halving", {"min_resource": 51}, 50, "pruner.min_resource", "never prune"),
        ("hyperband", {"max_resource": 60}, 50, "pruner.max_resource", "<= the run's epochs"),
        ("hyperband", {"max_resource": 4}, 50, "pruner.max_resource", ">= min_resource"),
        ("none", {"n_warmup_steps": 3}, 50, "pruner.n_warmup_steps", "takes no options"),
    ],
)
def test_bad_pruner_settings_say_what_is_allowed(name, options, epochs, key, fragment):
    with pytest.raises(ConfigError) as error:
        PrunerSpec(name, options).for_epochs(epochs)
    assert error.value.key == key
    assert fragment in str(error.value)


# --- pruners: decision epochs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "epochs", "expected"),
    [
        ("none", {}, 50, set()),
        ("median", {}, 50, set(range(10, 51))),
        ("median", {"n_warmup_steps": 0, "interval_steps": 5}, 20, {5, 10, 15, 20}),
        ("median", {"n_warmup_steps": 3, "interval_steps": 4}, 20, {3, 7, 11, 15, 19}),
        ("successive_halving", {}, 50, {5, 15, 45}),
        ("successive_halving", {"min_resource": 1, "reduction_factor": 2}, 20, {1, 2, 4, 8, 16}),
        ("successive_halving", {"min_resource": 2, "min_early_stopping_rate": 1}, 50, {6, 18}),
        ("hyperband", {}, 50, {5, 15, 45}),
        ("hyperband", {"min_resource": 1, "max_resource": 9}, 30, {1, 3, 9, 27}),
    ],
)
def test_decision_epochs(name, options, epochs, expected):
    assert PrunerSpec(name, options).decision_epochs(epochs) == expected
    assert pruner_decision_epochs(name, options, epochs) == expected


def test_report_epochs_adds_the_best_epoch_only_for_the_median_pruner():
    median = PrunerSpec("median", {"n_warmup_steps": 3, "interval_steps": 2})  # decides 3, 5, 7
    history = [0.1, 0.6, 0.4, 0.3, 0.5, 0.7, 0.2]
    reports = [median.report_epochs(history[:e], direction="maximize") for e in range(1, 8)]
    # Epoch 2's 0.6 is the best at epoch 3 (reported with it) and still at 5 (not again);
    # epoch 6's 0.7 is the best at epoch 7.
    assert reports == [(), (), (2, 3), (), (5,), (), (6, 7)]
    reports = [median.report_epochs(history[:e], direction="minimize") for e in range(1, 8)]
    assert reports == [(), (), (1, 3), (), (5,), (), (7,)]
    halving = PrunerSpec("successive_halving", {"min_resource": 3, "reduction_factor": 2})
    assert [halving.report_epochs(history[:e], direction="maximize") for e in (2, 3, 6)] == [
        (),
        (3,),
        (6,),
    ]


def _curve(number: int, a: float, k: float, epoch: int) -> float:
    """A learning curve: rises like 1 - exp(-epoch / k) towards `a`, then declines at a rate
    drawn from the trial number (overfitting), with noise derived from (number, epoch)."""
    decline = np.random.default_rng(number).uniform(0.0, 0.06)
    noise = np.random.default_rng([number, epoch]).normal(0.0, 0.05)
    return a * (1 - math.exp(-epoch / k)) - decline * epoch + noise


Reporter = Callable[[list[float]], tuple[int, ...]]


def _run(spec: PrunerSpec, epochs: int, direction: str, reporter: Reporter) -> list[int | None]:
    """Each trial's pruning epoch (None: complete) in a study whose objective reports the
    epochs `reporter` names after each epoch. The study's name is fixed: Hyperband assigns
    brackets by hashing it with the trial number."""
    sign = 1.0 if direction == "maximize" else -1.0
    study = optuna.create_study(
        study_name="proof",
        direction=direction,
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=spec.build(epochs=epochs),
    )
    outcomes: list[int | None] = []

    def objective(trial: optuna.Trial) -> float:
        a, k = trial.suggest_float("a", 0.3, 1.0), trial.suggest_float("k", 0.5, 8.0)
        history: list[float] = []
        for epoch in range(1, epochs + 1):
            history.append(sign * _curve(trial.number, a, k, epoch))
            steps = reporter(history)
            for step in steps:
                trial.report(history[step - 1], step)
            if steps and trial.should_prune():
                outcomes.append(epoch)
                raise optuna.TrialPruned()
        outcomes.append(None)
        return history[-1]

    study.optimize(objective, n_trials=60)
    return outcomes


PROOF_CONFIGS = [
    ("median", {"n_startup_trials": 3, "n_warmup_steps": 3, "interval_steps": 2}, 12),
    ("median", {"n_startup_trials": 2, "n_warmup_steps": 0, "interval_steps": 1}, 8),
    ("successive_halving", {"min_resource": 1, "reduction_factor": 2}, 12),
    (
        "successive_halving",
        {
            "min_resource": 2,
            "reduction_factor": 3,
            "min_early_stopping_rate": 1,
            "bootstrap_count": 1,
        },
        20,
    ),
    # Four brackets, whose first rungs are epochs 1, 3, 9 and 27.
    ("hyperband", {"min_resource": 1, "reduction_factor": 3}, 27),
    # max_resource below epochs: three brackets, rungs still up to epoch 16.
    ("hyperband", {"min_resource": 2, "reduction_factor": 2, "max_resource": 10}, 16),
]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
@pytest.mark.parametrize(("name", "options", "epochs"), PROOF_CONFIGS)
def test_reporting_only_what_report_epochs_names_prunes_exactly_as_reporting_every_epoch(
    name, options, epochs, direction
):
    spec = PrunerSpec(name, options).for_epochs(epochs)
    decisions = spec.decision_epochs(epochs)

    every = _run(spec, epochs, direction, lambda history: (len(history),))
    sparse = _run(spec, epochs, direction, lambda h: spec.report_epochs(h, direction=direction))

    assert sparse == every
    pruned_at = {epoch for epoch in every if epoch is not None}
    assert pruned_at <= decisions  # reporting every epoch, nothing prunes elsewhere
    assert any(epoch is None for epoch in every)
    if name != "median":
        # Rung pruners: reporting exactly the decision epochs suffices, and every one of them
        # pruned some trial here, so the set is not larger than needed.
        assert pruned_at == decisions
    if name == "hyperband":  # with brackets whose rungs differ
        o = spec.options
        assert n_brackets(o["min_resource"], o["max_resource"], o["reduction_factor"]) > 2


def test_the_median_pruner_needs_the_best_epoch_reported_too():
    # It compares a trial's best reported value with the others' median (PercentilePruner
    # `_get_best_intermediate_result_over_steps`), so with declining curves, reporting only
    # the decision epochs hides an early best and prunes differently.
    name, options, epochs = PROOF_CONFIGS[0]
    spec = PrunerSpec(name, options).for_epochs(epochs)
    decisions = spec.decision_epochs(epochs)
    every = _run(spec, epochs, "maximize", lambda history: (len(history),))
    only_decisions = _run(
        spec, epochs, "maximize", lambda h: (len(h),) if len(h) in decisions else ()
    )
    assert only_decisions != every


@pytest.mark.parametrize(
    ("name", "options", "epochs"),
    [
        ("median", {"n_startup_trials": 3, "n_warmup_steps": 3, "interval_steps": 2}, 12),
        ("median", {"n_startup_trials": 1, "n_warmup_steps": 0, "interval_steps": 1}, 6),
        ("successive_halving", {"min_resource": 1, "reduction_factor": 2}, 12),
        ("successive_halving", {"min_resource": 2, "min_early_stopping_rate": 1}, 20),
    ],
)
def test_every_decision_epoch_can_prune(name, options, epochs):
    """A trial that is the best until epoch `turn` and the worst from then on is pruned at the
    first decision epoch from `turn` on, for every `turn`: no decision epoch is spurious."""
    spec = PrunerSpec(name, options).for_epochs(epochs)
    decisions = sorted(spec.decision_epochs(epochs))
    for turn in range(1, epochs + 1):
        study = optuna.create_study(direction="maximize", pruner=spec.build(epochs=epochs))
        pruned_at: list[int] = []

        def objective(trial: optuna.Trial, turn: int = turn, pruned_at: list = pruned_at) -> float:
            tested = trial.number == 3  # three ordinary trials complete first
            for epoch in range(1, epochs + 1):
                # Ordinary trials rise as `epoch`; the tested one is ahead until `turn`, then
                # stalls below (a median compares its best so far; halving, its latest value).
                if not tested:
                    value = float(epoch)
                elif name == "median":
                    value = epoch + 0.5 if epoch < turn else turn - 0.5
                else:
                    value = epoch + 0.5 if epoch < turn else 0.0
                trial.report(value, epoch)
                if trial.should_prune():
                    pruned_at.append(epoch)
                    raise optuna.TrialPruned()
            return float(epochs)

        study.optimize(objective, n_trials=4)
        expected = next((d for d in decisions if d >= turn), None)
        assert pruned_at == ([expected] if expected is not None else []), turn


def test_registries_and_documentation_agree():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "studies" / "README.md").read_text()
    for registry in (SAMPLERS, PRUNERS):
        for name, entry in registry.items():
            assert f"`{name}`" in readme
            for option in entry.options:
                assert f"`{option}`" in readme, option
