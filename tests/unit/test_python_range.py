"""One supported Python range, said the same way by pyproject.toml, the Makefile and README."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from tests.conftest import REPO


def _range() -> tuple[int, int]:
    """(lowest, highest) supported 3.x minor version, from requires-python."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    spec = meta["project"]["requires-python"]
    low = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", spec.replace(" ", ""))
    assert low, f"requires-python {spec!r} is not of the form >=3.X,<3.Y"
    return int(low[1]), int(low[2]) - 1


def _makefile_check() -> str:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    found = re.search(r"\$\(PYTHON\) -c '(import sys;.*?)'$", text, re.M)
    assert found, "the Makefile has no Python version check"
    return found[1]


def test_the_makefile_checks_the_range_pyproject_allows() -> None:
    low, high = _range()
    program = _makefile_check()
    bounds = re.search(r"\(3, (\d+)\) <= v <= \(3, (\d+)\)", program)
    assert bounds and (int(bounds[1]), int(bounds[2])) == (low, high), program
    assert f"3.{low} to 3.{high}" in program  # the message names the range
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # the interpreter running the tests is supported
    assert low <= sys.version_info.minor <= high


def test_the_readme_says_which_versions_are_tested_and_expected_to_work() -> None:
    low, high = _range()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"Python 3.{low} to 3.{high}" in readme
    assert re.search(r"[Tt]ested\s+(here\s+)?on\s+3\.\d+", readme)
    assert "expected to work" in readme
