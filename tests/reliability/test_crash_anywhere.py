"""SIGKILL the daemon at random moments across a multi-batch run, 22 times.

Kills land while folders are being claimed (moved and hashed), while images
are embedded and searched for faces, while faces are clustered, and during
start-up (imports, claim recovery, model loading). After every kill the
daemon is restarted; at the end every photo is in ChromaDB exactly once,
every face once and mirrored as the ledger says, every batch completed under
the id it was first given, and a reader polling the status file throughout
never saw anything but valid JSON.

The kill moments come from a seeded RNG; what each kill hit is confirmed from
the ledger afterwards, so the test knows it really killed a claim and a
clustering midway. Start-up costs ~7 s (imports and models), so the
workload is small and most kills come soon after the daemon is at work.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import chromadb

from tests.conftest import make_jpeg
from tests.e2e.conftest import Daemon
from tests.helpers import StatusReader, wait_for
from tests.reliability.conftest import LedgerProbe

SEED = 20240611
SMALL = ("alpha", "beta", "gamma", "delta")  # 12 small synthetic photos each, no faces
FACE_BATCHES = ("people", "mixed")  # the shared real photos: 22 faces between them
LOOSE = "<loose>"  # two photos dropped straight into the inbox
FACES_IN_SHARED = 22  # tests/e2e/test_people_e2e.py LABELS: 9 in people/, 13 in mixed/
# The order of events: "claim" drops the next folder and kills mid-claim;
# "work" kills after a few images were recorded; "cluster" kills while a face
# batch is being clustered; "early" kills at a random moment of start-up.
PLAN = [
    "claim", "early", "claim", "work", "cluster", "claim", "early", "claim",
    "early", "cluster", "claim", "work", "early", "cluster", "claim", "claim",
    "early", "work", "claim", "early", "work", "early",
]  # fmt: skip
DROPS = ("alpha", "people", "motion", "beta", "mixed", "gamma", LOOSE, "delta")


@dataclass
class Workload:
    staged: Path
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # drop -> {rel: sha256}

    def distinct(self) -> set[str]:
        return {sha for files in self.files.values() for sha in files.values()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(src: Path, shared_photos: Path) -> Workload:
    work = Workload(src)
    for n, name in enumerate(SMALL):
        for i in range(12):
            make_jpeg(src / name / f"{name}{i:02d}.jpg", size=(160, 120), seed=100 * n + i)
    # The same photo dropped twice is one image in the library.
    shutil.copy(src / "alpha" / "alpha00.jpg", src / "delta" / "copy of alpha00.jpg")
    # Motion photos: a JPEG with the video appended, as phones save them. The
    # 16 MB trailers make hashing, and so claiming, take long enough to hit.
    rng = random.Random(SEED)
    for i in range(4):
        path = make_jpeg(src / "motion" / f"MVIMG_{i}.jpg", size=(160, 120), seed=900 + i)
        with open(path, "ab") as fh:
            fh.write(rng.randbytes(16 << 20))
    for name in FACE_BATCHES:
        (src / name).mkdir()
        for p in sorted((shared_photos / name).rglob("*")):
            if p.is_file():
                shutil.copy(p, src / name / f"{p.parent.name}_{p.name}")
    for i in range(2):
        make_jpeg(src / "loose" / f"IMG_{i:04d}.jpg", size=(160, 120), seed=700 + i)
    for name in DROPS:
        folder = src / ("loose" if name == LOOSE else name)
        work.files[name] = {p.name: _sha(p) for p in folder.iterdir()}
    return work


class Run:
    """The daemon under test, the ledger seen from outside, and what each kill hit."""

    def __init__(self, d: Daemon, work: Workload, rng: random.Random) -> None:
        self.d, self.work, self.rng = d, work, rng
        self.probe = LedgerProbe(d.data / "ledger.sqlite3")
        self.drops = list(DROPS)
        self.known: dict[int, str] = {}
        self.hit: Counter[str] = Counter()
        self.kills = 0
        self.events: list[str] = []  # one line per kill, for failure messages

    # -- what the ledger says -----------------------------------------------------
    def done_steps(self) -> int:
        """Image steps a phase has finished (a claim's duplicates are born 'skipped')."""
        return (
            self.probe.value(
                "SELECT COUNT(*) FROM image_phases WHERE state IN ('done', 'no_faces', 'failed')"
            )
            or 0
        )

    def pending_steps(self) -> int:
        return self.probe.value("SELECT COUNT(*) FROM image_phases WHERE state = 'pending'") or 0

    def attempts(self) -> dict[int, int]:
        return {
            r["batch_id"]: r["attempts"]
            for r in self.probe.rows("SELECT batch_id, attempts FROM batches")
        }

    def face_clustering(self, started_after: dict[int, int] | None = None) -> list[int]:
        """Face batches whose clustering is running (and was started by this daemon)."""
        rows = self.probe.rows(
            "SELECT b.batch_id, b.attempts FROM batches b JOIN batch_phases p USING(batch_id)"
            " WHERE p.phase='clustering' AND p.state='running' AND b.name IN (?, ?)",
            FACE_BATCHES,
        )
        return [
            r["batch_id"]
            for r in rows
            if started_after is None or r["attempts"] > started_after.get(r["batch_id"], 0)
        ]

    def face_clustering_left(self) -> bool:
        return bool(
            self.probe.rows(
                "SELECT 1 FROM batches b JOIN batch_phases p USING(batch_id)"
                " WHERE p.phase='clustering' AND p.state != 'completed' AND b.name IN (?, ?)"
                " AND b.state IN ('waiting', 'running')",
                FACE_BATCHES,
            )
        )

    def idle(self) -> bool:
        s = self.d.status()
        return bool(
            s and s["daemon"]["pid"] == self.d.proc.pid and s["status"] == "idle"
            and s["message"].startswith("Idle") and self.pending_steps() == 0
        )  # fmt: skip

    # -- the kills -----------------------------------------------------------------
    def choose(self, planned: str) -> str:
        if planned == "claim" and not self.drops:
            planned = "work"
        if planned == "cluster" and not self.face_clustering_left():
            planned = "work"
        if planned == "work" and not self.pending_steps():
            planned = "early"
        return planned

    def drop(self) -> str:
        name = self.drops.pop(0)
        if name == LOOSE:
            for f in sorted((self.work.staged / "loose").iterdir()):
                os.rename(f, self.d.inbox / f.name)
        else:
            os.rename(self.work.staged / name, self.d.inbox / name)
        return name

    def kill_in_claim(self) -> str:
        before = set(self.known)
        self.drop()

        def claim_seen() -> list[str]:
            return [
                r["state"]
                for r in self.probe.rows("SELECT batch_id, state FROM batches")
                if r["batch_id"] not in before
            ]

        states = wait_for(claim_seen, 60, "the drop to be claimed", interval=0.001)
        self.d.kill()
        # Confirmed only if the claim was still unfinished when the daemon died.
        after = self.probe.rows("SELECT batch_id, state FROM batches")
        unfinished = [r for r in after if r["batch_id"] not in before and r["state"] == "claiming"]
        return "mid-claim" if unfinished and "claiming" in states else "after claim"

    def kill_at_work(self) -> str:
        start = self.done_steps()
        target = self.rng.randint(1, 8)
        wait_for(
            lambda: self.done_steps() - start >= target or self.idle(),
            120,
            f"{target} more image steps",
            interval=0.005,
        )
        # A random moment after the trigger, so kills also land inside a chunk.
        time.sleep(self.rng.uniform(0, 0.3))
        self.d.kill()
        return "images"

    def kill_in_clustering(self, spawned_with: dict[int, int]) -> str:
        """Clustering a face batch takes some 25 ms, shorter than this process may take to
        notice it on a busy machine, so the daemon runs in slices of a few milliseconds
        (SIGCONT, SIGSTOP) and the ledger is looked at while it is stopped: the kill then
        lands inside the clustering wherever the slices happen to end."""
        assert self.d.proc is not None
        pid, deadline = self.d.proc.pid, time.monotonic() + 120
        while True:
            os.kill(pid, signal.SIGSTOP)
            batches = self.face_clustering(spawned_with)
            if batches:
                break
            assert time.monotonic() < deadline, "no face batch was clustered within 120 s"
            os.kill(pid, signal.SIGCONT)
            time.sleep(self.rng.uniform(0.001, 0.006))  # the slice: its length is the point
        self.d.kill()
        still = set(self.face_clustering()) & set(batches)
        return "mid-clustering" if still else "after clustering"

    def kill_early(self) -> str:
        # Simulating a crash at a random moment of start-up: the delay is the point.
        time.sleep(self.rng.uniform(0.2, 4.0))
        self.d.kill()
        return "start-up"

    def one(self, planned: str) -> None:
        spawned_with = self.attempts()
        t0 = time.monotonic()
        self.d.start()
        mode = self.choose(planned)
        actions: dict[str, Callable[[], str]] = {
            "claim": self.kill_in_claim,
            "work": self.kill_at_work,
            "cluster": lambda: self.kill_in_clustering(spawned_with),
            "early": self.kill_early,
        }
        hit = actions[mode]()
        self.hit[hit] += 1
        self.kills += 1
        self.events.append(
            f"kill {self.kills}: planned {planned}, did {mode}, hit {hit}"
            f" after {time.monotonic() - t0:.1f}s"
        )
        self.check_ids()

    def check_ids(self) -> None:
        now = self.probe.batch_names()
        changed = {k: (v, now.get(k)) for k, v in self.known.items() if now.get(k) != v}
        assert not changed, f"after kill {self.kills} batch ids changed: {changed}"
        names = Counter(now.values())
        assert all(n == 1 for n in names.values()), f"a drop became two batches: {names}"
        self.known = now


def test_sigkill_anywhere_loses_nothing_and_repeats_nothing(
    make_daemon, shared_photos: Path, tmp_path: Path
) -> None:
    d: Daemon = make_daemon(clip={"batch_size": 4})
    work = _build(tmp_path / "src", shared_photos)
    run = Run(d, work, random.Random(SEED))
    reader = StatusReader(d.status_path).start()
    try:
        for planned in PLAN:
            run.one(planned)
        assert not run.drops, f"the plan left {run.drops} undropped"
        d.start()
        final = d.wait_idle_with(completed=len(DROPS), timeout=180)
        assert d.terminate() == 0
        print("\n".join(run.events))  # shown with -s or -rP: what each kill hit
    finally:
        reader.stop()
        run.probe.close()

    assert run.kills == len(PLAN) >= 20
    assert reader.errors == [], reader.errors[:5]
    story = "\n".join(run.events)
    assert run.hit["mid-claim"] >= 1, story
    assert run.hit["mid-clustering"] >= 1, story
    assert run.hit["images"] >= 4, story

    ledger = d.ledger()
    batches = {b.batch_id: b for b in ledger.batches()}
    assert {i: b.name for i, b in batches.items()} == run.known, "batch ids changed at the end"
    by_drop = {
        (LOOSE if b.kind == "loose" else b.name): b for b in batches.values()
    }  # the loose batch is named after the time it was claimed
    assert sorted(by_drop) == sorted(DROPS)
    assert all(b.state == "completed" for b in batches.values()), [
        (b.name, b.state, b.error_code, b.error_message) for b in batches.values()
    ]
    assert final["queue"]["completed"] == len(DROPS) and final["queue"]["failed"] == 0

    # Every file once in the ledger, in its own batch, with its own hash.
    for drop, files in work.files.items():
        rows = ledger.query(
            "SELECT rel_path, sha256 FROM images WHERE batch_id=?", (by_drop[drop].batch_id,)
        )
        assert {r["rel_path"]: r["sha256"] for r in rows} == files, drop
        home = Path(by_drop[drop].path)
        assert {p.name: _sha(p) for p in home.iterdir()} == files, f"{drop}: originals changed"
    assert not any(d.inbox.iterdir()), "something was left in the inbox"
    left = ledger.query("SELECT COUNT(*) n FROM image_phases WHERE state='pending'")[0]["n"]
    assert left == 0
    not_done = ledger.query(
        "SELECT i.rel_path, p.phase, p.state FROM image_phases p JOIN images i USING(image_id)"
        " WHERE (p.phase='embedding' AND p.state NOT IN ('done', 'skipped'))"
        " OR (p.phase='faces' AND p.state NOT IN ('done', 'no_faces', 'skipped'))"
    )
    assert not_done == [], [dict(r) for r in not_done]

    # Every distinct photo is in Chroma exactly once; every face once, as the ledger says.
    client = chromadb.PersistentClient(path=str(d.data / "chroma"))
    image_ids = client.get_collection("images").get(include=[])["ids"]
    assert len(image_ids) == len(set(image_ids)) == len(work.distinct())
    assert set(image_ids) == work.distinct()
    faces = client.get_collection("faces").get(include=["metadatas"])
    assert len(faces["ids"]) == len(set(faces["ids"])) == FACES_IN_SHARED
    rows = {r["face_id"]: r for r in ledger.query("SELECT * FROM faces")}
    assert set(rows) == set(faces["ids"])
    assert all(r["clustered"] == 1 for r in rows.values())
    for fid, meta in zip(faces["ids"], faces["metadatas"] or [], strict=True):
        cluster = rows[fid]["cluster_id"]
        assert meta["cluster"] == ("" if cluster is None else str(cluster)), (fid, meta)
    # No cluster was created twice or left half-filled by a kill.
    for c in ledger.query(
        "SELECT c.cluster_id, c.size, COUNT(f.face_id) n FROM clusters c"
        " LEFT JOIN faces f USING(cluster_id) GROUP BY c.cluster_id"
    ):
        assert c["size"] == c["n"], dict(c)
    assert ledger.query("PRAGMA integrity_check")[0][0] == "ok"
