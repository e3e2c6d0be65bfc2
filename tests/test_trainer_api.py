"""The trainer's public surface and its dependency direction (STYLE.md, habits 1 and 8)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import trainer

ALLOWED_THIRD_PARTY = {"numpy", "sklearn"}
FORBIDDEN_PREFIXES = ("optuna", "mlflow", "sqlalchemy")


def test_all_lists_exactly_the_public_names():
    exported = trainer.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    for name in exported:
        assert not name.startswith("_"), name
        assert hasattr(trainer, name), name
    public = {
        name
        for name, value in vars(trainer).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(exported)


def test_exported_classes_and_functions_are_defined_in_the_package():
    for name in trainer.__all__:
        value = getattr(trainer, name)
        if isinstance(value, type | types.FunctionType):
            assert value.__module__.startswith("trainer."), (name, value.__module__)


_SUBPROCESS = textwrap.dedent(
    """
    import sys

    import trainer
    import trainer.data
    from trainer.data import load_dataset, split_dataset

    splits = split_dataset(load_dataset("digits"), val_fraction=0.2, seed=0)
    net = trainer.MultiLayerNet(64, [20], 10, seed=0)
    history = trainer.train(
        net, trainer.make_optimizer("sgd", lr=0.1), splits.x_train, splits.t_train,
        splits.x_val, splits.t_val, epochs=1, batch_size=100, seed=0,
    )
    assert len(history) == 1
    loaded = sorted(
        name for name in sys.modules if name.startswith({prefixes!r})
    )
    print("LOADED", loaded)
    sys.exit(1 if loaded else 0)
    """
).format(prefixes=FORBIDDEN_PREFIXES)


def test_training_never_imports_optuna_mlflow_or_sqlalchemy():
    result = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOADED []" in result.stdout


def _trainer_sources() -> list[Path]:
    return sorted(Path(trainer.__file__).parent.rglob("*.py"))


def _absolute_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_trainer_imports_only_the_standard_library_numpy_and_sklearn():
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY
    sources = _trainer_sources()
    assert len(sources) >= 7  # the package and its data subpackage, not an empty glob
    offending = []
    seen = set()
    for path in sources:
        for lineno, module in _absolute_imports(path):
            top = module.split(".")[0]
            seen.add(top)
            if top not in allowed:
                offending.append(f"{path}:{lineno}: import {module}")
    assert offending == []
    assert "numpy" in seen  # the walk did find imports
