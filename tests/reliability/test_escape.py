"""Folder names that try to escape never make the daemon read or write elsewhere.

A name cannot hold "/", but it can look like a path (`..\\..\\etc`), an option
(`-rf`), a home directory (`~root`), a shell command (`$(touch ...)`), or be
255 bytes long; a link can be named like a batch folder. Every batch home
must be a harmless name directly inside data/batches, the originals must
arrive there unchanged, nothing may appear or change outside the daemon's
own folders (the test's directory is fingerprinted before and after), and
no command hidden in a name may ever run.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from daemon.ingest import scan
from tests.conftest import REPO, make_jpeg
from tests.e2e.conftest import Daemon
from tests.helpers import wait_for
from tests.reliability.conftest import LedgerProbe, file_states

SENTINELS = [f"ESCAPED_{i}" for i in range(1, 5)]  # created only if a name ran as a command
HOSTILE = [
    "-rf",
    "~root",
    "photos\\..\\..\\etc\\passwd",
    "C:\\Windows\\System32",
    "$(touch ESCAPED_1)",
    "`touch ESCAPED_2`",
    "; touch ESCAPED_3 #",
    "%2e%2e%2f%2e%2e%2fetc",
    "a" * 255,  # the longest name a Linux filesystem allows
    "é" * 127 + "x",  # 255 bytes of UTF-8: cut on a character boundary
    "   ",
    "tab\there",
]
INNER = ["..\\..\\evil.jpg", "$(touch ESCAPED_4).jpg", "x" * 251 + ".jpg", "-rf.jpg"]
BATCH_LINK = "000001-first"  # a link named like a batch home, pointing into data/batches
OUT_LINK = "000002-escape"  # a link named like a batch home, pointing outside
HIDDEN = ["..foo", "..\\..\\etc"]  # start with a dot: hidden, never claimed, never touched
HOME_NAME = re.compile(r"^\d{6}-[^/\\\x00-\x1f\x7f]+$")


def _outside(tmp_path: Path, sandbox: Path) -> dict[str, tuple[object, ...]]:
    """Everything in the test's directory that is not the daemon's sandbox."""
    return {
        rel: st
        for rel, st in file_states(tmp_path).items()
        if rel.split(os.sep, 1)[0] not in (sandbox.name, "staging")
    }


def test_names_that_try_to_escape_stay_inside_data_batches(make_daemon, tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    decoy = tmp_path / "decoy"
    # The owner allows links into the decoy's folder: OUT_LINK is claimed, in place.
    d: Daemon = make_daemon(root=sandbox, inbox={"rescan_seconds": 1.0, "link_roots": [str(decoy)]})
    staging = tmp_path / "staging"
    for i, name in enumerate(HOSTILE):
        make_jpeg(staging / name / "photo.jpg", size=(160, 120), seed=i)
    for i, name in enumerate(INNER):
        make_jpeg(staging / "-rf" / name, size=(160, 120), seed=100 + i)
    for i, name in enumerate(HIDDEN):
        make_jpeg(staging / name / "hidden.jpg", size=(160, 120), seed=200 + i)
    make_jpeg(decoy / "decoy.jpg", size=(160, 120), seed=300)
    before = {name: file_states(staging / name) for name in os.listdir(staging)}
    outside_before = _outside(tmp_path, sandbox)
    basetemp_before = sorted(os.listdir(tmp_path.parent))

    d.start()
    d.wait_status(lambda s: s["status"] == "idle", 90, "the daemon to start")
    for name in os.listdir(staging):
        os.rename(staging / name, d.inbox / name)
    os.symlink(d.data / "batches", d.inbox / BATCH_LINK)
    os.symlink(decoy, d.inbox / OUT_LINK)
    d.wait_idle_with(completed=len(HOSTILE) + 1, timeout=120)
    probe = LedgerProbe(d.data / "ledger.sqlite3")
    wait_for(
        lambda: probe.rows(
            "SELECT 1 FROM errors WHERE code='SYMLINK_SKIPPED' AND file=?",
            (str(d.inbox / BATCH_LINK),),
        ),
        30,
        "the link into data/batches to be refused",
    )
    probe.close()
    assert d.terminate() == 0

    # Every batch: completed, at home directly inside data/batches under a harmless name.
    batches_dir = d.data / "batches"
    batches = {b.name: b for b in d.ledger().batches()}
    expected = {scan.printable(n) for n in HOSTILE} | {OUT_LINK}
    assert set(batches) == expected
    for name, b in batches.items():
        assert b.state == "completed", (name, b.state, b.error_message)
        home = Path(b.path)
        assert home.parent == batches_dir, (name, home)
        assert HOME_NAME.match(home.name), (name, home.name)
        assert len(home.name.encode()) <= 7 + scan.SAFE_NAME_BYTES
        assert unicodedata.normalize("NFC", home.name) == home.name
    homes = {Path(b.path).name for b in batches.values()}
    assert set(os.listdir(batches_dir)) == homes, "something else appeared in data/batches"

    # The originals arrived unchanged; the refused and hidden entries were not touched.
    for name, states in before.items():
        if name in HIDDEN:
            assert file_states(d.inbox / name) == states
        else:
            assert file_states(Path(batches[scan.printable(name)].path)) == states, name
    assert os.readlink(d.inbox / BATCH_LINK) == str(batches_dir)
    assert sorted(os.listdir(d.inbox)) == sorted([BATCH_LINK, *HIDDEN])
    assert os.readlink(batches[OUT_LINK].path) == str(decoy)

    # Nothing outside the daemon's folders appeared or changed; no name ever ran.
    assert _outside(tmp_path, sandbox) == outside_before
    assert sorted(os.listdir(tmp_path.parent)) == basetemp_before
    assert sorted(os.listdir(sandbox)) == sorted(
        ["inbox", "data", "status", "config.yaml", "daemon.log"]
    )
    for place in (REPO, tmp_path, tmp_path.parent, sandbox, d.inbox, d.data, Path.home()):
        for sentinel in SENTINELS:
            assert not (place / sentinel).exists(), f"a name ran as a command: {place / sentinel}"
        assert not (place / "-rf").exists() and not (place / "~root").exists(), place
