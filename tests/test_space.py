"""The search space: trial + fixed config -> the trial's config, tested with FixedTrial and real
studies."""

from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial

from hpo.errors import ConfigError
from hpo.spec.config import TrainConfig
from hpo.spec.search.space import ParamSpec, SearchSpace, same_value

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = ParamSpec("lr", "float", low=1e-6, high=1e-2, log=True)
OPTIMIZER = ParamSpec("optimizer", "categorical", choices=("sgd", "momentum", "nesterov", "adam"))
MOMENTUM = ParamSpec(
    "momentum", "float", low=0.5, high=0.99, when={"optimizer": ["momentum", "nesterov"]}
)
SPACE = SearchSpace((LR, OPTIMIZER, MOMENTUM))
BASE = TrainConfig(hidden_size_list=(100,) * 6, epochs=50)


def test_param_specs_describe_themselves():
    assert LR.describe() == "lr: float in [1e-06, 0.01], log"
    assert OPTIMIZER.describe() == "optimizer: one of sgd, momentum, nesterov, adam"
    assert MOMENTUM.describe() == (
        "momentum: float in [0.5, 0.99], when optimizer in (momentum, nesterov)"
    )
    batch = ParamSpec("batch_size", "int", low=32, high=256, step=32)
    assert batch.describe() == "batch_size: int in [32, 256], step 32"
    assert ParamSpec("use_batchnorm", "categorical", choices=[True, False]).describe() == (
        "use_batchnorm: one of true, false"
    )
    assert repr(LR) == "ParamSpec(lr: float in [1e-06, 0.01], log)"
    assert repr(SPACE).startswith("SearchSpace(lr: float in [1e-06, 0.01], log; optimizer:")


def test_distributions_include_conditional_parameters():
    assert SPACE.names() == ("lr", "optimizer", "momentum")
    assert SPACE.distributions() == {
        "lr": FloatDistribution(1e-6, 1e-2, log=True),
        "optimizer": CategoricalDistribution(("sgd", "momentum", "nesterov", "adam")),
        "momentum": FloatDistribution(0.5, 0.99),
    }
    assert ParamSpec("batch_size", "int", low=32, high=256, step=32).distribution() == (
        IntDistribution(32, 256, step=32)
    )


def test_when_is_read_only_and_single_values_become_tuples():
    param = ParamSpec("dropout_ratio", "float", low=0.0, high=0.5, when={"use_batchnorm": False})
    assert dict(param.when) == {"use_batchnorm": (False,)}
    with pytest.raises(TypeError):
        param.when["activation"] = ("relu",)  # type: ignore[index]


def test_fixed_trial_with_the_condition_true():
    config = SPACE.suggest(
        FixedTrial({"lr": 0.01, "optimizer": "momentum", "momentum": 0.8}), BASE
    )
    assert (config.optimizer, config.lr, config.momentum) == ("momentum", 0.01, 0.8)
    assert config.hidden_size_list == (100,) * 6  # fixed settings come from the base
    assert config.optimizer_hyperparameters() == {"lr": 0.01, "momentum": 0.8}


def test_fixed_trial_without_the_skipped_conditional_parameter():
    # momentum is not suggested for sgd, so a FixedTrial need not carry it.
    config = SPACE.suggest(FixedTrial({"lr": 1e-3, "optimizer": "sgd"}), BASE)
    assert (config.optimizer, config.lr, config.momentum) == ("sgd", 1e-3, BASE.momentum)


def test_a_condition_on_a_fixed_setting_reads_the_base():
    space = SearchSpace((MOMENTUM,))
    trial = FixedTrial({"momentum": 0.6})
    assert space.suggest(trial, BASE.replace(optimizer="nesterov")).momentum == 0.6
    assert space.suggest(FixedTrial({}), BASE.replace(optimizer="adam")).momentum == 0.9


def test_a_condition_on_a_skipped_parameter_reads_the_base():
    # dropout only without batch norm; batch norm searched only with sgd. With adam, batch
    # norm is not sampled and keeps the base's False, so dropout is sampled.
    space = SearchSpace.ordered(
        [
            ParamSpec("dropout_ratio", "float", low=0.0, high=0.5, when={"use_batchnorm": False}),
            ParamSpec(
                "use_batchnorm", "categorical", choices=(True, False), when={"optimizer": "sgd"}
            ),
            ParamSpec("optimizer", "categorical", choices=("sgd", "adam")),
        ]
    )
    assert space.names() == ("optimizer", "use_batchnorm", "dropout_ratio")
    config = space.suggest(FixedTrial({"optimizer": "adam", "dropout_ratio": 0.3}), BASE)
    assert (config.use_batchnorm, config.dropout_ratio) == (False, 0.3)
    config = space.suggest(FixedTrial({"optimizer": "sgd", "use_batchnorm": True}), BASE)
    assert (config.use_batchnorm, config.dropout_ratio) == (True, 0.0)


def test_virtual_keys_set_hidden_size_list():
    space = SearchSpace(
        (
            ParamSpec("n_hidden_layers", "int", low=1, high=6),
            ParamSpec("hidden_size", "categorical", choices=(50, 100, 200)),
        )
    )
    config = space.suggest(FixedTrial({"n_hidden_layers": 3, "hidden_size": 50}), BASE)
    assert config.hidden_size_list == (50, 50, 50)
    # Only one searched: the other is read from the base's (uniform) list.
    only_size = SearchSpace((ParamSpec("hidden_size", "int", low=10, high=20),))
    assert only_size.suggest(FixedTrial({"hidden_size": 12}), BASE).hidden_size_list == (12,) * 6


def test_string_boolean_and_numeric_choices():
    space = SearchSpace(
        (
            ParamSpec("weight_init_std", "categorical", choices=("he", "xavier", 0.01)),
            ParamSpec("use_batchnorm", "categorical", choices=(True, False)),
        )
    )
    config = space.suggest(FixedTrial({"weight_init_std": "xavier", "use_batchnorm": True}), BASE)
    assert (config.weight_init_std, config.use_batchnorm) == ("xavier", True)
    config = space.suggest(FixedTrial({"weight_init_std": 0.01, "use_batchnorm": False}), BASE)
    assert config.weight_init_std == 0.01


def test_booleans_are_not_numbers_in_conditions():
    assert not same_value(True, 1)
    assert not same_value(0, False)
    assert same_value(1, 1.0)
    assert not same_value("1", 1)
    param = ParamSpec("lr", "float", low=0.1, high=0.2, when={"use_batchnorm": True})
    assert not param.applies({"use_batchnorm": 1})
    assert param.applies({"use_batchnorm": True})


def test_real_study_samples_log_uniform_and_conditions():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(400):
        trial = study.ask()
        config = SPACE.suggest(trial, BASE)
        configs.append((trial.params, config))
        study.tell(trial, 0.0)
    # Log-uniform over four decades: about a quarter of the samples in each.
    decades = [math.floor(math.log10(config.lr)) for _, config in configs]
    for decade in (-6, -5, -4, -3):
        assert 0.15 < decades.count(decade) / len(decades) < 0.35
    for params, config in configs:
        assert ("momentum" in params) == (config.optimizer in ("momentum", "nesterov"))
        if "momentum" in params:
            assert config.momentum == params["momentum"]
        else:
            assert config.momentum == BASE.momentum
    assert {config.optimizer for _, config in configs} == {"sgd", "momentum", "nesterov", "adam"}


@settings(max_examples=60, deadline=None)
@given(
    low_exp=st.floats(-8, -1),
    width=st.floats(0.1, 4),
    optimizer=st.sampled_from(["sgd", "momentum", "nesterov", "adam"]),
    fraction=st.floats(0, 1),
)
def test_fixed_trial_values_come_through_unchanged(low_exp, width, optimizer, fraction):
    low, high = 10**low_exp, 10 ** (low_exp + width)
    lr = low * (high / low) ** fraction
    lr = min(max(lr, low), high)
    space = SearchSpace(
        (ParamSpec("lr", "float", low=low, high=high, log=True), OPTIMIZER, MOMENTUM)
    )
    params = {"lr": lr, "optimizer": optimizer, "momentum": 0.75}
    config = space.suggest(FixedTrial(params), BASE)
    assert (config.lr, config.optimizer) == (lr, optimizer)
    assert config.momentum == (0.75 if optimizer in ("momentum", "nesterov") else BASE.momentum)


@settings(max_examples=40, deadline=None)
@given(
    low=st.integers(1, 50),
    span=st.integers(1, 20),
    step=st.integers(1, 5),
    seed=st.integers(0, 99),
)
def test_int_grids_stay_on_the_grid(low, span, step, seed):
    param = ParamSpec("batch_size", "int", low=low, high=low + span * step, step=step)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    config = SearchSpace((param,)).suggest(trial, BASE)
    assert low <= config.batch_size <= low + span * step
    assert (config.batch_size - low) % step == 0


@pytest.mark.parametrize(
    ("kwargs", "key", "fragment"),
    [
        (
            {"type": "uniform", "low": 0, "high": 1},
            "search.p.type",
            '"float", "int", "categorical"',
        ),
        ({"type": "float", "low": 1.0, "high": 1.0}, "search.p.low", "low must be below high"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "search.p.low", "low > 0"),
        (
            {"type": "float", "low": 1e-3, "high": 1.0, "log": True, "step": 0.1},
            "search.p.step",
            "log",
        ),
        (
            {"type": "float", "low": 0.0, "high": 1.0, "step": 0.3},
            "search.p.step",
            "set high = 0.9",
        ),
        ({"type": "int", "low": 1, "high": 10, "step": 4}, "search.p.step", "set high = 9"),
        ({"type": "int", "low": 1.5, "high": 10}, "search.p.low", "must be an integer"),
        ({"type": "int", "low": True, "high": 10}, "search.p.low", "must be an integer"),
        ({"type": "float", "low": 0.0}, "search.p.high", "needs high"),
        (
            {"type": "float", "low": 0.0, "high": 1.0, "choices": (1,)},
            "search.p.choices",
            "categorical",
        ),
        ({"type": "categorical"}, "search.p.choices", "non-empty list"),
        ({"type": "categorical", "choices": ()}, "search.p.choices", "non-empty list"),
        ({"type": "categorical", "choices": ("a",), "high": 1}, "search.p.high", "only choices"),
        ({"type": "categorical", "choices": ([1],)}, "search.p.choices", "strings, numbers"),
        ({"type": "categorical", "choices": (1, 1.0)}, "search.p.choices", "appears twice"),
    ],
)
def test_bad_param_specs_name_their_key(kwargs, key, fragment):
    with pytest.raises(ConfigError) as error:
        ParamSpec("p", **kwargs)
    assert error.value.key == key
    assert fragment in str(error.value)


def test_a_step_that_divides_the_range_is_accepted():
    assert ParamSpec("p", "float", low=0.0, high=0.5, step=0.1).distribution().high == 0.5
    assert ParamSpec("p", "int", low=32, high=256, step=32).distribution().high == 256


def test_ordering_and_cycles():
    a = ParamSpec("use_batchnorm", "categorical", choices=(True, False), when={"optimizer": "sgd"})
    b = ParamSpec("optimizer", "categorical", choices=("sgd", "adam"))
    with pytest.raises(ConfigError, match="must come after"):
        SearchSpace((a, b))
    assert SearchSpace.ordered([a, b]).names() == ("optimizer", "use_batchnorm")
    looped = ParamSpec("optimizer", "categorical", choices=("sgd",), when={"use_batchnorm": True})
    with pytest.raises(ConfigError, match="cycle: use_batchnorm -> optimizer -> use_batchnorm"):
        SearchSpace.ordered([a, looped])
    with pytest.raises(ConfigError, match="searched twice"):
        SearchSpace((b, b))


def test_only_the_space_module_calls_suggest():
    package = Path(__file__).resolve().parent.parent / "hpo"
    callers = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if re.search(r"\.suggest_(float|int|categorical|uniform|loguniform)\(", path.read_text())
    }
    assert callers == {"spec/search/space.py"}
