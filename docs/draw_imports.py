"""Draw hpo's imports, module by module, with the layers stacked as `tests/test_layers.py`
enforces them: `python docs/draw_imports.py` writes docs/imports.png.

Each row is a layer (cli at the top, errors at the bottom); each arrow is "imports". An arrow
drawn red would point up the stack; the test fails on those, so the drawing shows none.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_layers import HPO, MODULES, STACK, _imports, _layer  # noqa: E402


def module_name(path: Path) -> str:
    parts = path.relative_to(HPO).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return "hpo." + ".".join(parts)


def edges() -> set[tuple[str, str]]:
    """(importer, imported) between hpo's modules, lazy imports included."""
    names = {module_name(p) for p in MODULES}
    found = set()
    for path in MODULES:
        source = module_name(path)
        for _line, target in _imports(path):
            while target and target not in names:  # `from hpo.x import name` -> hpo.x
                target = target.rpartition(".")[0]
            if target and target != source and target != "hpo":
                found.add((source, target))
    return found


def main() -> int:
    graph = edges()
    rows: dict[str, list[str]] = defaultdict(list)
    for path in MODULES:
        name = module_name(path)
        if name.count(".") >= 2 or name == "hpo.errors":
            rows[_layer(name) or "?"].append(name)
    position = {}
    for level, layer in enumerate(STACK):
        members = sorted(rows[layer])
        crowded = len(members) > 12  # labels alternate up and down so that none overlap
        for i, name in enumerate(members):
            lift = (0.12 if i % 2 else -0.12) if crowded else 0.0
            position[name] = ((i + 0.5) / max(len(members), 1), level + lift)
    figure, axes = plt.subplots(figsize=(22, 12))
    upward = 0
    for source, target in sorted(graph):
        if source not in position or target not in position:
            continue
        (x0, y0), (x1, y1) = position[source], position[target]
        up = round(y1) > round(y0)
        upward += up
        color = "red" if up else ("0.3" if round(y1) < round(y0) else "tab:blue")
        style = {"arrowstyle": "-|>", "lw": 1.6 if up else 0.4, "alpha": 0.9 if up else 0.25}
        axes.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=style | {"color": color})
    for name, (x, y) in position.items():
        short = name.split(".", 2)[-1] if name.count(".") >= 2 else name.split(".")[-1]
        axes.text(x, y, short, ha="center", va="center", fontsize=7,
                  bbox={"boxstyle": "round", "fc": "white", "ec": "0.6"})  # fmt: skip
    axes.set_yticks(range(len(STACK)), STACK, fontsize=11)
    axes.set_xticks([])
    axes.set_ylim(-0.6, len(STACK) - 0.4)
    axes.set_xlim(-0.02, 1.02)
    for side in ("top", "right", "bottom"):
        axes.spines[side].set_visible(False)
    axes.set_title(
        f"hpo's imports: {len(graph)} arrows between {len(position)} modules; "
        f"{upward} point up the stack (grey: down, blue: within a layer)",
        fontsize=13,
    )
    out = ROOT / "docs" / "imports.png"
    figure.savefig(out, dpi=90, bbox_inches="tight")
    print(f"{out}: {len(graph)} imports, {upward} pointing up")
    return 1 if upward else 0


if __name__ == "__main__":
    sys.exit(main())
