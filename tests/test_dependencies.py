"""Everything the code imports is declared in pyproject.toml: the package's own modules in its
dependencies, the tests' in the `dev` extra (a fresh install must not work by luck, because
another package happened to pull a module in)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = {"torch"}  # imported only where it is optional, and the code says so


def _imported(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _third_party(names: set[str]) -> set[str]:
    own = {"hpo", "trainer"} | {p.stem for p in (ROOT / "tests").glob("_*.py")}
    return {n for n in names if n not in sys.stdlib_module_names and n not in own} - OPTIONAL


def _declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    found = importlib.metadata.packages_distributions()
    return {m: {d.lower() for d in found.get(m, [])} for m in modules}


def test_the_package_declares_what_it_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"])
    used = _third_party(_imported(ROOT / "hpo") | _imported(ROOT / "trainer"))
    missing = {m: d for m, d in _distributions(used).items() if not d & declared}
    assert not missing, f"imported but not in [project] dependencies: {missing}"


def test_the_tests_and_benchmarks_declare_what_they_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"] + project["optional-dependencies"]["dev"])
    used = _third_party(_imported(ROOT / "tests") | _imported(ROOT / "benchmarks"))
    missing = {m: d for m, d in _distributions(used).items() if not d & declared}
    assert not missing, f"imported but not in dependencies or the dev extra: {missing}"
