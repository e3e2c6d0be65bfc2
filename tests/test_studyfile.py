"""Study files: TOML -> a validated, frozen StudySpec, and one test per class of mistake."""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from pathlib import Path

import pytest

from hpo.errors import ConfigError
from hpo.spec.config import DataConfig, TrainConfig
from hpo.spec.keys import DATA_KEYS, MODEL_KEYS, SECTION_KEYS, TRAIN_KEYS, VIRTUAL_KEYS
from hpo.spec.study_file import StudySettings, StudySpec, load_study_file, parse_study

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def parse(text: str, **kwargs) -> StudySpec:
    kwargs.setdefault("environ", {})
    return parse_study(tomllib.loads(text), source="mine.toml", **kwargs)


# --- the shipped files ------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_file_loads(path, tmp_path, monkeypatch):
    # Loading reads no data: the data directory does not even exist, and loaders are gone.
    import hpo.spec.data

    for name in ("load_dataset", "load_splits", "split_dataset"):
        monkeypatch.setattr(hpo.spec.data, name, None)
    spec = load_study_file(path, environ={"HPO_DATA_DIR": str(tmp_path / "nowhere")})
    assert spec.path == path
    assert spec.source_text == path.read_text()
    assert spec.study.name == path.stem
    if spec.data.dataset != "digits":
        assert spec.data.data_dir == str(tmp_path / "nowhere" / spec.data.dataset)
    assert spec.space.names()
    assert spec.pruner.name == "none" or spec.pruner.decision_epochs(spec.base.epochs)


def test_book_65_is_the_books_experiment():
    spec = load_study_file(STUDIES / "book-6.5.toml", environ={})
    assert spec.study == StudySettings(
        name="book-6.5", metric="val_acc", direction="maximize", n_trials=100, seed=0
    )
    assert (spec.data.dataset, spec.data.n_samples, spec.data.subset) == ("mnist", 500, "first")
    assert spec.data.val_fraction == 0.2
    assert spec.base == TrainConfig(
        hidden_size_list=(100,) * 6,
        activation="relu",
        weight_init_std="he",
        optimizer="sgd",
        epochs=50,
        batch_size=100,
    )
    assert spec.space.describe() == (
        "lr: float in [1e-06, 0.01], log\nweight_decay_lambda: float in [1e-08, 0.0001], log"
    )
    assert (spec.sampler.name, spec.pruner.name) == ("random", "none")


def test_book_65_tpe_changes_only_the_sampler_and_pruner():
    book = load_study_file(STUDIES / "book-6.5.toml", environ={})
    tpe = load_study_file(STUDIES / "book-6.5-tpe.toml", environ={})
    assert (tpe.data, tpe.base, tpe.space) == (book.data, book.base, book.space)
    assert tpe.study.n_trials == book.study.n_trials
    assert dict(tpe.sampler.options) == {
        "n_startup_trials": 10,
        "multivariate": True,
        "constant_liar": True,
        "group": False,
        "n_ei_candidates": 24,
    }
    assert (tpe.pruner.name, tpe.pruner.options["n_warmup_steps"]) == ("median", 10)


def test_chapter6_searches_the_chapters_techniques():
    spec = load_study_file(STUDIES / "chapter6.toml", environ={})
    assert set(spec.space.names()) == {
        "optimizer",
        "lr",
        "momentum",
        "weight_init_std",
        "use_batchnorm",
        "dropout_ratio",
        "weight_decay_lambda",
    }
    optimizer, momentum = (p for p in spec.space.params if p.name in ("optimizer", "momentum"))
    assert set(optimizer.choices) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"}
    assert dict(momentum.when) == {"optimizer": ("momentum", "nesterov")}
    assert spec.sampler.options["group"] is True


def test_quickstart_needs_no_download():
    spec = load_study_file(STUDIES / "quickstart.toml", environ={})
    assert (spec.data.dataset, spec.data.data_dir, spec.data.val_fraction) == ("digits", None, 0.2)
    assert spec.base.optimizer == "adam"
    assert (spec.sampler.name, spec.pruner.name) == ("tpe", "median")


# --- defaults, paths and the environment ------------------------------------------------


def test_an_empty_file_is_all_defaults():
    spec = parse("")
    assert spec.study == StudySettings(name="mine")
    assert (spec.data, spec.base, spec.space.params) == (DataConfig(), TrainConfig(), ())
    assert (spec.sampler.name, spec.pruner.name) == ("tpe", "none")
    assert spec.path is None


def test_data_dir_rule(tmp_path, monkeypatch):
    study = tmp_path / "studies" / "s.toml"
    study.parent.mkdir()
    study.write_text('[data]\ndataset = "mnist"\ndata_dir = "../data/mnist"\n')
    # The file's relative data_dir is taken from the file's directory, not the cwd.
    monkeypatch.chdir("/")
    assert load_study_file(study, environ={}).data.data_dir == str(
        tmp_path / "studies" / ".." / "data" / "mnist"
    )
    # HPO_DATA_DIR overrides the file.
    spec = load_study_file(study, environ={"HPO_DATA_DIR": "/srv/data"})
    assert spec.data.data_dir == "/srv/data/mnist"
    # Without either: ~/.cache/hpo/<dataset>.
    spec = parse('[data]\ndataset = "kmnist"')
    assert spec.data.data_dir == str(Path.home() / ".cache" / "hpo" / "kmnist")
    # `~` is expanded.
    spec = parse('[data]\ndataset = "mnist"\ndata_dir = "~/mnist"')
    assert spec.data.data_dir == str(Path.home() / "mnist")


def test_environ_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("HPO_DATA_DIR", "/from/env")
    spec = parse_study({"data": {"dataset": "mnist"}}, source="s.toml")
    assert spec.data.data_dir == "/from/env/mnist"


def test_npz_path_is_relative_to_the_study_file(tmp_path):
    spec = parse('[data]\ndataset = "npz"\npath = "arrays.npz"', base_dir=tmp_path)
    assert spec.data.path == str(tmp_path / "arrays.npz")


def test_virtual_hidden_keys(tmp_path):
    spec = parse("[model]\nn_hidden_layers = 3\nhidden_size = 50")
    assert spec.base.hidden_size_list == (50, 50, 50)
    spec = parse(
        '[model]\nn_hidden_layers = 4\n[search.hidden_size]\ntype = "int"\nlow = 10\nhigh = 90'
    )
    assert spec.base.hidden_size_list == (100,) * 4  # uniform, read back by the space


def test_spec_is_frozen_and_its_repr_is_short():
    spec = parse('[search.lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-1\nlog = true')
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.base = TrainConfig()  # type: ignore[misc]
    assert repr(spec) == (
        "StudySpec('mine', path=None, val_acc (maximize), n_trials=100, seed=0, "
        "dataset='digits', searching [lr], SamplerSpec('tpe', n_startup_trials=10, "
        "multivariate=True, constant_liar=True, group=False, n_ei_candidates=24), "
        "PrunerSpec('none'))"
    )


# --- overrides --------------------------------------------------------------------------


def test_overrides_keep_the_files_options_only_for_the_same_name():
    spec = load_study_file(STUDIES / "chapter6.toml", environ={})
    same = spec.with_overrides(sampler="tpe", pruner="median", n_trials=5, seed=3, timeout=60)
    assert (same.sampler, same.pruner) == (spec.sampler, spec.pruner)
    assert (same.study.n_trials, same.study.seed, same.study.timeout) == (5, 3, 60.0)
    assert same.source_text == spec.source_text
    other = spec.with_overrides(sampler="random", pruner="hyperband", study_name="again")
    assert other.sampler.name == "random"
    assert dict(other.pruner.options) == {
        "min_resource": 5,
        "max_resource": 50,
        "reduction_factor": 3,
        "bootstrap_count": 0,
    }
    assert other.study.name == "again"
    assert spec.with_overrides(sampler="tpe").sampler.options["group"] is True
    assert spec.with_overrides() == spec


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ({"sampler": "bayes"}, "sampler.name", "choose one of random, tpe"),
        ({"pruner": "asha"}, "pruner.name", "choose one of none, median"),
        ({"n_trials": 0}, "study.n_trials", "an integer from 1 to 1,000,000"),
        ({"seed": -1}, "study.seed", "an integer from 0 to 2**63 - 1"),
        ({"timeout": -5}, "study.timeout", "> 0"),
        ({"study_name": ""}, "study.name", "non-empty"),
    ],
)
def test_overrides_are_validated(override, key, fragment):
    spec = parse("")
    with pytest.raises(ConfigError) as error:
        spec.with_overrides(**override)
    assert (error.value.key, error.value.source) == (key, "override")
    assert fragment in str(error.value)


# --- one test per class of mistake ------------------------------------------------------


def test_toml_syntax_errors_give_line_and_column(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[study]\nn_trials = = 3\n")
    with pytest.raises(ConfigError, match=r"broken.toml: invalid TOML: .*line 2, column 12"):
        load_study_file(path)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the study file"):
        load_study_file(tmp_path / "absent.toml")


MISTAKES = {
    "unknown section": ("[stuy]\nn_trials = 1", "stuy", "unknown section [stuy]; the sections"),
    "top-level key": ("n_trials = 3", "n_trials", "n_trials belongs in [study]"),
    "unknown key": ("[train]\nlearning_rate = 0.1", "train.learning_rate", "keys of [train] are"),
    "wrong section": ('[train]\nactivation = "relu"', "train.activation", "belongs in [model]"),
    "wrong section, sampler": ("[sampler]\nn_trials = 5", "sampler.n_trials", "in [study]"),
    "string for int": ('[study]\nn_trials = "ten"', "study.n_trials", 'an integer, but got "ten"'),
    "float for int": ("[study]\nn_trials = 10.0", "study.n_trials", "an integer, but got 10.0"),
    "string for bool": ('[model]\nuse_batchnorm = "yes"', "model.use_batchnorm", "true or false"),
    "bool for number": ("[train]\nlr = true", "train.lr", "a finite number, but got true"),
    "bool for int": ("[study]\nseed = false", "study.seed", "an integer, but got false"),
    "nan": ("[train]\nlr = nan", "train.lr", "finite number"),
    "list for number": ("[model]\ndropout_ratio = [0.1]", "model.dropout_ratio", "a list"),
    "n_trials < 1": ("[study]\nn_trials = 0", "study.n_trials", "an integer from 1 to 1,000,000"),
    "timeout <= 0": ("[study]\ntimeout = 0", "study.timeout", "seconds > 0"),
    "seed < 0": ("[study]\nseed = -1", "study.seed", "an integer from 0 to 2**63 - 1"),
    "val_fraction": ("[data]\nval_fraction = 1.5", "data.val_fraction", "in (0, 1), but got 1.5"),
    "dataset": ('[data]\ndataset = "cifar"', "data.dataset", "must be one of ['digits'"),
    "npz without path": ('[data]\ndataset = "npz"', "data.path", "needs `path`"),
    "data_dir for digits": ('[data]\ndata_dir = "d"', "data.data_dir", "only to the IDX"),
    "epochs < 1": ("[train]\nepochs = 0", "train.epochs", "positive integer, but got 0"),
    "lr = 0": ("[train]\nlr = 0.0", "train.lr", "lr must be in (0, inf), but got lr=0.0"),
    "activation": ('[model]\nactivation = "gelu"', "model.activation", "'relu', 'sigmoid'"),
    "unused momentum": ("[train]\nmomentum = 1.0", "train.momentum", "must be in [0, 1)"),
    "hidden size 0": (
        "[model]\nhidden_size_list = [100, 0]",
        "model.hidden_size_list",
        "positive",
    ),
    "metric": ('[study]\nmetric = "acc"', "study.metric", '"val_acc", "val_loss", but got "acc"'),
    "direction": (
        '[study]\nmetric = "val_loss"\ndirection = "maximize"',
        "study.direction",
        '"val_loss" is to minimize, but got direction = "maximize"',
    ),
    "hidden list and virtual": (
        "[model]\nhidden_size_list = [10]\nn_hidden_layers = 2\nhidden_size = 3",
        "model.hidden_size_list",
        "cannot be combined with n_hidden_layers and hidden_size",
    ),
    "one virtual key": (
        "[model]\nn_hidden_layers = 2",
        "model.n_hidden_layers",
        "needs hidden_size",
    ),
    "one virtual key searched": (
        '[search.hidden_size]\ntype = "int"\nlow = 10\nhigh = 100',
        "search.hidden_size",
        "needs n_hidden_layers",
    ),
    "low >= high": (
        '[search.lr]\ntype = "float"\nlow = 0.1\nhigh = 0.01',
        "search.lr.low",
        "low must be below high, but got low = 0.1, high = 0.01",
    ),
    "log with low <= 0": (
        '[search.lr]\ntype = "float"\nlow = 0.0\nhigh = 0.01\nlog = true',
        "search.lr.low",
        "log scale needs low > 0",
    ),
    "step with log": (
        '[search.lr]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\nlog = true\nstep = 1e-3',
        "search.lr.step",
        "cannot be combined with log",
    ),
    "step not dividing": (
        '[search.dropout_ratio]\ntype = "float"\nlow = 0.0\nhigh = 0.5\nstep = 0.2',
        "search.dropout_ratio.step",
        "set high = 0.4",
    ),
    "categorical without choices": (
        '[search.optimizer]\ntype = "categorical"',
        "search.optimizer.choices",
        "non-empty list of choices",
    ),
    "empty choices": ("[search.optimizer]\nchoices = []", "search.optimizer.choices", "non-empty"),
    "low for categorical": (
        '[search.optimizer]\nchoices = ["sgd"]\nlow = 1',
        "search.optimizer.low",
        "a categorical takes only choices",
    ),
    "invalid optimizer choice": (
        '[search.optimizer]\nchoices = ["sgd", "adamw"]',
        "search.optimizer.choices",
        "['adagrad', 'adam', 'momentum', 'nesterov', 'rmsprop', 'sgd'], but got 'adamw'",
    ),
    "invalid activation choice": (
        '[search.activation]\nchoices = ["gelu"]',
        "search.activation.choices",
        "activation must be one of ['relu', 'sigmoid', 'tanh'], but got activation='gelu'",
    ),
    "batch_size low < 1": (
        '[search.batch_size]\ntype = "int"\nlow = 0\nhigh = 10',
        "search.batch_size.low",
        "positive integer, but got 0",
    ),
    "dropout high = 1": (
        '[search.dropout_ratio]\ntype = "float"\nlow = 0.0\nhigh = 1.0',
        "search.dropout_ratio.high",
        "dropout_ratio must be in [0, 1), but got dropout_ratio=1.0",
    ),
    "lr low = 0": (
        '[search.lr]\ntype = "float"\nlow = 0\nhigh = 1',
        "search.lr.low",
        "lr must be in (0, inf)",
    ),
    "momentum high = 1": (
        '[search.momentum]\ntype = "float"\nlow = 0.5\nhigh = 1.0',
        "search.momentum.high",
        "momentum must be in [0, 1)",
    ),
    "float type for int setting": (
        '[search.batch_size]\ntype = "float"\nlow = 1\nhigh = 10',
        "search.batch_size.type",
        'searched as type = "int" or "categorical"',
    ),
    "missing type": ("[search.lr]\nlow = 1e-3\nhigh = 0.1", "search.lr.type", "needs type"),
    "unknown param key": (
        '[search.lr]\ntype = "float"\nlow = 1e-3\nhigh = 0.1\nlogscale = true',
        "search.lr.logscale",
        "keys of a searched setting are type, low, high, log, step, choices, when",
    ),
    "search value not a table": ("[search]\nlr = 0.1", "search.lr", "must be a table"),
    "fixed and searched": (
        '[train]\nlr = 0.1\n[search.lr]\ntype = "float"\nlow = 1e-3\nhigh = 0.1',
        "search.lr",
        "both set in [train] (lr = 0.1) and searched in [search.lr]; remove one",
    ),
    "search epochs": (
        '[search.epochs]\ntype = "int"\nlow = 1\nhigh = 10',
        "search.epochs",
        "epochs cannot be searched",
    ),
    "search dtype": (
        '[search.dtype]\nchoices = ["float32"]',
        "search.dtype",
        "cannot be searched",
    ),
    "search hidden_size_list": (
        "[search.hidden_size_list]\nchoices = [1]",
        "search.hidden_size_list",
        "search n_hidden_layers and hidden_size instead",
    ),
    "search a data key": (
        '[search.n_samples]\ntype = "int"\nlow = 1\nhigh = 10',
        "search.n_samples",
        "is a [data] setting",
    ),
    "search an unknown key": (
        '[search.foo]\ntype = "int"\nlow = 1\nhigh = 10',
        "search.foo",
        "the settings that can be searched are activation",
    ),
    "when on an unknown setting": (
        '[search.momentum]\ntype = "float"\nlow = 0.5\nhigh = 0.9\n'
        'when = { optimiser = ["momentum"] }',
        "search.momentum.when.optimiser",
        "unknown setting 'optimiser'; a condition can test",
    ),
    "when value not among the choices": (
        '[search.optimizer]\nchoices = ["sgd", "momentum"]\n'
        '[search.momentum]\ntype = "float"\nlow = 0.5\nhigh = 0.9\n'
        'when = { optimizer = ["nesterov"] }',
        "search.momentum.when.optimizer",
        '"nesterov" is never a value of optimizer, which is searched as optimizer: one of',
    ),
    "when value outside the range": (
        '[search.lr]\ntype = "float"\nlow = 1e-3\nhigh = 0.1\n'
        '[search.momentum]\ntype = "float"\nlow = 0.5\nhigh = 0.9\nwhen = { lr = 0.5 }',
        "search.momentum.when.lr",
        "0.5 is never a value of lr",
    ),
    "when value of the wrong type": (
        '[search.momentum]\ntype = "float"\nlow = 0.5\nhigh = 0.9\nwhen = { use_batchnorm = 1 }',
        "search.momentum.when.use_batchnorm",
        "1 is never a value of use_batchnorm",
    ),
    "when never holds for a fixed setting": (
        '[train]\noptimizer = "adam"\n'
        '[search.momentum]\ntype = "float"\nlow = 0.5\nhigh = 0.9\n'
        'when = { optimizer = ["momentum"] }',
        "search.momentum.when.optimizer",
        'the condition never holds: optimizer is not searched, and is "adam" (set in [train])',
    ),
    "when cycle": (
        '[search.optimizer]\nchoices = ["sgd", "momentum"]\nwhen = { use_batchnorm = true }\n'
        '[search.use_batchnorm]\nchoices = [true, false]\nwhen = { optimizer = "sgd" }',
        "search.optimizer.when",
        "cycle: optimizer -> use_batchnorm -> optimizer",
    ),
    "unknown sampler": (
        '[sampler]\nname = "bayes"',
        "sampler.name",
        'unknown sampler "bayes"; choose one of random, tpe, gp, cmaes, qmc',
    ),
    "unknown pruner": (
        '[pruner]\nname = "asha"',
        "pruner.name",
        "choose one of none, median, successive_halving, hyperband",
    ),
    "unknown sampler option": (
        '[sampler]\nname = "tpe"\nn_startup = 3',
        "sampler.n_startup",
        "its options are n_startup_trials (an integer >= 0, default 10), multivariate",
    ),
    "ill-typed sampler option": (
        '[sampler]\nname = "tpe"\nmultivariate = "yes"',
        "sampler.multivariate",
        "must be true or false for sampler 'tpe', but got \"yes\"",
    ),
    "unknown pruner option": (
        '[pruner]\nname = "median"\nwarmup = 3',
        "pruner.warmup",
        "its options are n_startup_trials",
    ),
    "ill-typed pruner option": (
        '[pruner]\nname = "median"\nn_warmup_steps = -1',
        "pruner.n_warmup_steps",
        "an integer >= 0 for pruner 'median', but got -1",
    ),
    "pruner that never prunes": (
        '[pruner]\nname = "median"\nn_warmup_steps = 60',
        "pruner.n_warmup_steps",
        "can never prune within 20 epochs",
    ),
    "seed as a sampler option": ("[sampler]\nseed = 3", "sampler.seed", "comes from `seed`"),
}


# The studies that train nothing (hpo.spec.kinds): a minimal valid file of each kind, to which each
# mistake below adds one thing.
PATHS_STUDY = (
    '[study]\nkind = "optimizer_paths"\n{study}\n[paths]\nlr = {{ sgd = 0.95 }}\n{paths}\n'
    '[search.optimizer]\nchoices = ["sgd"]\n{rest}'
)
ACTIVATIONS_STUDY = (
    '[study]\nkind = "activations"\n{study}\n[model]\nhidden_size_list = [10, 10]\n{model}\n'
    '[search.activation]\nchoices = ["sigmoid", "relu"]\n{rest}'
)


def _paths(study: str = "", paths: str = "", rest: str = "") -> str:
    return PATHS_STUDY.format(study=study, paths=paths, rest=rest)


def _activations(study: str = "", model: str = "", rest: str = "") -> str:
    return ACTIVATIONS_STUDY.format(study=study, model=model, rest=rest)


KIND_MISTAKES = {
    "unknown kind": (
        '[study]\nkind = "paths"',
        "study.kind",
        'must be one of "training", "optimizer_paths", "activations", but got "paths"',
    ),
    "metric of another kind": (
        _paths(study='metric = "val_acc"'),
        "study.metric",
        'must be one of "f" for kind = "optimizer_paths", but got "val_acc"',
    ),
    "direction against the kind's metric": (
        _activations(study='direction = "minimize"'),
        "study.direction",
        'metric "entropy" is to maximize, but got direction = "minimize"',
    ),
    "a kind's section in a training study": (
        "[paths]\nsteps = 10",
        "paths.steps",
        '[paths] applies only to a study of kind = "optimizer_paths", but this study is of '
        'kind = "training" and got steps = 10',
    ),
    "data in a study that trains nothing": (
        _paths(rest='[data]\ndataset = "mnist"'),
        "data.dataset",
        '[data] does not apply to a study of kind = "optimizer_paths" (it runs optimizers on '
        'f(x, y) = x²/20 + y², with no network and no data), but got dataset = "mnist"; its '
        "sections are [study], [search], [sampler], [pruner], [paths]",
    ),
    "train in a study that trains nothing": (
        _activations(rest="[train]\nlr = 0.1"),
        "train.lr",
        '[train] does not apply to a study of kind = "activations"',
    ),
    "another kind's section": (
        _activations(rest="[paths]\nsteps = 3"),
        "paths.steps",
        '[paths] does not apply to a study of kind = "activations"',
    ),
    "a model setting the kind does not take": (
        _activations(model="use_batchnorm = true"),
        "model.use_batchnorm",
        'use_batchnorm does not apply to a study of kind = "activations" (it draws the '
        "activations of an untrained network for random inputs, with no data, no training, "
        "batch norm, dropout or weight decay), but got use_batchnorm = true; the settings it "
        "takes are hidden_size_list, n_hidden_layers, hidden_size, activation, weight_init_std",
    ),
    "a search the kind does not take": (
        _paths(rest="[search.lr]\nchoices = [0.1, 0.5]"),
        "search.lr",
        'lr does not apply to a study of kind = "optimizer_paths" (it runs optimizers on '
        "f(x, y) = x²/20 + y², with no network and no data), but got [search.lr]; the settings "
        "it takes are optimizer",
    ),
    "a pruner where nothing is trained": (
        _activations(rest='[pruner]\nname = "median"'),
        "pruner.name",
        'must be "none" for a study of kind = "activations": its trials train nothing, so '
        'there is nothing to prune, but got "median"',
    ),
    "paths comparing no optimizer": (
        '[study]\nkind = "optimizer_paths"\n[paths]\nlr = { sgd = 0.95 }',
        "search.optimizer",
        "compares optimizers, but it searches none; add [search.optimizer]",
    ),
    "paths without learning rates": (
        '[study]\nkind = "optimizer_paths"\n[search.optimizer]\nchoices = ["sgd"]',
        "paths.lr",
        "needs a learning rate per optimizer: add [paths] with lr = { sgd = 0.95, ... }",
    ),
    "a searched optimizer without a rate": (
        '[study]\nkind = "optimizer_paths"\n[paths]\nlr = { sgd = 0.95 }\n'
        '[search.optimizer]\nchoices = ["sgd", "adam"]',
        "paths.lr.adam",
        "adam is searched but has no learning rate: add adam = <lr> to paths.lr (it sets sgd)",
    ),
    "a rate for an optimizer not searched": (
        _paths(paths="").replace("sgd = 0.95", "sgd = 0.95, nesterov = 0.1"),
        "paths.lr.nesterov",
        "nesterov has a learning rate, but it is not among search.optimizer.choices (sgd)",
    ),
    "a rate for an unknown optimizer": (
        _paths().replace("sgd = 0.95", "sgd = 0.95, adamw = 0.1"),
        "paths.lr.adamw",
        "must be one of ['adagrad', 'adam', 'momentum', 'nesterov', 'rmsprop', 'sgd'], but got "
        "'adamw'",
    ),
    "an invalid rate": (
        _paths().replace("sgd = 0.95", "sgd = -1"),
        "paths.lr.sgd",
        "lr must be in (0, inf), but got lr=-1",
    ),
    "a start that is not a point": (
        _paths(paths="start = [1.0, 2.0, 3.0]"),
        "paths.start",
        "must be a point [x, y], but got [1.0, 2.0, 3.0]",
    ),
    "a start of strings": (
        _paths(paths='start = ["a", "b"]'),
        "paths.start",
        'must be a list of numbers, but got ["a", "b"]',
    ),
    "no steps": (
        _paths(paths="steps = 0"),
        "paths.steps",
        "an integer from 1 to 10,000 (updates; the book makes 30), but got 0",
    ),
    "unknown key of a kind's section": (
        _paths(paths="step = 3"),
        "paths.step",
        "unknown key 'step'; the keys of [paths] are start, steps, lr",
    ),
    "one bin": (
        _activations(rest="[activations]\nbins = 1"),
        "activations.bins",
        "must be an integer from 2 to 1,000, but got 1",
    ),
}


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [*MISTAKES.values(), *KIND_MISTAKES.values()],
    ids=[*MISTAKES.keys(), *KIND_MISTAKES.keys()],
)
def test_mistakes_name_the_file_key_value_and_what_is_allowed(text, key, fragment):
    with pytest.raises(ConfigError) as error:
        parse(text)
    assert (error.value.source, error.value.key) == ("mine.toml", key)
    assert str(error.value).startswith(f"mine.toml: {key}: ")
    assert fragment in str(error.value)


def test_a_pruner_given_by_flag_to_a_study_that_trains_nothing_is_refused():
    spec = parse(_activations())
    with pytest.raises(ConfigError) as error:
        spec.with_overrides(pruner="median")
    assert (error.value.key, error.value.source) == ("pruner.name", "override")
    assert 'must be "none" for a study of kind = "activations"' in str(error.value)


def test_the_kinds_settings_and_defaults():
    paths = load_study_file(STUDIES / "ch6-1-optimizer-paths.toml", environ={})
    assert (paths.study.kind, paths.study.metric, paths.study.direction) == (
        "optimizer_paths", "f", "minimize",
    )  # fmt: skip
    assert (paths.probe.start, paths.probe.steps) == ((-7.0, 2.0), 30)
    assert dict(paths.probe.lr) == {
        "sgd": 0.95, "momentum": 0.1, "adagrad": 1.5, "rmsprop": 0.15, "adam": 0.3,
    }  # fmt: skip
    assert not paths.trains
    activations = load_study_file(STUDIES / "ch6-2-2-activations.toml", environ={})
    assert (activations.study.kind, activations.study.metric) == ("activations", "entropy")
    assert activations.base.hidden_size_list == (100,) * 5
    assert (activations.probe.n_inputs, activations.probe.input_dim) == (1000, 100)
    assert activations.space.grid() == {
        "activation": ["sigmoid", "tanh", "relu"],
        "weight_init_std": [1, 0.01, "xavier", "he"],
    }
    assert len(list(itertools.product(*activations.space.grid().values()))) == 12
    assert activations.study.n_trials == 12
    assert "kind='activations'" in repr(activations)
    default = parse("")
    assert (default.study.kind, default.probe, default.trains) == ("training", None, True)
    with pytest.raises(ConfigError, match="hpo replay works on studies that train a network"):
        activations.require_training("hpo replay")
    default.require_training("hpo replay")  # a training study may


# --- the vocabulary ---------------------------------------------------------------------


def test_key_tables_match_the_configs():
    init_fields = lambda cls: {f.name for f in dataclasses.fields(cls) if f.init}  # noqa: E731
    assert set(DATA_KEYS) == init_fields(DataConfig)
    assert set(MODEL_KEYS) | set(TRAIN_KEYS) == init_fields(TrainConfig) | set(VIRTUAL_KEYS)
    assert set(TrainConfig().architecture()) <= set(MODEL_KEYS)


def test_the_readme_documents_every_key():
    readme = (STUDIES / "README.md").read_text()
    for section, keys in SECTION_KEYS.items():
        assert f"`[{section}]`" in readme
        for key in keys:
            assert f"`{key}`" in readme, key
    for key in ("type", "low", "high", "log", "step", "choices", "when", "HPO_DATA_DIR"):
        assert f"`{key}`" in readme, key
