"""The code's layout rules, checked on the source itself.

SQL lives only in `daemon/ledger/`: everything else reaches the tables through
the ledger's typed APIs (`ledger.faces`, `ledger.clusters`, ...).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

DAEMON = Path(__file__).resolve().parents[2] / "daemon"
LEDGER = DAEMON / "ledger"

# SQL in this code base is written in capitals at the start of a string.
SQL_START = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|PRAGMA|WITH)\b")
EXECUTE = {"execute", "executemany", "executescript"}


def sql_in(source: str) -> list[tuple[int, str]]:
    """(line, what) for every SQL string literal and every .execute*() call."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and SQL_START.match(node.value)
        ):
            found.append((node.lineno, f"SQL string {node.value.strip()[:40]!r}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in EXECUTE
            and node.args  # SQL's execute takes a statement; a Redis pipeline's takes none
        ):
            found.append((node.lineno, f".{node.func.attr}() call"))
    return sorted(found)


def test_the_sql_finder_sees_every_form() -> None:
    source = (
        'a = "SELECT x FROM t"\n'
        "b = f'  UPDATE t SET x={a}'\n"
        'c = ("INSERT INTO t"\n     " VALUES (1)")\n'
        "conn.execute(a)\n"
        "conn.executemany(a, [])\n"
        'd = "Select the best face"  # prose, not SQL\n'
        "e = store.query(a)  # Chroma's query, not SQL\n"
        "pipe.execute()  # a Redis pipeline, not SQL\n"
    )
    assert [line for line, _ in sql_in(source)] == [1, 2, 3, 5, 6]


def test_sql_lives_only_in_the_ledger() -> None:
    files = [p for p in sorted(DAEMON.rglob("*.py")) if LEDGER not in p.parents]
    assert len(files) > 20, f"expected the daemon's modules under {DAEMON}"
    outside = [
        f"{path.relative_to(DAEMON.parent)}:{line}: {what}"
        for path in files
        for line, what in sql_in(path.read_text(encoding="utf-8"))
    ]
    assert not outside, "SQL outside daemon/ledger/ (add a ledger API instead):\n" + "\n".join(
        outside
    )
