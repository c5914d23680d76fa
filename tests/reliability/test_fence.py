"""Only what the owner allowed, against a running daemon.

Someone who can write into the inbox, and nothing else, tries to make the
daemon read elsewhere: a link to a folder outside every `inbox.link_roots`
folder (a temporary folder stands in for /usr/share), a link inside a
dropped folder that leads out of it, a chain of links that ends outside,
and a link swapped for another target between the drop and the claim.
Only the link into an allowed root is indexed (in place). Nothing from
outside the roots is ever in the ledger or the store, and no original
anywhere is touched. A folder over an `inbox.max_*` limit stays in the
inbox, named in the status file and `imgtrain queue`, until a reload raises
the limit. Passwords in `store.url` appear in no output.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO, make_jpeg
from tests.e2e.conftest import Daemon
from tests.helpers import wait_for
from tests.reliability.conftest import LedgerProbe, file_states, ready


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(d: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(d.config_path), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _noticed(probe: LedgerProbe, d: Daemon, code: str, name: str) -> bool:
    return bool(
        probe.rows(
            "SELECT 1 FROM errors WHERE batch_id IS NULL AND code=? AND file=?",
            (code, str(d.inbox / name)),
        )
    )


def test_links_lead_only_into_the_allowed_roots(make_daemon, tmp_path: Path) -> None:
    import chromadb

    usr_share, nas = tmp_path / "usr_share", tmp_path / "nas"
    outside = [make_jpeg(usr_share / "icons" / f"i{i}.jpg", seed=i) for i in range(2)]
    outside.append(make_jpeg(usr_share / "other" / "o.jpg", seed=2))
    make_jpeg(nas / "wedding" / "w.jpg", seed=10)
    make_jpeg(nas / "held" / "h.jpg", seed=11)
    (nas / "held" / "copy.jpg.part").write_bytes(b"half")  # holds the claim back
    staging = tmp_path / "staging"
    make_jpeg(staging / "trip" / "t.jpg", seed=20)
    (staging / "trip" / "escape").symlink_to(usr_share)
    (staging / "trip" / "escape.jpg").symlink_to(outside[0])
    originals = {p: file_states(p) for p in (usr_share, nas, staging / "trip")}

    d = make_daemon(inbox={"link_roots": [str(nas)], "rescan_seconds": 1.0})
    d.start()
    d.wait_status(ready, 90, "the daemon to start")
    inbox = d.inbox
    (inbox / "sneaky").symlink_to(usr_share)  # `ln -s /usr/share inbox/sneaky`
    (inbox / ".hop").symlink_to(usr_share / "icons")
    (inbox / "chain").symlink_to(".hop")  # a chain of links that ends outside
    (inbox / ".via").symlink_to(nas / "held")
    (inbox / "swapped").symlink_to(".via")  # allowed when first seen...
    (inbox / "wedding").symlink_to(nas / "wedding")  # into an allowed root
    os.rename(staging / "trip", inbox / "trip")
    wait_for(
        lambda: "swapped holds a download still in progress" in d.log(),
        60,
        "the daemon to look at the swapped link while it was allowed",
    )
    tmp = inbox / ".via.new"
    tmp.symlink_to(usr_share / "other")
    os.replace(tmp, inbox / ".via")  # ...and leads outside by the time it would be claimed

    probe = LedgerProbe(d.data / "ledger.sqlite3")
    d.wait_idle_with(completed=2, timeout=120)
    wait_for(
        lambda: all(
            _noticed(probe, d, "LINK_OUTSIDE_ROOTS", n) for n in ("sneaky", "chain", "swapped")
        ),
        60,
        "the three outside links to be refused",
    )
    refused = {str(inbox / n) for n in ("sneaky", "chain", "swapped")}
    status = d.wait_status(
        lambda s: refused <= {e["file"] for e in s["errors"]}, 30, "the refusals in the status"
    )
    probe.close()
    assert d.terminate() == 0

    ledger = d.ledger()
    batches = {b.name: b for b in ledger.batches()}
    assert set(batches) == {"trip", "wedding"}
    assert all(b.state == "completed" for b in batches.values())
    assert os.readlink(batches["wedding"].path or "") == os.path.realpath(nas / "wedding")
    trip_errors = ledger.query(
        "SELECT file, code FROM errors WHERE batch_id=? ORDER BY file",
        (batches["trip"].batch_id,),
    )
    assert [(e["file"], e["code"]) for e in trip_errors] == [
        ("escape", "LINK_OUTSIDE_ROOTS"),
        ("escape.jpg", "LINK_OUTSIDE_ROOTS"),
    ]
    shown = {(e["code"], e["file"]) for e in status["errors"]}
    for name in ("sneaky", "chain", "swapped"):
        assert ("LINK_OUTSIDE_ROOTS", str(inbox / name)) in shown, name
        assert os.path.islink(inbox / name)  # left where it was dropped
    assert ("LINK_OUTSIDE_ROOTS", "escape") in shown

    # Nothing from outside the roots in the ledger or the store.
    forbidden = {_sha(p) for p in outside}
    indexed = {r["sha256"] for r in ledger.query("SELECT sha256 FROM images")}
    trip_home = Path(batches["trip"].path or "")
    assert indexed == {_sha(nas / "wedding" / "w.jpg"), _sha(trip_home / "t.jpg")}
    assert not indexed & forbidden
    col = chromadb.PersistentClient(path=str(d.data / "chroma")).get_collection("images")
    stored = col.get(include=["metadatas"])
    assert set(stored["ids"]) == indexed
    roots = (os.path.realpath(nas), os.path.realpath(d.data / "batches"))
    for meta in stored["metadatas"] or []:
        real = os.path.realpath(str(meta["path"]))
        assert real.startswith(roots), real

    # No original anywhere was touched; the dropped folder arrived whole.
    assert file_states(usr_share) == originals[usr_share]
    assert file_states(nas) == originals[nas]
    assert file_states(trip_home) == originals[staging / "trip"]


def _write(d: Daemon, **inbox: object) -> None:
    cfg = yaml.safe_load(d.config_path.read_text())
    cfg["inbox"].update(inbox)
    d.config_path.write_text(yaml.safe_dump(cfg))


def test_a_drop_over_each_limit_waits_for_a_reload(make_daemon, tmp_path: Path) -> None:
    limits = {"max_files_per_batch": 20, "max_depth": 3, "max_batch_bytes": 300_000}
    d = make_daemon(inbox={"rescan_seconds": 1.0, **limits})
    staging = tmp_path / "staging"
    for i in range(25):
        make_jpeg(staging / "many" / f"m{i:02d}.jpg", size=(64, 48), seed=i)
    make_jpeg(staging / "deep" / "a" / "b" / "c" / "d" / "x.jpg", size=(64, 48), seed=30)
    for i in range(2):  # a photo padded past the limit: decoders stop at the end marker
        big = make_jpeg(staging / "heavy" / f"h{i}.jpg", size=(64, 48), seed=40 + i)
        with big.open("ab") as fh:
            fh.write(bytes(200_000))
    d.start()
    d.wait_status(ready, 90, "the daemon to start")
    for name in ("many", "deep", "heavy"):
        os.rename(staging / name, d.inbox / name)

    keys = {
        "many": "inbox.max_files_per_batch",
        "deep": "inbox.max_depth",
        "heavy": "inbox.max_batch_bytes",
    }
    probe = LedgerProbe(d.data / "ledger.sqlite3")
    wait_for(
        lambda: all(_noticed(probe, d, "LIMIT_EXCEEDED", n) for n in keys),
        60,
        "the three folders to be refused",
    )
    status = d.wait_status(
        lambda s: sum(e["code"] == "LIMIT_EXCEEDED" for e in s["errors"]) == 3,
        30,
        "the refusals in the status file",
    )
    for name, key in keys.items():
        (entry,) = [e for e in status["errors"] if e["file"] == str(d.inbox / name)]
        assert f"({key}: {limits[key.split('.')[1]]})" in entry["message"], entry
        assert f"Raise {key} in config.yaml and reload" in entry["message"]
    listing = _cli(d, "queue")
    assert listing.returncode == 0, listing.stderr
    assert "Refused, left in the inbox (3):" in listing.stdout
    for key in keys.values():
        assert key in listing.stdout
    assert probe.rows("SELECT 1 FROM batches") == []

    _write(d, **{k: v * 100 for k, v in limits.items()})
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    d.wait_idle_with(completed=3, timeout=120)
    names = {r["name"]: r["batch_id"] for r in probe.rows("SELECT name, batch_id FROM batches")}
    assert set(names) == set(keys)
    images = probe.rows("SELECT batch_id, COUNT(*) n FROM images GROUP BY batch_id")
    assert {r["batch_id"]: r["n"] for r in images} == {
        names["many"]: 25,
        names["deep"]: 1,
        names["heavy"]: 2,
    }
    # Every refusal was said once, not at every rescan.
    for name in keys:
        n = probe.value(
            "SELECT COUNT(*) FROM errors WHERE code='LIMIT_EXCEEDED' AND file=?",
            (str(d.inbox / name),),
        )
        assert n == 1, name
    probe.close()
    after = json.loads(_cli(d, "queue", "--json").stdout)
    assert after["refused"] == []
    assert d.terminate() == 0


def test_a_password_in_store_url_reaches_no_output(make_daemon) -> None:
    with socket.socket() as s:  # a port nothing listens on: the store stays unreachable
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "s3cr3t-Passw0rd"
    d = make_daemon(store={"url": f"http://imgtrain:{secret}@127.0.0.1:{port}"})
    d.start()
    status = d.wait_status(
        lambda s: s["status"] == "error" and s["error"]["code"] == "STORE_UNAVAILABLE",
        90,
        "the daemon to report the unreachable store",
    )
    assert f"http://***@127.0.0.1:{port}" in status["error"]["message"]
    outputs = {
        "status file": d.status_path.read_text(),
        "status --json": _cli(d, "status", "--json").stdout,
        "status": _cli(d, "status").stdout,
        "doctor --json": _cli(d, "doctor", "--json", "--no-models").stdout,
        "queue --json": _cli(d, "queue", "--json").stdout,
    }
    assert d.terminate() == 0
    outputs["log"] = d.log()
    assert f"***@127.0.0.1:{port}" in outputs["log"]  # the server is named, the password not
    for what, text in outputs.items():
        assert text, f"{what} is empty"
        assert secret not in text, f"the password is in the {what}"
