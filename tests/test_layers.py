"""hpo's subpackages form a one-way stack: each imports only from the ones below it.

    cli → analysis → engine → tracking → storage → spec → errors (and trainer, below all)

Every import counts, lazy ones inside functions included: a lazy import pointing up is a
cycle all the same. MLflow is imported only by `tracking`: the layers above log reports,
comparisons and the retrained model through its functions, and the layers below never touch it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HPO = Path(__file__).resolve().parents[1] / "hpo"
STACK = ["errors", "spec", "storage", "tracking", "engine", "analysis", "cli"]  # bottom first
MLFLOW_ALLOWED = {"tracking"}


def _layer(module: str) -> str | None:
    """The layer of a dotted name inside hpo ("hpo.storage.locks" -> "storage")."""
    parts = module.split(".")
    if parts[0] != "hpo" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in STACK else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in a file, relative ones resolved."""
    package = ".".join(path.relative_to(HPO.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


MODULES = sorted(p for p in HPO.rglob("*.py") if p.parent != HPO or p.name == "errors.py")


def test_every_module_sits_in_a_layer():
    loose = [p.name for p in HPO.glob("*.py") if p.name not in ("__init__.py", "errors.py")]
    assert not loose, f"modules outside the subpackages: {loose}"
    folders = {p.name for p in HPO.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(STACK) - {"errors"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(HPO)))
def test_imports_point_down_the_stack(path):
    own = _layer("hpo." + ".".join(path.relative_to(HPO).with_suffix("").parts))
    assert own is not None
    upward = []
    for line, module in _imports(path):
        layer = _layer(module)
        if layer is not None and STACK.index(layer) > STACK.index(own):
            upward.append(f"line {line}: {module} ({layer} is above {own})")
        if module.split(".")[0] == "mlflow" and own not in MLFLOW_ALLOWED:
            upward.append(f"line {line}: {module} (MLflow outside tracking)")
    assert not upward, "\n".join(upward)
