"""Study kinds: what one trial of a study does, and which sections of a study file it takes.

    training         the default: a trial trains the chapter's network on data ([data],
                     [model], [train]); every study before these two kinds
    optimizer_paths  a trial runs one of the chapter's optimizers on f(x, y) = x²/20 + y² and
                     records its path (sections 6.1.3 to 6.1.7): [paths]
    activations      a trial draws the hidden-layer activations of an untrained network for
                     random inputs (section 6.2.2): [model] (the architecture), [activations]

The last two train nothing, so they take no [data] or [train], and nothing can be pruned. Their
trials are computed in `hpo.engine.probes`; what they compare is searched like any setting
(`[search.optimizer]`, `[search.weight_init_std]`, ...), usually with the grid sampler.

Each kind is one `StudyKind` in `STUDY_KINDS`: what the spec layer knows of it, as data (its
metrics, whether it trains, its sections and settings) and as the checks of a study file. The
layers above keep what they do per kind in one registry each, keyed by the kind's name
(`hpo.engine.probes.PROBES`, `hpo.analysis.probe_report.FIGURES`), since `spec` cannot import
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from hpo.errors import ConfigError
from hpo.spec.keys import toml_repr
from hpo.spec.probe_settings import ActivationSettings, PathsSettings, ProbeSettings

TRAINING = "training"
Direction = Literal["maximize", "minimize"]  # Optuna's names, and a study file's
_ALWAYS = ("study", "search", "sampler", "pruner")  # sections every kind takes


@dataclass(frozen=True)
class StudyKind:
    """What a trial of a study does, as far as a study file and the layers above need to know.

    `metrics`: the metrics a trial returns, each with the direction that improves it, the
    kind's default first. A kind that trains nothing (`trains` false) reads its own `section`
    into a `settings_type`, takes only the `sections` and the [model]/[search] `settings`
    named here (`why` says why in errors), and must search each setting of `must_search`.
    """

    name: str
    metrics: Mapping[str, Direction]
    trains: bool = False
    section: str | None = None
    settings_type: type[PathsSettings] | type[ActivationSettings] | None = None
    sections: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    why: str = ""
    must_search: Mapping[str, str] = field(default_factory=dict)  # setting -> what to add

    @property
    def default_metric(self) -> str:
        return next(iter(self.metrics))

    def direction_of(self, metric: str) -> Direction:
        """The direction that improves `metric` (maximize for one the kind does not know, which
        `StudySettings` then refuses)."""
        return self.metrics.get(metric, "maximize")

    def read_settings(self, document: Mapping[str, Any]) -> ProbeSettings | None:
        """The kind's own settings from its section (checked for types already), or None."""
        if self.settings_type is None or self.section is None:
            return None
        return self.settings_type.from_table(dict(document.get(self.section) or {}))

    def check_sections(self, document: Mapping[str, Any]) -> None:
        """Refuse the sections and settings that a study of this kind does not use.

        A [paths] or [activations] section belongs to its kind only; a kind that trains nothing
        takes no [data] or [train], and of [model] and [search.<setting>] only its own settings.
        """
        if self.trains:
            _refuse_other_kinds_sections(self, document)
            return
        self._refuse_foreign_sections(document)
        self._refuse_foreign_settings(document)
        for name, hint in self.must_search.items():
            if name not in (document.get("search") or {}):
                raise ConfigError(
                    f"a study of kind = {toml_repr(self.name)} {hint}", key=f"search.{name}"
                )

    def _refuse_foreign_sections(self, document: Mapping[str, Any]) -> None:
        sections = (*_ALWAYS, *self.sections)
        for name, table in document.items():
            if name in sections:
                continue
            headers = ", ".join(f"[{s}]" for s in sections)
            raise ConfigError(
                f"[{name}] does not apply to a study of kind = {toml_repr(self.name)} "
                f"({self.why}), but got {_given(table)}; its sections are {headers}",
                key=_first_key(name, table),
            )

    def _refuse_foreign_settings(self, document: Mapping[str, Any]) -> None:
        for section in ("model", "search"):
            table = document.get(section)
            if not isinstance(table, dict):
                continue
            for name, value in table.items():
                if name in self.settings:
                    continue
                shown = (
                    f"{name} = {toml_repr(value)}" if section == "model" else f"[search.{name}]"
                )
                raise ConfigError(
                    f"{name} does not apply to a study of kind = {toml_repr(self.name)} "
                    f"({self.why}), but got {shown}; the settings it takes are "
                    f"{', '.join(self.settings)}",
                    key=f"{section}.{name}",
                )


def _refuse_other_kinds_sections(kind: StudyKind, document: Mapping[str, Any]) -> None:
    """A study of `kind` has none of the sections that belong to another kind."""
    for owner in STUDY_KINDS.values():
        name = owner.section
        if name is None or owner is kind or name not in document:
            continue
        raise ConfigError(
            f"[{name}] applies only to a study of kind = {toml_repr(owner.name)}, but this "
            f"study is of kind = {toml_repr(kind.name)} and got {_given(document[name])}; "
            f"set [study] kind = {toml_repr(owner.name)} or remove [{name}]",
            key=_first_key(name, document[name]),
        )


def _first_key(section: str, table: Any) -> str:
    """`section.key` of the section's first key, so that an error names a key and its value."""
    if isinstance(table, dict) and table:
        return f"{section}.{next(iter(table))}"
    return section


def _given(table: Any) -> str:
    if isinstance(table, dict) and table:
        key, value = next(iter(table.items()))
        return f"{key} = {toml_repr(value)}"
    return f"[{table}]" if isinstance(table, str) else "the section"


# The metrics: f is f(x, y) at the path's last point; entropy, how evenly the last hidden
# layer's activations spread over their histogram (see hpo.engine.probes.spread_entropy).
_TRAINING = StudyKind(TRAINING, {"val_acc": "maximize", "val_loss": "minimize"}, trains=True)
_OPTIMIZER_PATHS = StudyKind(
    "optimizer_paths",
    {"f": "minimize"},
    section="paths",
    settings_type=PathsSettings,
    sections=("paths",),
    settings=("optimizer",),  # searched: the other hyperparameters are the book's
    why="it runs optimizers on f(x, y) = x²/20 + y², with no network and no data",
    must_search={
        "optimizer": "compares optimizers, but it searches none; add [search.optimizer] with "
        'choices = ["sgd", "momentum", ...]'
    },
)
_ARCHITECTURE = (
    "hidden_size_list", "n_hidden_layers", "hidden_size", "activation", "weight_init_std",
    "dtype",
)  # fmt: skip
_ACTIVATIONS = StudyKind(
    "activations",
    {"entropy": "maximize"},
    section="activations",
    settings_type=ActivationSettings,
    sections=("model", "activations"),
    settings=_ARCHITECTURE,
    why="it draws the activations of an untrained network for random inputs, with no data, "
    "no training, batch norm, dropout or weight decay",
)
STUDY_KINDS: Mapping[str, StudyKind] = MappingProxyType(
    {kind.name: kind for kind in (_TRAINING, _OPTIMIZER_PATHS, _ACTIVATIONS)}
)
KINDS: tuple[str, ...] = tuple(STUDY_KINDS)
