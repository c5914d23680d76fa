"""The layout holds: imports go only downwards, no circles, no module too big to read.

The layers, bottom first, are the README's module map. A package may import
only packages of a lower layer (and its own modules, without a circle); that
is what lets a newcomer change a layer knowing what can be affected.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAEMON = REPO / "daemon"
MAX_LINES = 400

# Each top-level name under daemon/ and its layer; same-layer packages must not import each other.
LAYERS: dict[str, int] = {
    "__init__": 0,
    "vocab": 0,
    "errors": 0,
    "humanize": 0,
    "redact": 0,
    "config": 1,
    "ledger": 2,
    "imaging": 3,
    "status": 3,
    "models": 4,
    "store": 5,
    "people": 6,
    "phases": 7,
    "ingest": 7,
    "workers": 8,
    "service": 9,
    "commands": 10,
    "cli": 11,
    "__main__": 12,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(DAEMON.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every daemon module this file imports, at any depth (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("daemon")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("daemon"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer() -> None:
    unknown = sorted({_top(m) for m in _modules()} - set(LAYERS))
    assert not unknown, f"give these a layer in LAYERS (and the README's map): {unknown}"


def test_imports_only_go_downwards() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        mine = _top(name)
        for target in _imports(path):
            theirs = _top(target)
            if theirs == mine or target not in modules:
                continue  # inside one package, or a name imported from a module
            if LAYERS[theirs] >= LAYERS[mine] and theirs != "__init__":
                wrong.append(f"{path.relative_to(REPO)} imports {target} (layer {theirs})")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(wrong)


def test_no_import_circles() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        graph[name] = {t for t in _imports(path) if t in modules and t != name}
        # A package's face imports its modules; its modules may import it only for names.
        if path.name == "__init__.py":
            graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}

    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_modules_stay_small_enough_to_read() -> None:
    big = [
        f"{p.relative_to(REPO)}: {n} lines"
        for p in sorted(DAEMON.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert not big, f"over {MAX_LINES} lines (split by job):\n" + "\n".join(big)
