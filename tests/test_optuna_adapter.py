"""The contract between hpo's Optuna adapter and Optuna's own storage.

The same studies run with the adapter on (hpo.storage.optuna_adapter: batched writes, its own
queries, Optuna's private cache) and off (Optuna's public storage API only), on SQLite and on
PostgreSQL; what each leaves in the database must be the same. An Optuna upgrade that changes
the internals the adapter relies on fails here first.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from _stored import stored_trials, tpe_study, trial_record
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpo.engine.launch import build_objective
from hpo.engine.worker import Worker
from hpo.errors import ConfigError
from hpo.spec.data import load_splits
from hpo.spec.study_file import load_study_file
from hpo.storage import optuna_adapter
from hpo.storage.database import resolve_storage
from hpo.storage.optuna_adapter import ADAPTER_ENV, adapter_active
from hpo.storage.optuna_adapter.internals import trial_id_of
from hpo.storage.studies import join_study, prepare_study

STALENESS = {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_GRACE_PERIOD": "2"}


@pytest.fixture(params=["sqlite", "postgresql"])
def two_storages(request, tmp_path) -> Iterator[tuple[str, str]]:
    """Two empty storages of one kind: one for the adapter on, one for it off."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'on.db'}", f"sqlite:///{tmp_path / 'off.db'}"
        return
    admin = make_url(request.getfixturevalue("postgres_admin_url"))
    names = [f"hpo_contract_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for name in names:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        on, off = (admin.set(database=n).render_as_string(hide_password=False) for n in names)
        yield on, off
    finally:
        with engine.connect() as connection:
            for name in names:
                connection.execute(
                    sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                )
        engine.dispose()


def _set_adapter(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    monkeypatch.setenv(ADAPTER_ENV, "on" if on else "off")
    assert adapter_active() is on


def _failing_on(numbers: set[int], objective: Callable) -> Callable:
    def run(trial: optuna.Trial) -> float:
        value = objective(trial)
        if trial.number in numbers:
            raise ValueError(f"trial {trial.number} fails on purpose")
        return value

    return run


def _scenario(url: str, spec, *, dead_worker: bool, fail: set[int]) -> list[tuple]:
    """One worker runs the study to its budget, through whatever storage path is in force.

    With `dead_worker`, a trial was claimed, started and beaten for once by a worker that
    then died; the sweep must fail it and queue its retry. Trials in `fail` raise at their
    end (failed, not retried)."""
    settings = resolve_storage(url, environ=STALENESS)
    prepare_study(settings, spec)
    joined = join_study(settings, spec, worker_index=0)
    if dead_worker:
        dead = joined.study.ask()
        dead.suggest_float("lr", 1e-4, 1e-1, log=True)
        dead.set_user_attr("seed", 4242)
        if joined.batched is not None:
            joined.retrying.flush_trial(trial_id_of(dead))  # as FlushAtStart does
        joined.storage.record_heartbeat(trial_id_of(dead))
        time.sleep(settings.grace_period + 1.5)
    splits = load_splits(spec.data, seed=spec.study.seed)
    objective = _failing_on(fail, build_objective(joined, spec, splits))
    Worker(joined, settings, objective, n_trials=spec.study.n_trials).run()
    joined.storage.engine.dispose()
    return [trial_record(t) for t in stored_trials(url)]


@pytest.fixture
def pruned_spec(tiny_study_file):
    extra = "n_warmup_steps = 1\nn_startup_trials = 1\n"
    return load_study_file(tiny_study_file(n_trials=6, epochs=4, pruner="median", extra=extra))


@pytest.fixture
def tpe_spec(tiny_study_file):
    return tpe_study(tiny_study_file, n_trials=6, epochs=2)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")
def test_random_pruned_failed_and_retried_trials_are_stored_alike(
    two_storages, pruned_spec, monkeypatch
):
    on, off = two_storages
    _set_adapter(monkeypatch, True)
    through_adapter = _scenario(on, pruned_spec, dead_worker=True, fail={3})
    _set_adapter(monkeypatch, False)
    through_optuna = _scenario(off, pruned_spec, dead_worker=True, fail={3})
    assert through_adapter == through_optuna
    states = [record[1] for record in through_adapter]
    assert {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL} <= set(states)
    retries = [r for r in through_adapter if "failed_trial" in r[6]]
    assert len(retries) == 1
    assert retries[0][5]["seed"] == 4242  # the dead trial's retry has its seed
    assert states.count(TrialState.FAIL) == 2  # the dead worker's trial, and trial 3


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")
def test_tpe_trials_are_stored_alike(two_storages, tpe_spec, monkeypatch):
    on, off = two_storages
    _set_adapter(monkeypatch, True)
    through_adapter = _scenario(on, tpe_spec, dead_worker=False, fail=set())
    _set_adapter(monkeypatch, False)
    through_optuna = _scenario(off, tpe_spec, dead_worker=False, fail=set())
    assert through_adapter == through_optuna
    relative = [r[0] for r in through_adapter if any(k.startswith("tpe:") for k in r[6])]
    assert relative == [2, 3, 4, 5]  # TPE sampled these from the trials before them


def _statements_per_trial(url: str, spec) -> int:
    """SQL statements a claimed trial costs, counted by SQLite itself."""
    settings = resolve_storage(url)
    prepare_study(settings, spec)
    joined = join_study(settings, spec, worker_index=0)
    splits = load_splits(spec.data, seed=spec.study.seed)
    worker = Worker(joined, settings, build_objective(joined, spec, splits), n_trials=1)
    worker.run()  # the first claim also sweeps
    statements: list[str] = []
    joined.storage.engine.dispose()
    sqlalchemy.event.listen(
        joined.storage.engine,
        "connect",
        lambda connection, _record: connection.set_trace_callback(statements.append),
    )
    worker.n_trials = 2
    worker.run()
    return len([s for s in statements if not s.startswith("PRAGMA")])


def test_turning_the_adapter_off_writes_through_optuna_alone(tmp_path, pruned_spec, monkeypatch):
    _set_adapter(monkeypatch, True)
    adapter = _statements_per_trial(f"sqlite:///{tmp_path / 'on.db'}", pruned_spec)
    _set_adapter(monkeypatch, False)
    plain = _statements_per_trial(f"sqlite:///{tmp_path / 'off.db'}", pruned_spec)
    settings = resolve_storage(f"sqlite:///{tmp_path / 'off.db'}")
    assert join_study(settings, pruned_spec, worker_index=1).batched is None
    assert adapter <= 17 < 2 * adapter < plain, (adapter, plain)


@pytest.mark.parametrize("version", ["5.0.3", "5.2.0", "6.0.0.dev"])
def test_an_optuna_outside_the_tested_range_turns_the_adapter_off_with_one_warning(
    version, monkeypatch, caplog
):
    monkeypatch.delenv(ADAPTER_ENV, raising=False)
    monkeypatch.setattr(optuna, "__version__", version)
    monkeypatch.setattr(optuna_adapter, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="hpo.storage.optuna_adapter"):
        assert adapter_active() is False
        assert adapter_active() is False
    assert len(caplog.records) == 1
    assert f"Optuna {version} is outside the range" in caplog.records[0].getMessage()


def test_the_tested_optuna_keeps_the_adapter_on_without_a_word(monkeypatch, caplog):
    monkeypatch.delenv(ADAPTER_ENV, raising=False)
    monkeypatch.setattr(optuna, "__version__", "5.1.7")
    with caplog.at_level(logging.WARNING):
        assert adapter_active() is True
    assert not caplog.records


def test_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv(ADAPTER_ENV, "maybe")
    with pytest.raises(ConfigError, match=f"^{ADAPTER_ENV}: 'maybe' is neither on nor off"):
        adapter_active()


@pytest.mark.slow
def test_workers_with_the_adapter_off_finish_the_study_whole(
    two_storages, tiny_study_file, tmp_path
):
    """`hpo run --workers 2 --no-optuna-adapter` against the adapter's run of the same file:
    the same trials finished, each with everything a trial keeps (the order of two workers'
    trials differs from run to run, and so do which are pruned: the records are compared by
    their shape)."""
    extra = "n_warmup_steps = 1\nn_startup_trials = 1\n"
    study_file = tiny_study_file(n_trials=8, epochs=4, pruner="median", extra=extra)
    kept = {}
    for url, flags in zip(two_storages, ([], ["--no-optuna-adapter"]), strict=True):
        env = os.environ | {"HPO_STORAGE": url, "OPENBLAS_NUM_THREADS": "1"}
        env.pop(ADAPTER_ENV, None)
        done = subprocess.run(
            [sys.executable, "-m", "hpo.cli", "run", str(study_file), "--workers", "2",
             "--no-mlflow", "--no-progress", *flags],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        trials = stored_trials(url)
        assert sorted(t.number for t in trials) == list(range(len(trials)))
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        # Every epoch trained is an intermediate value (optuna-dashboard's learning curve).
        assert all(
            len(t.intermediate_values) == len(t.user_attrs["history"]["val_acc"]) for t in trials
        )
        kept[tuple(flags)] = {(tuple(t.params), tuple(sorted(t.user_attrs))) for t in trials}
        assert len(trials) == 8
    assert kept[()] == kept[("--no-optuna-adapter",)] == {(("lr",), ("history", "seed", "worker"))}


HPO = Path(__file__).resolve().parents[1] / "hpo"
SEAM = HPO / "storage" / "optuna_adapter"
OPTUNA_PRIVATE_NAMES = {
    "_trial_id", "_cached_frozen_trial", "_backend", "_studies", "_add_trials_to_cache",
    "_get_stale_trial_ids", "_CachedStorage", "_StudyInfo", "_rdb", "_heartbeat",
}  # fmt: skip
OPTUNA_TABLE_SQL = re.compile(
    r"\b(FROM|INTO|UPDATE|JOIN)\s+(trials|studies|trial_\w+|study_\w+|version_info)\b", re.I
)


def _private_or_sql(value: object) -> bool:
    return isinstance(value, str) and bool(
        value in OPTUNA_PRIVATE_NAMES or OPTUNA_TABLE_SQL.search(value)
    )


def _seam_breaches(path: Path) -> list[str]:
    """Uses of Optuna's private parts, or SQL on its tables, in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom | ast.Import):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            modules += [alias.name for alias in node.names]
            if any(m.startswith("optuna") and "._" in m for m in modules):
                found.append(f"line {node.lineno}: imports {modules}")
            names = {alias.name for alias in node.names} & OPTUNA_PRIVATE_NAMES
            if names and (node.module or "").startswith("optuna"):
                found.append(f"line {node.lineno}: imports {names}")
        elif isinstance(node, ast.Attribute) and node.attr in OPTUNA_PRIVATE_NAMES:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in OPTUNA_PRIVATE_NAMES:
            found.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.Constant) and _private_or_sql(node.value):
            found.append(f"line {node.lineno}: {node.value[:60]!r}")
    return found


@pytest.mark.parametrize(
    "path",
    sorted(p for p in HPO.rglob("*.py") if SEAM not in p.parents),
    ids=lambda p: str(p.relative_to(HPO)),
)
def test_optunas_internals_are_used_only_inside_the_seam(path):
    assert not _seam_breaches(path), "\n".join(_seam_breaches(path))


def test_the_seam_check_finds_what_it_looks_for():
    inside = [p for p in SEAM.glob("*.py") if _seam_breaches(p)]
    assert {p.name for p in inside} >= {"internals.py", "batched.py", "queries.py"}
