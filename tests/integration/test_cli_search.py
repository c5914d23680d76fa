"""`imgtrain search` usage and a missing store; searching a real library is in tests/e2e."""

from __future__ import annotations

import pytest

from daemon.cli import main
from tests.conftest import write_config


@pytest.mark.parametrize(
    "argv",
    [
        ["search"],
        ["search", "dog", "--image", "x.jpg"],
        ["search", "  "],
        ["search", "dog", "-n", "0"],
    ],
)
def test_bad_usage_exits_2(tmp_path, capsys, argv: list[str]) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"data_dir": "data"})
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(cfg), *argv])
    assert exc.value.code == 2
    assert "usage: imgtrain search" in capsys.readouterr().err


def test_without_a_store_it_says_so_and_creates_nothing(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"data_dir": "data"})
    assert main(["--config", str(cfg), "search", "a dog"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"imgtrain: NOT_FOUND: there is no vector store at {tmp_path}/data/chroma"
    )
    assert not (tmp_path / "data").exists()
