"""README's module map is the tree: every module of daemon/ has its line, and no line names
a module that is gone. A newcomer finds each concept from the map; a stale map misleads."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _map_rows() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Module map", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(daemon/[\w/]+\.py)` \|", section, flags=re.M))


def _tree() -> set[str]:
    return {
        str(p.relative_to(REPO))
        for p in (REPO / "daemon").rglob("*.py")
        if p.name != "__init__.py" or p.read_text(encoding="utf-8").strip()
    }


def test_readme_module_map_matches_the_tree() -> None:
    rows, tree = _map_rows(), _tree()
    assert not tree - rows, f"modules missing from README's module map: {sorted(tree - rows)}"
    assert not rows - tree, (
        f"README's module map names modules that are gone: {sorted(rows - tree)}"
    )
