"""The book's step 3, automated: narrow a finished study's ranges and write the next stage.

Section 6.5.3 samples at random on log scales, keeps the best trials, and says to "narrow the
range from the results and repeat". `narrow_study` computes the narrowed ranges from a parent
study; `write_next_stage` writes them as the next stage's study file. For every float and int
setting searched (categorical ones stay as they are), on the setting's own scale (log10 for
`log = true`), where W is the old range's width on that scale:

1. The top trials: the `top` K (default 5) completed trials by the study's metric, or the
   best `quantile` Q of them (ceil(Q * n)). A setting absent from all of them (its `when`
   condition never held) is kept.
2. Their values span [a, b]; the new range is [a - m(b - a), b + m(b - a)] for the margin m
   (default 0.5), widened about its centre to at least W / 10 (so that one value, or equal
   values, still give a range), clipped to the old range (kept W / 10 wide there).
3. Ends are rounded outward: to 3 significant digits, to integers for an int, to the grid
   for a `step`; never past the old range.
4. Crowding: an end is crowded when the best trial's value, or at least half of the top
   values, lie in the outer 10% of the old range at that end (within W / 10 of it, on the
   scale). The optimum may then lie beyond that end, so it is not narrowed: it is kept, or
   with `widen` moved out by a decade (log) or by W (linear), stopping at the last valid
   value of the setting (dropout_ratio < 1, lr > 0, ...) on a grid of a thousandth of a decade,
   of 10^floor(log10(W / 1000)), of 1 for an int or of the step. Only a widened end leaves
   the old range.
5. A setting that another setting's `when` condition tests is kept: its tested values must
   stay possible.

On the book's own setting the best learning rates sit at its 1e-2 upper bound, while the
optimum for that network lies above it, nearer 0.1: the book's conclusion that 0.001 to 0.01
is the good range is where its range stops. Rule 4 reports exactly that, and `widen` acts on it.

The next stage is the parent's stored definition with the ranges replaced, a new name, the
parent's study seed (the same split, hence the same trials given the same seeds), a
`[narrowing]` section (provenance) and one `[[enqueue]]` table per top trial inside the new
ranges, with its seed: the stage starts by reproducing those trials exactly.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import optuna
import tomlkit
from optuna.trial import FrozenTrial
from tomlkit import TOMLDocument
from tomlkit.items import AoT, InlineTable, Item

from hpo.analysis.listing import fmt, ranked_trials
from hpo.errors import ConfigError
from hpo.spec.keys import is_int, is_number, setting_error
from hpo.spec.outcomes import completed_value
from hpo.spec.search.space import ParamSpec, SearchSpace, same_value
from hpo.spec.study_file import EnqueuedTrial, StudySpec, parse_study
from hpo.storage.studies import SPEC_ATTR, records, stored_spec

DEFAULT_TOP = 5
DEFAULT_MARGIN = 0.5
EDGE_FRACTION = 0.1  # the outer part of a range where values crowd against its end
MIN_WIDTH_FRACTION = 0.1  # a new range is at least this part of the old width
SIGNIFICANT = 3  # digits of a new float end
HEADER_MARK = "# hpo narrow:"  # first line of the comment header a stage file starts with

NARROWED, KEPT, WIDENED = "narrowed", "kept", "widened"

_I = TypeVar("_I", bound=Item)


@dataclass(frozen=True)
class RangeChange:
    """One searched setting, before and after: each end narrowed, kept or widened, and why.

    `low` and `high` are the ends' actions (None for a categorical setting); `values` are the
    top trials' values of the setting, best first.
    """

    name: str
    old: ParamSpec
    new: ParamSpec
    low: str | None
    high: str | None
    reason: str
    values: tuple[Any, ...] = ()

    @property
    def action(self) -> str:
        ends = (self.low, self.high)
        return WIDENED if WIDENED in ends else NARROWED if NARROWED in ends else KEPT

    def __repr__(self) -> str:
        return f"RangeChange({self.old.describe()} -> {range_text(self.new)}: {self.reason})"


@dataclass(frozen=True)
class TopTrial:
    number: int
    value: float
    params: Mapping[str, Any]
    seed: int | None


@dataclass(frozen=True, repr=False)
class NarrowingResult:
    """A parent study's top trials and every searched setting's new range (`changes`).

    `spec` is the parent's stored definition; `rule` says in words how the ranges were made.
    """

    parent: str
    spec: StudySpec
    n_complete: int
    top: tuple[TopTrial, ...]
    changes: tuple[RangeChange, ...]
    rule: str

    @property
    def parent_best(self) -> float:
        return self.top[0].value

    @property
    def space(self) -> SearchSpace:
        return SearchSpace(tuple(change.new for change in self.changes))

    def enqueue(self) -> tuple[EnqueuedTrial, ...]:
        """The top trials whose every parameter lies in the new ranges, best first."""
        new = {change.name: change.new for change in self.changes}
        return tuple(
            EnqueuedTrial(dict(trial.params), trial.seed, trial.number)
            for trial in self.top
            if trial.seed is not None
            and all(name in new and contains(new[name], v) for name, v in trial.params.items())
        )

    def __repr__(self) -> str:
        return (
            f"NarrowingResult({self.parent!r}, top {len(self.top)} of {self.n_complete}, "
            f"{'; '.join(map(repr, self.changes))})"
        )


# -- the rule ---------------------------------------------------------------------------


def narrow_study(
    study: optuna.Study,
    *,
    top: int | None = None,
    quantile: float | None = None,
    margin: float = DEFAULT_MARGIN,
    widen: bool = False,
) -> NarrowingResult:
    """The next stage's ranges from a finished study's completed trials (see the module doc).

    The result's `spec` is the study's stored definition, with the path of the file it was
    created from: the next stage goes beside it, and its relative data paths resolve there.
    """
    spec = stored_spec(study)
    stored_path = records(study)[SPEC_ATTR].get("path")
    if stored_path:
        spec = replace(spec, path=Path(stored_path))
    if all(p.type == "categorical" for p in spec.space.params):
        raise ConfigError(
            f"study {study.study_name!r} searches no float or int setting (only "
            f"{', '.join(spec.space.names()) or 'nothing'}), so there is no range to narrow"
        )
    ranked = ranked_trials(study)
    chosen = _top_trials(study.study_name, ranked, top=top, quantile=quantile)
    changes = narrow_space(spec.space, [t.params for t in chosen], margin=margin, widen=widen)
    selection = (
        f"top {len(chosen)} of {len(ranked)} completed trials"
        if quantile is None
        else f"best {quantile:g} of {len(ranked)} completed trials ({len(chosen)})"
    )
    rule = describe_rule(
        f"{selection} by {spec.study.metric} ({spec.study.direction})",
        margin=margin,
        widen=widen,
    )
    return NarrowingResult(
        parent=study.study_name,
        spec=spec,
        n_complete=len(ranked),
        top=tuple(
            TopTrial(t.number, float(completed_value(t)), dict(t.params), t.user_attrs.get("seed"))
            for t in chosen
        ),
        changes=changes,
        rule=rule,
    )


def _top_trials(
    name: str, ranked: list[FrozenTrial], *, top: int | None, quantile: float | None
) -> list[FrozenTrial]:
    if top is not None and quantile is not None:
        raise ConfigError("give top or quantile, not both")
    if quantile is not None:
        if not is_number(quantile) or not 0 < quantile <= 1:
            raise ConfigError(f"quantile must be in (0, 1], but got {quantile=}")
        if not ranked:
            raise ConfigError(f"study {name!r} has no completed trial to narrow from")
        return ranked[: math.ceil(quantile * len(ranked))]
    top = DEFAULT_TOP if top is None else top
    if not is_int(top) or top < 1:
        raise ConfigError(f"top must be an integer >= 1, but got {top=}")
    if len(ranked) < top:
        raise ConfigError(
            f"study {name!r} has {len(ranked)} completed trial{'s' * (len(ranked) != 1)}, "
            f"fewer than the top {top} to narrow from; run more trials, or ask for fewer "
            "with --top"
        )
    return ranked[:top]


def describe_rule(selection: str, *, margin: float, widen: bool) -> str:
    """The rule in words, as `[narrowing] rule` records it."""
    crowded = (
        "widened by a decade (log) or the old width (linear), up to the last valid value; "
        "only a widened end leaves the old range"
        if widen
        else "kept"
    )
    return (
        f"{selection}; new range = their span on the setting's scale (log10 if log) "
        f"+/- {margin:g} x span, at least {MIN_WIDTH_FRACTION:g} x the old width, inside the "
        f"old range, rounded outward ({SIGNIFICANT} significant digits, ints to integers); "
        f"an end where the best value or half the top values lie in the outer "
        f"{EDGE_FRACTION:.0%} is crowded: {crowded}; categorical settings, and those a when "
        "condition tests, kept"
    )


def narrow_space(
    space: SearchSpace,
    top_params: Sequence[Mapping[str, Any]],
    *,
    margin: float = DEFAULT_MARGIN,
    widen: bool = False,
) -> tuple[RangeChange, ...]:
    """Every searched setting's new range from the top trials' parameters, best first."""
    _check_margin(margin)
    tested = {setting for p in space.params for setting in p.when}
    changes = []
    for param in space.params:
        values = [params[param.name] for params in top_params if param.name in params]
        if param.type == "categorical":
            reason = "categorical: its choices are kept"
        elif param.name in tested:
            reason = "kept: a when condition tests its values"
        elif not values:
            reason = "kept: no top trial sampled it (its when condition did not hold)"
        else:
            changes.append(narrow_param(param, values, margin=margin, widen=widen))
            continue
        ends = None if param.type == "categorical" else KEPT
        changes.append(RangeChange(param.name, param, param, ends, ends, reason, tuple(values)))
    return tuple(changes)


def narrow_param(
    param: ParamSpec, values: Sequence[Any], *, margin: float = DEFAULT_MARGIN, widen: bool = False
) -> RangeChange:
    """The new range of a float or int setting from its top values, the best first."""
    _check_margin(margin)
    if param.type == "categorical" or not values:
        raise ValueError(f"narrow_param needs a float or int setting and values, got {param}")
    scale = _Scale(param)
    us = [scale.to(v) for v in values]
    lo, hi = _span(scale, us, margin)
    zone = EDGE_FRACTION * scale.width
    phrases = [
        f"the top value {fmt(values[0])}"
        if len(values) == 1
        else f"top {len(values)} values {_span_text(values)}"
    ]
    ends: dict[str, Any] = {}
    actions: dict[str, str] = {}
    for end, bound, u, inside in (
        ("low", scale.low, lo, [x <= scale.low + zone for x in us]),
        ("high", scale.high, hi, [x >= scale.high - zone for x in us]),
    ):
        ends[end], actions[end], phrase = _new_end(param, scale, end, bound, u, inside, widen)
        phrases.append(phrase)
    new = replace(param, low=ends["low"], high=ends["high"])
    return RangeChange(
        param.name, param, new, actions["low"], actions["high"], "; ".join(phrases), tuple(values)
    )


def _span(scale: _Scale, us: list[float], margin: float) -> tuple[float, float]:
    """The top values' span on the setting's scale, with `margin` of it on each side, at
    least the minimum width, and inside the setting's range."""
    a, b = min(us), max(us)
    lo, hi = a - margin * (b - a), b + margin * (b - a)
    min_width = MIN_WIDTH_FRACTION * scale.width
    if hi - lo < min_width:
        centre = (a + b) / 2
        lo, hi = centre - min_width / 2, centre + min_width / 2
    lo, hi = max(lo, scale.low), min(hi, scale.high)
    if hi - lo < min_width:  # clipped at one end: keep the width inside the range
        lo, hi = (lo, lo + min_width) if lo == scale.low else (hi - min_width, hi)
    return lo, hi


def _new_end(
    param: ParamSpec,
    scale: _Scale,
    end: str,
    bound: float,
    u: float,
    inside: list[bool],
    widen: bool,
) -> tuple[Any, str, str]:
    """One end of the new range: (its value, what was done, the phrase that says why).

    Top values crowding the end keep it (or, with `widen`, push it out); otherwise it moves
    to the narrowed span `u`, unless the span reaches the old end `bound`.
    """
    old = getattr(param, end)
    crowd = _crowding(end, inside, best_inside=inside[0])
    if crowd is not None and widen:
        value, limit = _widened(param, end)
        if value == old:
            how = f"kept: {crowd}, but it is the setting's limit ({limit})"
        elif limit is not None:
            how = f"widened to {_end(value)}, the last valid value ({limit}): {crowd}"
        else:
            by = "a decade" if param.log else "the old width"
            how = f"widened by {by} to {_end(value)}: {crowd}"
        return value, WIDENED if value != old else KEPT, f"{end} end {_end(old)} {how}"
    if crowd is not None:
        beyond = "below" if end == "low" else "above"
        return (
            old,
            KEPT,
            f"{end} end {_end(old)} kept: {crowd}, so the optimum may lie {beyond} it "
            "(--widen extends it)",
        )
    if u == bound:
        return old, KEPT, f"{end} end {_end(old)} kept: the margin reaches it"
    value = scale.rounded(u, end)
    return value, NARROWED if value != old else KEPT, f"{end} end {_end(old)} -> {_end(value)}"


def _check_margin(margin: float) -> None:
    if not is_number(margin) or margin < 0:
        raise ConfigError(f"margin must be a number >= 0, but got {margin=}")


def _crowding(end: str, inside: list[bool], *, best_inside: bool) -> str | None:
    """Why an end is crowded (see the module doc), or None."""
    where = f"in the outer {EDGE_FRACTION:.0%} of the range at the {end} end"
    if best_inside:
        return f"the best value lies {where}"
    if 2 * sum(inside) >= len(inside):
        return f"{sum(inside)} of the {len(inside)} top values lie {where}"
    return None


def _end(value: float | int) -> str:
    """A range end in full (0.9999, 1e-06), where `fmt` would round it to 3 digits."""
    return f"{value:g}"


def _choice(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else fmt(value)


def _span_text(values: Sequence[Any]) -> str:
    low, high = min(values), max(values)
    return fmt(low) if low == high else f"{fmt(low)} to {fmt(high)}"


class _Scale:
    """A range on its setting's scale (log10 for `log = true`), and back to values."""

    def __init__(self, param: ParamSpec) -> None:
        self.param = param
        low, high = param.bounds
        self.low, self.high = self.to(low), self.to(high)
        self.width = self.high - self.low

    def to(self, value: float) -> float:
        return math.log10(value) if self.param.log else float(value)

    def value(self, u: float) -> float:
        return 10.0**u if self.param.log else u

    def rounded(self, u: float, end: str) -> float | int:
        """The end at `u`, rounded outward (floor for low, ceil for high), inside the range."""
        p, value = self.param, self.value(u)
        low, high = p.bounds
        down = end == "low"
        if p.step is not None:  # outward to the grid of the old low
            steps = (value - low) / p.step
            k = math.floor(steps + 1e-9) if down else math.ceil(steps - 1e-9)
            rounded: float | int = _on_grid(low, p.step, k, int_=p.type == "int")
        elif p.type == "int":
            rounded = math.floor(value + 1e-9) if down else math.ceil(value - 1e-9)
        else:
            rounded = round_significant(value, "down" if down else "up")
        return max(rounded, low) if down else min(rounded, high)


def _on_grid(start: float | int, step: float | int, k: int, *, int_: bool) -> float | int:
    """start + k * step, computed in decimal so that a grid point is the number written."""
    if int_:
        return int(start + k * step)
    return float(Decimal(repr(float(start))) + k * Decimal(repr(float(step))))


def round_significant(value: float, direction: str = "nearest") -> float:
    """`value` to SIGNIFICANT digits: "down", "up" or "nearest" (0.000123456 -> 0.000124 up).

    A value a rounding error away from such a number is that number (0.1 * 10 is 1.0).
    """
    if value == 0 or not math.isfinite(value):
        return value
    exponent = math.floor(math.log10(abs(value))) - (SIGNIFICANT - 1)
    scaled = value / 10.0**exponent
    nearest = round(scaled)
    if direction == "nearest" or math.isclose(scaled, nearest, rel_tol=1e-9):
        digits = nearest
    else:
        digits = math.floor(scaled) if direction == "down" else math.ceil(scaled)
    return float(f"{digits}e{exponent}")


def _widened(param: ParamSpec, end: str) -> tuple[float | int, str | None]:
    """A crowded end moved out by a decade (log) or the old width (linear), or as far as the
    setting stays valid; the second item says which limit stopped it, if one did."""
    sign = -1 if end == "low" else 1
    old = getattr(param, end)
    int_ = param.type == "int"
    if param.log:
        grid, steps = 0.001, 1000  # a thousandth of a decade

        def at(k: int) -> float | int:
            value = 10.0 ** (math.log10(old) + sign * k * grid)
            if int_:  # rounded back towards the old end, so never past a limit
                return math.ceil(value - 1e-9) if end == "low" else math.floor(value + 1e-9)
            return round_significant(value)
    else:
        width = Decimal(repr(param.high)) - Decimal(repr(param.low))
        if param.step is not None:
            grid_step = param.step
        elif int_:
            grid_step = 1
        else:
            grid_step = float(f"1e{math.floor(math.log10(float(width) / 1000))}")
        steps = round(float(width) / grid_step)

        def at(k: int) -> float | int:
            return _on_grid(old, grid_step, sign * k, int_=int_)

    if _valid(param, at(steps)):
        return at(steps), None
    good, bad = 0, steps  # at(0) is the old end, valid; find the last valid grid point
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if _valid(param, at(middle)) else (good, middle)
    why = setting_error(param.name, at(bad)) or f"{at(bad)!r} is not valid on a log scale"
    why = why.split(", but got")[0]
    if not why.startswith(param.name):
        why = f"{param.name} {why}"
    return at(good), why


def _valid(param: ParamSpec, value: float | int) -> bool:
    if param.log and value <= 0:
        return False
    return setting_error(param.name, value) is None


def contains(param: ParamSpec, value: Any) -> bool:
    """Whether `value` lies in `param`'s range (or is one of its choices)."""
    if param.type == "categorical":
        return any(same_value(value, choice) for choice in param.choices or ())
    low, high = param.bounds
    return is_number(value) and low <= value <= high


def range_text(param: ParamSpec) -> str:
    """`[1e-06, 0.01] log`, or `one of sgd, adam`: a range as the narrow command shows it."""
    if param.type == "categorical":
        return f"one of {', '.join(map(_choice, param.choices or ()))}"
    low, high = param.bounds
    text = f"[{_end(low)}, {_end(high)}]"
    if param.log:
        text += " log"
    if param.step is not None:
        text += f" step {_end(param.step)}"
    return text


# -- the next stage's study file ------------------------------------------------------------


@dataclass(frozen=True)
class StageFile:
    path: Path
    name: str
    text: str
    spec: StudySpec


def next_stage_name(parent: str) -> str:
    """`tiny` -> `tiny-stage2`, `tiny-stage2` -> `tiny-stage3`."""
    match = re.fullmatch(r"(.+)-stage(\d+)", parent)
    if match:
        return f"{match.group(1)}-stage{int(match.group(2)) + 1}"
    return f"{parent}-stage2"


def default_stage_path(result: NarrowingResult, name: str) -> Path:
    """`<NAME>.toml` beside the parent's study file, else in the current directory."""
    path = result.spec.path
    directory = path.parent if path is not None and path.parent.is_dir() else Path.cwd()
    return directory / f"{name}.toml"


def write_next_stage(
    result: NarrowingResult,
    *,
    name: str | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    created: datetime.date | None = None,
) -> StageFile:
    """Write the next stage's study file (see `stage_text`); never over a file, unless `force`.

    The written file is loaded back, and must give exactly the new ranges, name and seed.
    """
    name = next_stage_name(result.parent) if name is None else name
    path = Path(out) if out is not None else default_stage_path(result, name)
    if path.exists() and not force:
        raise ConfigError(
            f"{path} exists already; choose another file with --out (or a name with --name), "
            "or overwrite it with --force"
        )
    text = stage_text(result, name=name, directory=path.absolute().parent, created=created)
    spec = parse_study(
        tomllib.loads(text), source=str(path), base_dir=path.absolute().parent, source_text=text
    )
    written = (spec.space, spec.study.name, spec.study.seed, spec.enqueue)
    intended = (result.space, name, result.spec.study.seed, result.enqueue())
    if written != intended:  # a bug here, never the user's mistake: say everything
        raise AssertionError(f"the stage file for {path} reads back as {written}, not {intended}")
    try:
        with open(path, "w" if force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise ConfigError(f"{path} exists already; choose another file with --out") from None
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error}") from None
    return StageFile(path, name, text, replace(spec, path=path.absolute()))


def stage_text(
    result: NarrowingResult,
    *,
    name: str,
    directory: Path,
    created: datetime.date | None = None,
) -> str:
    """The next stage's study file: the parent's text, edited where the stage differs.

    tomlkit edits the parent's document in place, so its comments and layout are kept; each
    changed key gets a comment saying why, and the old provenance is replaced by the new.
    """
    created = datetime.date.today() if created is None else created
    document = tomlkit.parse(_without_header(result.spec.source_text))
    document.pop("narrowing", None)
    document.pop("enqueue", None)
    _set(document, ("study", "name"), name, f"stage of {result.parent!r}, by hpo narrow")
    seed = result.spec.study.seed
    _set(document, ("study", "seed"), seed, "the parent's: the same split and trial seeds")
    for change in result.changes:
        for end in ("low", "high"):
            was, new = getattr(change.old, end), getattr(change.new, end)
            if new != was:
                note = f"{getattr(change, end)} (was {_end(was)})"
                _set(document, ("search", change.name, end), new, note)
    for key, value in _moved_paths(result, document.get("data", {}), directory).items():
        _set(document, ("data", key), value, "the parent's, from its directory")
    narrowing = tomlkit.table()
    narrowing.update(
        parent=result.parent, rule=result.rule, parent_best=result.parent_best, created=created
    )
    document["narrowing"] = _commented(
        narrowing, "where this stage comes from: informational, hpo narrow wrote it"
    )
    enqueue = _enqueue_tables(result)
    if enqueue:
        document["enqueue"] = enqueue
    return _header(result, name, created) + tomlkit.dumps(document).rstrip() + "\n"


def _without_header(source: str) -> str:
    """A stage's text without the header `_header` wrote (a stage of a stage gets a new one)."""
    if not source.startswith(HEADER_MARK):
        return source
    lines = source.splitlines(keepends=True)
    blank = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    return "".join(lines[blank + 1 :])


def _set(document: TOMLDocument, keys: tuple[str, ...], value: Any, comment: str) -> None:
    """`document[k1][k2]... = value`, with a trailing comment; a missing table is added.

    A value inside an inline table (`lr = { low = ... }`) gets no comment, since TOML allows
    none there: the header's list of ranges says it instead.
    """
    *tables, key = keys
    container: Any = document
    for table in tables:
        container = container.setdefault(table, tomlkit.table())
    item = tomlkit.item(value)
    container[key] = item if isinstance(container, InlineTable) else _commented(item, comment)


def _commented(item: _I, comment: str) -> _I:
    item.comment(comment)
    item.trivia.comment_ws = "  "  # two spaces before an inline comment, as ruff and PEP 8
    return item


def _enqueue_tables(result: NarrowingResult) -> AoT:
    """One `[[enqueue]]` table per top trial inside the new ranges, each header commented."""
    values: dict[int | None, float] = {t.number: t.value for t in result.top}
    tables = tomlkit.aot()
    for trial in result.enqueue():
        number = trial.parent_trial
        metric = f"{result.spec.study.metric} {fmt(values[number])}"
        table = _commented(
            tomlkit.table(),
            f"parent trial {number} ({metric}), run first with its parameters and seed",
        )
        params = tomlkit.inline_table()
        params.update(trial.params)
        table.update({"params": params, "seed": trial.seed, "parent_trial": number})
        tables.append(table)
    return tables


def _moved_paths(
    result: NarrowingResult, data: Mapping[str, Any], directory: Path
) -> dict[str, str]:
    """Relative data paths made absolute when the stage is written elsewhere than the parent."""
    parent = result.spec.path.parent if result.spec.path is not None else None
    if parent is None or parent.resolve() == directory.resolve():
        return {}
    moved = {}
    for key in ("data_dir", "path"):
        if isinstance(data.get(key), str):
            expanded = Path(data[key]).expanduser()
            if not expanded.is_absolute():
                moved[key] = str(parent / expanded)
    return moved


def _header(result: NarrowingResult, name: str, created: datetime.date) -> str:
    """The comment block a stage file starts with, up to its first blank line."""
    top = result.top
    lines = [
        f"{HEADER_MARK} stage {_quoted(name)} of study {_quoted(result.parent)}, made on "
        f"{created} from its "
        f"{result.n_complete} completed trials (best {result.spec.study.metric} "
        f"{fmt(result.parent_best)}, trial {top[0].number}).",
        "# Ranges (old -> new):",
        *(
            f"#   {c.name}: {range_text(c.old)} -> {range_text(c.new)} ({c.action})"
            for c in result.changes
        ),
        "# The rule is in [narrowing] below. The study seed is the parent's: the same split,",
        "# and each [[enqueue]] trial (a parent top trial inside the new ranges) runs first",
        "# with its parent trial's parameters and seed, reproducing it exactly. The rest is the",
        "# parent's definition as stored. Run it with `hpo run` on this file.",
    ]
    return "\n".join(lines) + "\n\n"


def _quoted(text: str) -> str:
    return tomlkit.string(text).as_string()
