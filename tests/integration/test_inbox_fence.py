"""The inbox's fence, with real watchdog, a real filesystem and a real SQLite ledger.

Someone who can write into the inbox but nothing else must not make the
daemon read elsewhere: a dropped link is followed only into
`inbox.link_roots`, judged again at claim time and pinned to what was
judged; a folder over an `inbox.max_*` limit stays in the inbox. Each
refusal is reported once, and a reload with new settings looks again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from daemon.errors import Code
from daemon.ingest.claim import recover_claims
from daemon.ingest.watch import Inbox
from daemon.vocab import BatchState
from tests.conftest import make_jpeg
from tests.helpers import wait_for
from tests.integration.test_inbox import DEADLINE, Harness, digest_tree, new_harness, photos

__all__ = ["new_harness"]  # the fixture, shared with test_inbox


def _swap(link: Path, target: Path | str) -> None:
    """Point `link` elsewhere in one step, as an attacker racing the daemon would."""
    tmp = link.with_name(link.name + ".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _codes(harness: Harness, name: str) -> list[str]:
    return [code for code, _, _ in harness.notices_for(name)]


def test_links_outside_the_roots_are_refused_once_and_left_alone(
    tmp_path: Path, new_harness: Callable[..., Harness]
) -> None:
    nas, usr_share = tmp_path / "nas", tmp_path / "usr_share"
    photos(nas / "album", 2)
    photos(usr_share / "icons", 2, seed=10)
    secret = make_jpeg(tmp_path / "private" / "secret.jpg", seed=20)
    before = {p: digest_tree(p) for p in (nas, usr_share, secret.parent)}
    harness = new_harness(link_roots=[str(nas)], rescan_seconds=0.3)
    harness.start()
    inbox = harness.dir
    (inbox / "sneaky").symlink_to(usr_share)  # the /usr/share of the report
    (inbox / ".hop").symlink_to(usr_share / "icons")  # hidden: never looked at itself
    (inbox / "chain").symlink_to(".hop")  # a chain of links that ends outside
    (inbox / "secret.jpg").symlink_to(secret)  # a loose link to a file outside
    (inbox / "album").symlink_to(nas / "album")  # into an allowed root: indexed in place

    refused = ("sneaky", "chain", "secret.jpg")
    wait_for(
        lambda: all(_codes(harness, n) for n in refused), DEADLINE, "the outside links reported"
    )
    (batch,) = harness.wait_batches(1, "the link into the allowed root to be claimed")
    assert batch.name == "album" and batch.kind == "symlink"
    assert os.readlink(batch.path or "") == os.path.realpath(nas / "album")
    assert harness.images(batch.batch_id) == ["IMG_0000.jpg", "IMG_0001.jpg"]
    # Rescans and claims of other folders go by: no second report, nothing else claimed.
    for round_ in range(2):
        photos(inbox / f"control{round_}", 1, seed=30 + round_)
        harness.wait_batches(round_ + 2, "a control folder to be claimed")
    for name in refused:
        assert _codes(harness, name) == [Code.LINK_OUTSIDE_ROOTS], name
    assert _codes(harness, ".hop") == []
    (_, message, file), *_ = harness.notices_for("sneaky")
    assert file == str(inbox / "sneaky")
    assert str(usr_share) in message and "inbox.link_roots" in message and str(nas) in message
    assert {b.name for b in harness.batches()} == {"album", "control0", "control1"}
    # The links stay where they were dropped; no original anywhere changed.
    assert os.readlink(inbox / "sneaky") == str(usr_share)
    assert os.readlink(inbox / "chain") == ".hop"
    assert os.readlink(inbox / "secret.jpg") == str(secret)
    assert {p: digest_tree(p) for p in before} == before


def test_a_claim_judges_the_link_again_and_pins_what_it_judged(
    tmp_path: Path, new_harness: Callable[..., Harness]
) -> None:
    nas, outside = tmp_path / "nas", tmp_path / "outside"
    photos(nas / "album", 2)
    photos(outside, 2, seed=10)
    harness = new_harness(link_roots=[str(nas)])
    # No watcher: claims are made by hand at the moments that matter.
    inbox = Inbox(harness.config, harness.ledger, harness.on_queued, harness.on_notice)
    hop, trip = harness.dir / ".hop", harness.dir / "trip"
    hop.symlink_to(nas / "album")
    trip.symlink_to(".hop")  # relative: it would lead nowhere once moved into data/

    _swap(hop, outside)  # after the drop was first seen, before the claim
    assert inbox.claim(trip) is None
    assert _codes(harness, "trip") == [Code.LINK_OUTSIDE_ROOTS]
    assert harness.batches() == [] and os.path.lexists(trip)

    _swap(hop, nas / "album")
    batch_id = inbox.claim(trip)
    assert batch_id is not None
    home = Path(harness.ledger.batch(batch_id).path or "")
    assert os.readlink(home) == os.path.realpath(nas / "album")  # pinned: absolute, no hops
    _swap(hop, outside)  # too late: the batch no longer goes through the dropped chain
    assert sorted(p.name for p in home.iterdir()) == ["IMG_0000.jpg", "IMG_0001.jpg"]
    assert harness.images(batch_id) == ["IMG_0000.jpg", "IMG_0001.jpg"]


def test_folders_over_a_limit_stay_until_a_reload_raises_it(
    tmp_path: Path, new_harness: Callable[..., Harness]
) -> None:
    limits = {"max_files_per_batch": 5, "max_depth": 2, "max_batch_bytes": 5_000}
    harness = new_harness(rescan_seconds=0.3, **limits)
    inbox = harness.start()
    staging = tmp_path / "staging"
    for i in range(10):
        (staging / "many" / f"{i}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (staging / "many" / f"{i}.jpg").write_bytes(b"x")
    (staging / "deep" / "a" / "b" / "c").mkdir(parents=True)
    (staging / "deep" / "a" / "b" / "c" / "x.jpg").write_bytes(b"x")
    (staging / "heavy").mkdir()
    (staging / "heavy" / "big.jpg").write_bytes(bytes(10_000))
    (staging / "fine").mkdir()
    (staging / "fine" / "ok.jpg").write_bytes(b"x")
    for name in ("many", "deep", "heavy", "fine"):
        os.rename(staging / name, harness.dir / name)

    expected = {
        "many": "inbox.max_files_per_batch",
        "deep": "inbox.max_depth",
        "heavy": "inbox.max_batch_bytes",
    }
    wait_for(
        lambda: all(_codes(harness, n) for n in expected), DEADLINE, "the three folders refused"
    )
    (fine,) = harness.wait_batches(1, "the folder within the limits to be claimed")
    assert fine.name == "fine"
    (staging / "control").mkdir()  # time passes, rescans go by
    (staging / "control" / "ok.jpg").write_bytes(b"y")
    os.rename(staging / "control", harness.dir / "control")
    harness.wait_batches(2, "a control folder to be claimed")
    for name, key in expected.items():
        ((code, message, _),) = harness.notices_for(name)
        assert code == Code.LIMIT_EXCEEDED
        assert f"({key}: {limits[key.split('.')[1]]})" in message and "reload" in message
        assert (harness.dir / name).is_dir()

    raised = {k: v * 1000 for k, v in limits.items()}
    inbox.reconfigure(
        harness.config.model_copy(update={"inbox": harness.config.inbox.model_copy(update=raised)})
    )
    batches = harness.wait_batches(5, "the refused folders claimed after the reload")
    assert {b.name for b in batches} == {"fine", "control", *expected}
    assert harness.images(next(b.batch_id for b in batches if b.name == "deep")) == ["a/b/c/x.jpg"]


def test_a_link_claim_a_crash_interrupted_is_judged_again_at_start(
    tmp_path: Path, new_harness: Callable[..., Harness]
) -> None:
    nas, outside = tmp_path / "nas", tmp_path / "outside"
    photos(nas / "album", 1)
    photos(outside, 1, seed=5)
    harness = new_harness(link_roots=[str(nas)])
    ledger, config = harness.ledger, harness.config
    config.batches_dir.mkdir(parents=True, exist_ok=True)
    homes = {}
    for name, target in (("good", nas / "album"), ("bad", outside)):
        batch_id = ledger.claims.reserve_batch(name, "symlink", [str(harness.dir / name)])
        homes[name] = (batch_id, config.batches_dir / f"{batch_id:06d}-{name}")
        ledger.claims.set_batch_path(batch_id, homes[name][1])
        homes[name][1].symlink_to(target)  # moved, not yet pinned: then the crash
    # Loose links, moved but not pinned: the one leading outside is listed, not read.
    loose_id = ledger.claims.reserve_batch("loose-x", "loose", [])
    loose_home = config.batches_dir / f"{loose_id:06d}-loose-x"
    ledger.claims.set_batch_path(loose_id, loose_home)
    loose_home.mkdir()
    (loose_home / "in.jpg").symlink_to(nas / "album" / "IMG_0000.jpg")
    (loose_home / "out.jpg").symlink_to(outside / "IMG_0000.jpg")

    assert recover_claims(ledger, config) == [homes["good"][0], loose_id]
    assert os.readlink(homes["good"][1]) == os.path.realpath(nas / "album")
    assert harness.images(homes["good"][0]) == ["IMG_0000.jpg"]
    bad = ledger.batch(homes["bad"][0])
    assert (bad.state, bad.error_code) == (BatchState.FAILED, Code.LINK_OUTSIDE_ROOTS)
    assert not os.path.lexists(homes["bad"][1])  # nothing in batches/ leads outside
    assert os.readlink(config.rejected_dir / homes["bad"][1].name) == str(outside)
    assert harness.images(loose_id) == ["in.jpg"]
    assert os.readlink(loose_home / "in.jpg") == os.path.realpath(nas / "album" / "IMG_0000.jpg")
    skipped = ledger.query("SELECT file, code FROM errors WHERE batch_id=?", (loose_id,))
    assert [(r["file"], r["code"]) for r in skipped] == [("out.jpg", "LINK_OUTSIDE_ROOTS")]
