"""`hpo narrow`: the rule by hand, the stage file, the warm start in real storages, the CLI."""

from __future__ import annotations

import datetime
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from optuna.trial import TrialState

from hpo.analysis.listing import ranked_trials
from hpo.analysis.narrowing import (
    KEPT,
    NARROWED,
    WIDENED,
    NarrowingResult,
    TopTrial,
    describe_rule,
    narrow_param,
    narrow_space,
    narrow_study,
    next_stage_name,
    round_significant,
    stage_text,
    write_next_stage,
)
from hpo.cli import main
from hpo.engine.objective import Objective
from hpo.engine.worker import Worker
from hpo.errors import ConfigError
from hpo.spec.data import load_splits
from hpo.spec.keys import ENQUEUE_KEYS, NARROWING_KEYS
from hpo.spec.search.space import ParamSpec
from hpo.spec.study_file import StudySpec, load_study_file, parse_study
from hpo.storage.database import resolve_storage
from hpo.storage.studies import fingerprint, join_study, load_existing_study, prepare_study

STUDIES = Path(__file__).resolve().parent.parent / "studies"
LR = ParamSpec("lr", "float", 1e-6, 1e-2, log=True)  # the book's range: four decades
DROPOUT = ParamSpec("dropout_ratio", "float", 0.0, 0.5)
BATCH = ParamSpec("batch_size", "int", 16, 256)


def ends(change) -> tuple:
    return (change.new.low, change.new.high)


# --- the rule, by hand ---------------------------------------------------------------------


def test_a_log_range_narrows_around_the_top_values_on_the_log_scale():
    # log10: span [-4, -3]; +/- 0.5 decade: [-4.5, -2.5]; 10^-4.5 = 3.1623e-05 rounded down,
    # 10^-2.5 = 3.1623e-03 rounded up, to 3 significant digits.
    change = narrow_param(LR, [1e-3, 1e-4])
    assert ends(change) == (3.16e-05, 0.00317)
    assert (change.low, change.high, change.action) == (NARROWED, NARROWED, NARROWED)
    assert (change.new.type, change.new.log) == ("float", True)


def test_a_linear_range_narrows_by_the_margin():
    assert ends(narrow_param(DROPOUT, [0.2, 0.3])) == (0.15, 0.35)  # span 0.1, +/- 0.05
    assert ends(narrow_param(DROPOUT, [0.2, 0.3], margin=0)) == (0.2, 0.3)
    assert ends(narrow_param(DROPOUT, [0.2, 0.3], margin=1)) == (0.1, 0.4)
    with pytest.raises(ConfigError, match="margin must be a number >= 0"):
        narrow_param(DROPOUT, [0.2, 0.3], margin=-0.5)


def test_one_value_or_equal_values_still_give_a_tenth_of_the_old_width():
    # W = 0.5, so 0.05 about 0.25; on the log scale 0.4 decade about 10^-4.
    assert ends(narrow_param(DROPOUT, [0.25])) == (0.225, 0.275)
    assert ends(narrow_param(DROPOUT, [0.25, 0.25, 0.25])) == (0.225, 0.275)
    # 10^-4.2 = 6.3096e-05 down, 10^-3.8 = 1.5849e-04 up
    assert ends(narrow_param(LR, [1e-4])) == (6.3e-05, 0.000159)
    assert "the top value 0.0001" in narrow_param(LR, [1e-4]).reason


def test_int_ranges_round_outward_to_integers():
    assert ends(narrow_param(BATCH, [100, 120, 110])) == (90, 130)
    assert ends(narrow_param(BATCH, [101, 140])) == (81, 160)  # [81.5, 159.5] outward
    # span 3 is below W / 10 = 24: 102.5 +/- 12 = [90.5, 114.5] outward
    assert ends(narrow_param(BATCH, [101, 104])) == (90, 115)
    hidden = ParamSpec("hidden_size", "int", 16, 1024, log=True)
    # 64 / sqrt(2) = 45.25 -> 45, 128 * sqrt(2) = 181.02 -> 182
    change = narrow_param(hidden, [64, 128])
    assert ends(change) == (45, 182)
    assert all(isinstance(end, int) for end in ends(change))


def test_a_step_range_is_rounded_outward_to_its_grid():
    stepped = ParamSpec("dropout_ratio", "float", 0.0, 0.5, step=0.05)
    change = narrow_param(stepped, [0.2, 0.25])  # [0.175, 0.275] -> grid points 0.15, 0.3
    assert ends(change) == (0.15, 0.3)
    assert change.new.step == 0.05


def test_the_margin_is_clipped_to_the_old_range():
    change = narrow_param(DROPOUT, [0.06, 0.2])  # 0.06 - 0.07 < 0
    assert ends(change) == (0.0, 0.27)
    assert (change.low, change.high) == (KEPT, NARROWED)
    assert "low end 0 kept: the margin reaches it" in change.reason
    # and one value at an end keeps a tenth of the width inside the range
    assert ends(narrow_param(BATCH, [200, 30], margin=10)) == (16, 256)


@pytest.mark.parametrize("log", [True, False])
def test_without_widen_a_new_range_never_leaves_the_old_one(log):
    rng = np.random.default_rng(0)
    param = ParamSpec("weight_decay_lambda", "float", 1e-8, 1e-4, log=log)
    for _ in range(300):
        n = int(rng.integers(1, 8))
        u = rng.uniform(-8, -4, size=n) if log else None
        values = list(10.0**u) if log else list(rng.uniform(1e-8, 1e-4, size=n))
        change = narrow_param(param, values, margin=float(rng.uniform(0, 3)))
        assert param.low <= change.new.low < change.new.high <= param.high
        assert all(change.new.low <= v <= change.new.high for v in values)


def test_an_end_crowded_by_the_best_value_is_kept_and_said_so():
    # 1e-2 is the best, at the book's upper bound; 1e-3 spans a decade below it.
    change = narrow_param(LR, [1e-2, 1e-3])
    assert ends(change) == (0.000316, 0.01)  # 10^-3.5 = 3.1623e-04 down; the high end kept
    assert (change.low, change.high) == (NARROWED, KEPT)
    assert "high end 0.01 kept: the best value lies in the outer 10% of the range at the high" in (
        change.reason
    )
    assert "the optimum may lie above it (--widen extends it)" in change.reason


def test_an_end_crowded_by_half_of_the_top_values_is_kept():
    # the best (1e-3) is inside; 8e-3 and 9e-3 lie above 10^-2.4 = 3.98e-3
    change = narrow_param(LR, [1e-3, 9e-3, 8e-3])
    assert (change.high, change.new.high) == (KEPT, 0.01)
    assert "2 of the 3 top values lie in the outer 10% of the range at the high end" in (
        change.reason
    )
    # one of three is not half: without a margin, 9e-3 is the end
    assert narrow_param(LR, [1e-3, 9e-3, 1e-4], margin=0).new.high == 0.009


def test_an_end_crowded_at_the_low_edge_is_kept():
    change = narrow_param(LR, [2e-6, 1e-4])  # log10(2e-6) = -5.70 <= -5.6
    assert (change.low, change.new.low) == (KEPT, 1e-6)
    assert "the optimum may lie below it" in change.reason


def test_widen_moves_a_crowded_end_out_by_a_decade_or_a_width():
    high = narrow_param(LR, [1e-2, 1e-3], widen=True)
    assert ends(high) == (0.000316, 0.1)
    assert (high.high, high.action) == (WIDENED, WIDENED)
    assert "high end 0.01 widened by a decade to 0.1" in high.reason
    assert narrow_param(LR, [2e-6, 1e-4], widen=True).new.low == 1e-7
    momentum = ParamSpec("momentum", "float", 0.2, 0.6)
    assert narrow_param(momentum, [0.59, 0.5], widen=True).new.high == 0.9999  # momentum < 1
    linear = ParamSpec("weight_decay_lambda", "float", 0.1, 0.3)
    assert narrow_param(linear, [0.29, 0.2], widen=True).new.high == 0.5  # by W = 0.2


def test_widen_stops_at_the_last_valid_value_of_the_setting():
    # dropout_ratio < 1: 0.5 + 0.5 = 1.0 is invalid; the grid is 1e-4 (W / 1000 = 5e-4)
    change = narrow_param(DROPOUT, [0.49, 0.3], widen=True)
    assert change.new.high == 0.9999
    assert "widened to 0.9999, the last valid value (dropout_ratio must be in [0, 1))" in (
        change.reason
    )
    # an end already at the limit stays
    at_zero = narrow_param(DROPOUT, [0.01, 0.3], widen=True)
    assert (at_zero.low, at_zero.new.low) == (KEPT, 0.0)
    assert "but it is the setting's limit" in at_zero.reason
    # batch_size >= 1: 16 - 240 is invalid; ints go down to 1
    assert narrow_param(BATCH, [17, 100], widen=True).new.low == 1
    # lr > 0 on a linear range [0.001, 0.01]: the grid is 1e-6
    lr = ParamSpec("lr", "float", 0.001, 0.01)
    assert narrow_param(lr, [0.0011, 0.005], widen=True).new.low == 1e-6


def test_categorical_and_condition_tested_settings_are_untouched():
    space = load_study_file(STUDIES / "chapter6.toml", environ={}).space
    top = [
        {"optimizer": "momentum", "lr": 0.05, "momentum": 0.95, "dropout_ratio": 0.1},
        {"optimizer": "adam", "lr": 0.001, "dropout_ratio": 0.2},
    ]
    changes = {c.name: c for c in narrow_space(space, top)}
    for name in ("optimizer", "weight_init_std", "use_batchnorm"):
        assert changes[name].new == changes[name].old
        assert (changes[name].low, changes[name].action) == (None, KEPT)
        assert changes[name].reason == "categorical: its choices are kept"
    assert changes["momentum"].values == (0.95,)  # only the trial that sampled it
    assert changes["weight_decay_lambda"].reason.startswith("kept: no top trial sampled it")
    tested = parse(
        '[search.n_hidden_layers]\ntype = "int"\nlow = 1\nhigh = 5\n'
        '[search.hidden_size]\ntype = "int"\nlow = 10\nhigh = 100\n'
        "when = { n_hidden_layers = [2, 3] }\n"
    ).space
    kept = narrow_space(tested, [{"n_hidden_layers": 3, "hidden_size": 50}])[0]
    assert (kept.new, kept.reason) == (kept.old, "kept: a when condition tests its values")


def test_significant_rounding():
    assert round_significant(0.000123456, "up") == 0.000124
    assert round_significant(0.000123456, "down") == 0.000123
    assert round_significant(0.1 * 3, "down") == 0.3  # a rounding error away is that number
    assert round_significant(10.0 ** (math.log10(0.01) + 1)) == 0.1


def test_stage_names():
    assert next_stage_name("tiny") == "tiny-stage2"
    assert next_stage_name("tiny-stage2") == "tiny-stage3"
    assert next_stage_name("a-stage9-stage10") == "a-stage9-stage11"


# --- the stage file -------------------------------------------------------------------------


def parse(text: str, **kwargs) -> StudySpec:
    kwargs.setdefault("environ", {})
    return parse_study(tomllib.loads(text), source="mine.toml", source_text=text, **kwargs)


def _result(spec: StudySpec, top: list[TopTrial], *, widen: bool = False) -> NarrowingResult:
    changes = narrow_space(spec.space, [t.params for t in top], widen=widen)
    rule = describe_rule("top trials", margin=0.5, widen=widen)
    return NarrowingResult(spec.study.name, spec, 20, tuple(top), changes, rule)


def test_a_stage_of_a_stage_replaces_the_header_and_the_provenance(tmp_path):
    book = load_study_file(STUDIES / "book-6.5.toml", environ={})
    top = [
        TopTrial(21, 0.77, {"lr": 0.00995, "weight_decay_lambda": 3.27e-8}, 11),
        TopTrial(3, 0.54, {"lr": 0.00596, "weight_decay_lambda": 3.35e-8}, 12),
        TopTrial(9, 0.42, {"lr": 0.0001, "weight_decay_lambda": 2e-5}, 13),
    ]
    day = datetime.date(2026, 1, 2)
    first = write_next_stage(_result(book, top), out=tmp_path / "s2.toml", created=day)
    assert first.text.startswith('# hpo narrow: stage "book-6.5-stage2" of study "book-6.5"')
    assert "# 100 random (lr, weight decay) pairs" in first.text  # the parent's comments kept
    # log10: [-4, -2.002] - 0.999 = -4.999: 1.0023e-05 down; the best crowds the high end
    assert "\nlow = 1e-05  # narrowed (was 1e-06)\nhigh = 1e-2\n" in first.text
    spec2 = first.spec
    assert spec2.narrowing == {
        "parent": "book-6.5",
        "rule": describe_rule("top trials", margin=0.5, widen=False),
        "parent_best": 0.77,
        "created": day,
    }
    second_top = [TopTrial(0, 0.8, {"lr": 0.00995, "weight_decay_lambda": 3.27e-8}, 11)]
    second = write_next_stage(_result(spec2, second_top), out=tmp_path / "s3.toml", created=day)
    assert second.name == "book-6.5-stage3"
    lines = second.text.splitlines()
    assert sum(line.startswith("# hpo narrow:") for line in lines) == 1
    assert sum(line.startswith("[narrowing]") for line in lines) == 1
    assert sum(line.startswith("[[enqueue]]") for line in lines) == 1
    assert second.spec.narrowing["parent"] == "book-6.5-stage2"
    assert [t.parent_trial for t in second.spec.enqueue] == [0]
    assert second.spec.study.seed == book.study.seed
    with pytest.raises(ConfigError, match=r"s3\.toml exists already; .*--force"):
        write_next_stage(_result(spec2, second_top), out=tmp_path / "s3.toml")
    again = write_next_stage(_result(spec2, second_top), out=tmp_path / "s3.toml", force=True)
    assert again.spec.space == second.spec.space


def test_an_inline_table_layout_is_edited_in_place_too():
    text = (
        '[study]\nseed = 3\n[search]\nlr = { type = "float", low = 1e-4, high = 0.1, log = true }'
        "  # four decades\n"
    )
    spec = parse(text)
    result = _result(spec, [TopTrial(0, 0.9, {"lr": 0.01}, 5)])
    written = stage_text(result, name="next", directory=Path.cwd())
    # TOML allows no comment inside { }: the ends change there, the line's comment stays
    assert 'lr = { type = "float", low = 0.00707, high = 0.0142, log = true }  # four decades' in (
        written
    )
    stage = parse(written)
    assert stage.space == result.space
    assert (stage.study.name, stage.study.seed, len(stage.enqueue)) == ("next", 3, 1)


def test_relative_data_paths_follow_the_stage_to_another_directory(tmp_path):
    parent_dir = tmp_path / "studies"
    parent_dir.mkdir()
    path = parent_dir / "m.toml"
    path.write_text(
        '[data]\ndataset = "mnist"\ndata_dir = "../data/mnist"\n'
        '[search.lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-1\nlog = true\n'
    )
    spec = load_study_file(path, environ={})
    result = _result(spec, [TopTrial(0, 0.9, {"lr": 0.01}, 5)])
    beside = write_next_stage(result)
    assert beside.path == parent_dir / "m-stage2.toml"
    assert 'data_dir = "../data/mnist"' in beside.text
    (tmp_path / "other").mkdir()
    elsewhere = write_next_stage(result, out=tmp_path / "other" / "m2.toml")
    assert elsewhere.spec.data.data_dir == str(parent_dir / "../data/mnist")
    assert elsewhere.spec.data == spec.data


# --- end to end on digits, in real storages ------------------------------------------------


def _settings(url: str):
    return resolve_storage(url, environ={"HPO_HEARTBEAT_INTERVAL": "1", "HPO_GRACE_PERIOD": "3"})


def _run(settings, spec: StudySpec) -> None:
    prepare_study(settings, spec)
    joined = join_study(settings, spec)
    objective = Objective(spec, load_splits(spec.data, seed=spec.study.seed))
    Worker(joined, settings, objective, n_trials=spec.study.n_trials).run()
    joined.storage.engine.dispose()


def test_a_narrowed_stage_starts_by_reproducing_its_parents_top_trials(
    storage_url, tiny_study_file, tmp_path
):
    settings = _settings(storage_url)
    parent_spec = load_study_file(tiny_study_file(n_trials=8, epochs=4))
    _run(settings, parent_spec)
    parent = load_existing_study(settings, "tiny")

    result = narrow_study(parent, top=3)
    stage = write_next_stage(result, out=tmp_path / "next.toml")
    spec = load_study_file(stage.path)
    assert spec.study.name == "tiny-stage2"
    assert spec.study.seed == parent_spec.study.seed == 1
    (old,), (new,) = parent_spec.space.params, spec.space.params
    assert old.low <= new.low < new.high <= old.high
    assert (new.low, new.high) != (old.low, old.high)
    ranked = ranked_trials(parent)
    assert spec.narrowing["parent"] == "tiny"
    assert spec.narrowing["rule"] == result.rule
    assert result.rule.startswith("top 3 of 8 completed trials by val_acc (maximize)")
    assert spec.narrowing["parent_best"] == ranked[0].value
    inside = [t for t in ranked[:3] if new.low <= t.params["lr"] <= new.high]
    assert [(e.parent_trial, dict(e.params), e.seed) for e in spec.enqueue] == [
        (t.number, t.params, t.user_attrs["seed"]) for t in inside
    ]
    assert spec.enqueue[0].parent_trial == ranked[0].number  # the best is inside: never clipped
    assert fingerprint(spec) == fingerprint(spec.with_overrides())  # enqueue is no part of it

    _run(settings, spec)
    trials = load_existing_study(settings, "tiny-stage2").get_trials()
    by_number = {t.number: t for t in parent.get_trials()}
    for trial, enqueued in zip(trials, spec.enqueue, strict=False):
        original = by_number[enqueued.parent_trial]
        assert trial.state == TrialState.COMPLETE
        assert trial.params == original.params
        assert trial.user_attrs["seed"] == original.user_attrs["seed"]
        assert trial.user_attrs["parent_trial"] == original.number
        assert trial.value == original.value  # exactly: same params, seed and split
        assert trial.user_attrs["history"] == original.user_attrs["history"]
    stage_best = max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert stage_best >= ranked[0].value

    # Resuming enqueues nothing again: no new trial, then only sampled ones.
    assert prepare_study(settings, spec) is False
    _run(settings, spec)
    more = spec.with_overrides(n_trials=10)
    _run(settings, more)
    trials = load_existing_study(settings, "tiny-stage2").get_trials()
    assert len(trials) == 10
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert sum("parent_trial" in t.user_attrs for t in trials) == len(spec.enqueue)


# --- study-file validation of the new sections ---------------------------------------------

SEARCHED = """
[search.lr]
type = "float"
low = 1e-4
high = 1e-1
log = true

[search.optimizer]
choices = ["sgd", "adam"]

[search.batch_size]
type = "int"
low = 10
high = 100
step = 10
"""


def test_the_new_sections_load():
    spec = parse(
        SEARCHED
        + '[narrowing]\nparent = "p"\nrule = "r"\nparent_best = 1\ncreated = 2026-01-02\n'
        + '[[enqueue]]\nparams = { lr = 0.01, optimizer = "adam", batch_size = 50 }\nseed = 7\n'
        + "parent_trial = 3\n"
        + "[[enqueue]]\nparams = { lr = 0.1 }\nseed = 0\n"
    )
    assert spec.narrowing == {
        "parent": "p",
        "rule": "r",
        "parent_best": 1.0,
        "created": datetime.date(2026, 1, 2),
    }
    first, second = spec.enqueue
    assert dict(first.params) == {"lr": 0.01, "optimizer": "adam", "batch_size": 50}
    assert first.user_attrs() == {"seed": 7, "parent_trial": 3}
    assert second.user_attrs() == {"seed": 0}
    assert spec.with_overrides(n_trials=3, study_name="x").enqueue == spec.enqueue
    assert "2 enqueued" in repr(spec)
    assert fingerprint(spec) == fingerprint(parse(SEARCHED))


ENQUEUE_MISTAKES = {
    "enqueue as a table": ("[enqueue]\nseed = 1", "enqueue", "must be an array of tables"),
    "params not a table": (
        "[[enqueue]]\nparams = 3\nseed = 1",
        "enqueue[0].params",
        "must be a table, but got 3",
    ),
    "seed not an int": (
        '[[enqueue]]\nparams = {}\nseed = "7"',
        "enqueue[0].seed",
        'must be an integer, but got "7"',
    ),
    "missing seed": ("[[enqueue]]\nparams = {}", "enqueue[0].seed", "but seed is missing"),
    "unknown key": (
        "[[enqueue]]\nparams = {}\nseed = 1\nvalue = 0.9",
        "enqueue[0].value",
        "unknown key 'value'; the keys of [[enqueue]] are params, seed, parent_trial",
    ),
    "negative seed": (
        "[[enqueue]]\nparams = {}\nseed = -1",
        "enqueue[0].seed",
        "must be an integer from 0 to 2**63 - 1, but got -1",
    ),
    "negative parent trial": (
        "[[enqueue]]\nparams = {}\nseed = 1\nparent_trial = -2",
        "enqueue[0].parent_trial",
        "must be a trial number (an integer >= 0), but got -2",
    ),
    "not searched": (
        "[[enqueue]]\nparams = { momentum = 0.9 }\nseed = 1",
        "enqueue[0].params.momentum",
        "momentum is not a searched setting of this study, so a trial cannot be given a "
        "value for it; the searched settings are: lr, optimizer, batch_size",
    ),
    "outside the range": (
        "[[enqueue]]\nparams = { lr = 0.5 }\nseed = 1",
        "enqueue[0].params.lr",
        "0.5 is not a value the study searches: lr: float in [0.0001, 0.1], log",
    ),
    "not a choice": (
        '[[enqueue]]\nparams = { optimizer = "adamw" }\nseed = 1',
        "enqueue[0].params.optimizer",
        '"adamw" is not a value the study searches: optimizer: one of sgd, adam',
    ),
    "off the grid": (
        "[[enqueue]]\nparams = { batch_size = 55 }\nseed = 1",
        "enqueue[0].params.batch_size",
        "55 is not a value the study searches: batch_size: int in [10, 100], step 10",
    ),
    "float for an int": (
        "[[enqueue]]\nparams = { batch_size = 50.0 }\nseed = 1",
        "enqueue[0].params.batch_size",
        "50.0 is not a value",
    ),
    "second table": (
        "[[enqueue]]\nparams = {}\nseed = 1\n[[enqueue]]\nparams = { lr = true }\nseed = 1",
        "enqueue[1].params.lr",
        "true is not a value",
    ),
    "narrowing created as a string": (
        '[narrowing]\ncreated = "2026-01-02"',
        "narrowing.created",
        'must be a date such as 2026-11-23, but got "2026-01-02" (a string)',
    ),
    "narrowing best as a string": (
        '[narrowing]\nparent_best = "0.9"',
        "narrowing.parent_best",
        "must be a finite number",
    ),
    "narrowing unknown key": (
        "[narrowing]\nbest = 0.9",
        "narrowing.best",
        "unknown key 'best'; the keys of [narrowing] are parent, rule, parent_best, created",
    ),
}


@pytest.mark.parametrize(
    ("text", "key", "fragment"), ENQUEUE_MISTAKES.values(), ids=list(ENQUEUE_MISTAKES)
)
def test_mistakes_in_the_new_sections_name_file_key_and_value(text, key, fragment):
    with pytest.raises(ConfigError) as error:
        parse(SEARCHED + text)
    assert (error.value.source, error.value.key) == ("mine.toml", key)
    assert fragment in str(error.value)
    assert str(error.value).startswith(f"mine.toml: {key}: ")


def test_the_readme_documents_the_new_sections():
    readme = (STUDIES / "README.md").read_text()
    assert "`[narrowing]`" in readme
    assert "`[[enqueue]]`" in readme
    for key in (*NARROWING_KEYS, *ENQUEUE_KEYS):
        assert f"`{key}`" in readme, key


# --- the command ------------------------------------------------------------------------------


def test_hpo_narrow_prints_old_and_new_ranges_side_by_side(
    storage_url, tiny_study_file, tmp_path, capsys, monkeypatch
):
    settings = _settings(storage_url)
    _run(settings, load_study_file(tiny_study_file(n_trials=6, epochs=3)))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "stage.toml"
    code = main(["narrow", "tiny", "--storage", storage_url, "--top", "3", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    lines = printed.out.splitlines()
    assert lines[0].startswith("tiny: 6 completed trials, best val_acc ")
    assert lines[0].endswith("narrowing around the top 3")
    new = load_study_file(out).space.params[0]
    assert lines[1].startswith(f"  lr  [0.0001, 0.1] log -> [{new.low:g}, {new.high:g}] log  ")
    assert lines[2].startswith("rule: top 3 of 6 completed trials by val_acc (maximize)")
    assert lines[3].startswith("wrote stage.toml: study 'tiny-stage2', seed 1, ")
    assert lines[4].startswith("next: hpo run stage.toml --storage ")

    def fails(*argv: str) -> str:
        code = main(["narrow", *argv, "--storage", storage_url])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("hpo narrow: error: ")
        assert err.count("\n") == 1
        return err

    assert "no study named 'nope'" in fails("nope")
    assert "has 6 completed trials, fewer than the top 7" in fails("tiny", "--top", "7")
    assert f"{out} exists already" in fails("tiny", "--out", str(out))
    assert "quantile must be in (0, 1], but got quantile=1.5" in fails("tiny", "--quantile", "1.5")
    prepare_study(settings, parse('[study]\nname = "cats"\n[search.optimizer]\nchoices = ["sgd"]'))
    assert "searches no float or int setting" in fails("cats")
    taken = fails("tiny", "--name", "tiny", "--out", str(tmp_path / "other.toml"))
    assert "a study named 'tiny' exists already" in taken
    assert not (tmp_path / "other.toml").exists()
