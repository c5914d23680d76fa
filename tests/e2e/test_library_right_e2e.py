"""Keeping a library right, against what a real daemon made: review and correct faces,
search that narrows, duplicates.

One daemon (module scope) with the real face models and the tiny CLIP. Its
library: the shared photos of people (batch 1) and mixed photos (batch 2),
three generated garden photos with capture dates plus a resized and a
re-encoded copy (batch 3). The tests run in file order and build on each
other, as a person would: name people, search, review suggestions, reject a
face and watch it stay away, split a cluster, find duplicates.

`clustering.assign_threshold` is 0.95 here, so later photos of named people
are suggested rather than assigned (what there is to review). With random
CLIP weights unrelated photos reach cosine 0.997 and resized or re-encoded
copies 0.9997-1.0, so `duplicates.threshold` is 0.9995 (real CLIP: 0.98).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon.cli import main
from tests.commands import cli, cli_json
from tests.conftest import base_config, make_jpeg
from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.e2e

# Who each face is, left to right (tests/e2e/test_people_e2e.py has how they were counted).
WHO: dict[str, list[str]] = {
    "alex_lacamoire-img1.jpg": ["alex"],
    "biden-biden.jpg": ["biden"],
    "biden-biden2.jpg": ["biden"],
    "kit_harington-john1.jpeg": ["kit"],
    "kit_harington-john2.jpeg": ["kit"],
    "obama-obama.jpg": ["obama"],
    "obama-obama2.jpg": ["obama"],
    "rose_leslie-img1.jpg": ["rose"],
    "rose_leslie-img2.jpg": ["rose"],
    "alex_lacamoire1.jpg": ["alex"],
    "johnsnow_test1.jpg": ["kit"],
    "kit_with_rose.jpg": ["rose", "kit"],
    "obama1.jpg": ["obama"],
    "obama3.jpg": ["obama"],
    "obama_partial_face.jpg": ["obama"],
    "obama_and_biden.jpg": ["biden", "obama", "child"],
    "two_people.jpg": ["obama", "biden"],
    "lin-manuel-miranda.png": ["lin"],
    "o.jpg": ["obama"],
    "b.jpg": ["biden"],
    "k.jpg": ["kit"],
    "obama_again.jpg": ["obama"],
    "obama1_again.jpg": ["obama"],
}
GARDEN_DATES = {"g0.jpg": "2019:07:01 09:00:00", "g1.jpg": "2019:08:01 09:00:00"}
GARDEN_DATES["g2.jpg"] = "2020:01:01 09:00:00"


def exif_date(when: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when  # DateTimeOriginal
    return exif.tobytes()


def copy_of(src: Path, dst: Path, scale: float, quality: int) -> Path:
    """A near copy: resized and re-encoded (new bytes, so not an exact duplicate)."""
    with Image.open(src) as img:
        w, h = img.size
        small = img.convert("RGB").resize((int(w * scale), int(h * scale)))
        exif = img.getexif().tobytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    small.save(dst, "JPEG", quality=quality, exif=exif)
    return dst


def drop(d: Daemon, folder: Path, completed: int) -> None:
    os.rename(folder, d.inbox / folder.name)
    d.wait_idle_with(completed=completed, timeout=240)


@pytest.fixture(scope="module")
def library(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_clip_config: Path,
    face_pack: Path,
    shared_photos: Path,
) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("keeping")
    cfg = base_config(
        root,
        tiny_clip_config,
        face_pack,
        clustering={"assign_threshold": 0.95, "suggest_threshold": 0.4},
        duplicates={"threshold": 0.9995},
    )
    d = Daemon(root, cfg)
    src = root / "src"
    for photo in sorted(shared_photos.glob("people/*/*")):
        dest = src / "people" / f"{photo.parent.name}-{photo.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, dest)
    shutil.copytree(shared_photos / "mixed", src / "mixed")
    garden = src / "garden"
    for i, (name, when) in enumerate(GARDEN_DATES.items()):
        make_jpeg(garden / name, size=(640, 480), seed=700 + i, exif=exif_date(when))
    copy_of(garden / "g0.jpg", garden / "g0_half.jpg", 0.5, 90)
    copy_of(garden / "g1.jpg", garden / "g1_q60.jpg", 1.0, 60)
    d.start()
    try:
        d.wait_status(lambda s: s["status"] == "idle", 90, "the daemon to start")
        for n, name in enumerate(("people", "mixed", "garden"), 1):
            drop(d, src / name, n)  # one at a time: batch ids follow this order
        yield d
    finally:
        if d.proc is not None:
            d.terminate()


def faces(d: Daemon) -> list[dict[str, Any]]:
    """Every face with who it truly is and where the ledger placed it."""
    rows = d.ledger().query(
        "SELECT f.face_id, f.cluster_id, p.name AS person, s.name AS suggested, i.rel_path,"
        " b.path AS batch_path FROM faces f JOIN images i USING(image_id)"
        " JOIN batches b ON b.batch_id = i.batch_id"
        " LEFT JOIN people p ON p.person_id = f.person_id"
        " LEFT JOIN people s ON s.person_id = f.suggested_person_id"
    )
    return [
        {
            **dict(r),
            "who": WHO[r["rel_path"]][int(r["face_id"].rsplit(":", 1)[1])],
            "path": str(Path(r["batch_path"]) / r["rel_path"]),
        }
        for r in rows
    ]


def cluster_of(d: Daemon, who: str) -> int:
    """The cluster holding most of someone's faces."""
    counts = Counter(f["cluster_id"] for f in faces(d) if f["who"] == who and f["cluster_id"])
    return counts.most_common(1)[0][0]


def search_paths(capsys, d: Daemon, *argv: str) -> set[str]:
    data = cli_json(capsys, d, "search", "anything", "-n", "100", *argv)
    return {r["path"] for r in data["results"]}


def indexed(d: Daemon) -> list[dict[str, Any]]:
    """The library's photos (one per content) with their batch and EXIF capture time."""
    out = []
    for r in d.ledger().query(
        "SELECT i.rel_path, i.batch_id, b.path FROM images i JOIN batches b USING(batch_id)"
        " WHERE i.duplicate_of IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM image_phases p WHERE p.image_id = i.image_id"
        "  AND p.state = 'failed')"
    ):
        path = Path(r["path"]) / r["rel_path"]
        with Image.open(path) as img:
            raw = img.getexif().get_ifd(0x8769).get(0x9003)
        try:  # what EXIF says, read strictly: a malformed date is no date
            when = datetime.strptime(raw.strip("\x00 "), "%Y:%m:%d %H:%M:%S") if raw else None
        except ValueError:
            when = None
        out.append({"path": str(path), "batch": r["batch_id"], "when": when})
    return out


def test_search_narrows_by_person_date_and_batch_inside_chroma(library: Daemon, capsys) -> None:
    d = library
    for who in ("obama", "biden"):
        code, _, err = cli(capsys, d, "people", "name", str(cluster_of(d, who)), who.title())
        assert code == 0, err
    every = indexed(d)
    assert len(every) == 23 and search_paths(capsys, d) == {p["path"] for p in every}

    # Brute force: the photos the ledger says show them, the dates the files say.
    def showing(*people: str) -> set[str]:
        return set.intersection(
            *({f["path"] for f in faces(d) if f["person"] == p} for p in people)
        )

    def taken(after: str | None, before: str | None) -> set[str]:
        lo = datetime.fromisoformat(after) if after else datetime.min
        hi = datetime.fromisoformat(before) if before else datetime.max
        return {p["path"] for p in every if p["when"] and lo <= p["when"] < hi}

    obama = showing("Obama")
    assert len(obama) == 7  # obama 7 faces, one per photo
    assert search_paths(capsys, d, "--person", "Obama") == obama
    both = showing("Obama", "Biden")
    assert {Path(p).name for p in both} == {"two_people.jpg", "obama_and_biden.jpg"}
    assert search_paths(capsys, d, "--person", "Obama", "--person", "Biden") == both
    # Real EXIF dates of the shared photos (2009-2016) and the garden's (2019-2020).
    assert search_paths(capsys, d, "--after", "2019-07-15") == taken("2019-07-15", None)
    assert len(taken("2019-07-15", None)) == 3  # g1, its re-encoded copy, g2
    assert search_paths(capsys, d, "--before", "2011") == taken(None, "2011-01-01")
    window = search_paths(capsys, d, "--after", "2010", "--before", "2013-01")
    assert window == taken("2010-01-01", "2013-01-01") and len(window) >= 2
    assert search_paths(capsys, d, "--person", "Obama", "--before", "2011") == (
        obama & taken(None, "2011-01-01")
    )
    assert search_paths(capsys, d, "--batch", "3") == {p["path"] for p in every if p["batch"] == 3}
    assert search_paths(capsys, d, "--batch", "1", "--batch", "3") == {
        p["path"] for p in every if p["batch"] in (1, 3)
    }
    photo = next(p for p in obama if p.endswith("obama1.jpg"))
    data = cli_json(capsys, d, "search", "--image", photo, "--person", "Biden", "-n", "50")
    assert {r["path"] for r in data["results"]} == showing("Biden")
    assert data["query"]["filters"] == {"person": ["Biden"]}

    # Human output, and the results as a contact sheet.
    sheet = d.root / "results.png"
    code, out, _ = cli(
        capsys, d, "search", "a man", "--person", "Obama", "-n", "4", "-o", str(sheet)
    )
    assert code == 0
    assert '4 best of 23 photos for "a man" with Obama' in out
    assert f"wrote {sheet} (4 photos, 2x2 grid" in out
    with Image.open(sheet) as img:
        assert img.format == "PNG"
    code, _, err = cli(capsys, d, "search", "a man", "--person", "Nobody")
    assert code == 1 and "NOT_FOUND: there is no person named 'Nobody'" in err
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(d.config_path), "search", "x", "--after", "someday"])
    assert exc.value.code == 2


def test_suggestions_accept_reject_and_a_rejection_that_holds(
    library: Daemon, capsys, shared_photos: Path
) -> None:
    d = library
    later = d.root / "src" / "later"
    later.mkdir(parents=True)
    for src, dst in (
        ("people/obama/obama2.jpg", "o.jpg"),
        ("people/biden/biden2.jpg", "b.jpg"),
        ("people/kit_harington/john2.jpeg", "k.jpg"),
    ):
        # Mirrored: new content, the same person, not sure enough to assign at 0.95.
        Image.open(shared_photos / src).transpose(Image.FLIP_LEFT_RIGHT).save(later / dst)
    g2 = next((d.data / "batches").glob("*-garden")) / "g2.jpg"
    shutil.copy(g2, later / "g2_again.jpg")  # the same file dropped twice
    drop(d, later, 4)

    data = cli_json(capsys, d, "people", "suggestions")
    got = {(Path(f["image_path"]).name, f["suggested_person"]) for f in data["suggestions"]}
    assert got == {("o.jpg", "Obama"), ("b.jpg", "Biden")}
    assert all(0.4 <= f["suggestion_score"] < 0.95 for f in data["suggestions"])
    sheet = d.root / "suggested.png"
    code, out, err = cli(capsys, d, "people", "suggestions", "Obama", "-o", str(sheet))
    assert code == 0, err
    assert "1 face suggested for 'Obama'" in out
    assert "o.jpg" in out and f"wrote {sheet} (1 face," in out
    o_face = next(f["face_id"] for f in data["suggestions"] if f["suggested_person"] == "Obama")

    code, out, _ = cli(capsys, d, "people", "accept", f"{o_face[:12]}:0")
    assert code == 0 and out.strip() == f"face {o_face[:12]}:0 is now Obama's"
    done = cli_json(capsys, d, "people", "reject", "--all", "Biden")
    assert [x["person"] for x in done["rejected"]] == ["Biden"] and done["skipped"] == []
    assert cli_json(capsys, d, "people", "suggestions")["suggestions"] == []
    placed = {Path(f["path"]).name: f for f in faces(d)}
    assert placed["o.jpg"]["person"] == "Obama" and placed["b.jpg"]["person"] is None
    assert placed["b.jpg"]["suggested"] is None
    assert search_paths(capsys, d, "--person", "Obama") >= {placed["o.jpg"]["path"]}

    # One of Obama's own faces is rejected: it leaves him, through a full recluster ...
    target = placed["obama-obama.jpg"]
    code, out, _ = cli(capsys, d, "people", "reject", target["face_id"])
    assert code == 0 and "is not Obama: never suggested for or given to them again" in out
    assert cli_json(capsys, d, "people", "recluster")["kind"] == "recluster"
    after = {Path(f["path"]).name: f for f in faces(d)}["obama-obama.jpg"]
    assert after["person"] is None and after["suggested"] is None
    assert target["path"] not in search_paths(capsys, d, "--person", "Obama")

    # ... and a later batch with a near copy of the photo (resized, re-encoded). A copy of
    # another Obama photo in the same batch is suggested for him: the rule is not "never".
    again = d.root / "src" / "again"
    copy_of(Path(target["path"]), again / "obama_again.jpg", 0.7, 80)
    copy_of(Path(placed["obama1.jpg"]["path"]), again / "obama1_again.jpg", 0.7, 80)
    drop(d, again, 5)
    new = {Path(f["path"]).name: f for f in faces(d)}
    assert new["obama_again.jpg"]["person"] is None
    assert new["obama_again.jpg"]["suggested"] is None
    assert new["obama1_again.jpg"]["suggested"] == "Obama"
    shown = cli_json(capsys, d, "people", "show", "Obama")["face_list"]
    assert target["face_id"] not in {f["face_id"] for f in shown}

    # The copy of the other photo is his; a face with nothing to reject is an error.
    face = new["obama1_again.jpg"]["face_id"]
    done = cli_json(capsys, d, "people", "accept", face)
    assert done == {"accepted": [{"face_id": face, "person": "Obama"}], "skipped": []}
    code, _, err = cli(capsys, d, "people", "reject", new["b.jpg"]["face_id"])
    assert code == 1 and "INVALID_STATE" in err and "no person and no suggestion" in err
    code, _, err = cli(capsys, d, "people", "accept")
    assert code == 1 and "give the faces to accept, or --all NAME" in err


def test_split_a_cluster_that_mixed_two_people(library: Daemon, capsys) -> None:
    d = library
    rose, kit = cluster_of(d, "rose"), cluster_of(d, "kit")
    merged = cli_json(capsys, d, "people", "merge", str(rose), str(kit))
    assert merged["cluster_id"] == rose
    mixed = {f["who"] for f in faces(d) if f["cluster_id"] == rose}
    assert mixed == {"rose", "kit"}

    res = cli_json(capsys, d, "people", "split", str(rose))
    assert res["kind"] == "split" and res["cluster_id"] == rose and res["rejected"] == 0
    kept, new = res["parts"]
    assert kept["cluster_id"] == rose and kept["faces"] >= new["faces"]
    by_cluster: dict[int, set[str]] = {}
    for f in faces(d):
        if f["cluster_id"] in (rose, new["cluster_id"]):
            by_cluster.setdefault(f["cluster_id"], set()).add(f["who"])
    assert sorted(map(sorted, by_cluster.values())) == [["kit"], ["rose"]]

    # Human output; a cluster of one person split by two of its faces.
    biden = cluster_of(d, "biden")
    ids = [f["face_id"] for f in faces(d) if f["cluster_id"] == biden]
    seeds = [f"{i[:16]}:{i.rsplit(':', 1)[1]}" for i in ids[:2]]
    code, out, _ = cli(capsys, d, "people", "split", str(biden), *seeds)
    assert code == 0 and out.startswith(f"split cluster #{biden} (Biden): #{biden} keeps")
    code, _, err = cli(capsys, d, "people", "split", "999")
    assert code == 1 and "NOT_FOUND" in err


def test_duplicates_groups_copies_and_marks_the_best(library: Daemon, capsys) -> None:
    d = library
    data = cli_json(capsys, d, "duplicates")
    assert data["threshold"] == 0.9995 and data["images"] == 28
    groups = sorted(
        [
            [(Path(m["path"]).name, m["best"], m["exact"]) for m in g["members"]]
            for g in data["groups"]
        ]
    )
    assert groups == [
        [("g0.jpg", True, False), ("g0_half.jpg", False, False)],  # larger wins
        [("g1.jpg", True, False), ("g1_q60.jpg", False, False)],  # same size: the first
        [("g2.jpg", True, True), ("g2_again.jpg", False, True)],  # the same file twice
        [("obama-obama.jpg", True, False), ("obama_again.jpg", False, False)],
        [("obama1.jpg", True, False), ("obama1_again.jpg", False, False)],
    ]
    g0 = next(g for g in data["groups"] if g["best"].endswith("g0.jpg"))
    assert [(m["width"], m["height"]) for m in g0["members"]] == [(640, 480), (320, 240)]
    assert g0["members"][0]["captured_at"] == "2019-07-01T09:00:00"

    sheet = d.root / "dups.png"
    code, out, _ = cli(capsys, d, "duplicates", "-o", str(sheet))
    assert code == 0
    assert out.startswith("5 groups of copies among 28 photos (10 files, similarity >= 0.9995)")
    assert "Nothing was deleted." in out
    best = [x for x in out.splitlines() if x.lstrip().startswith("*")]
    assert len(best) == 5 and any("640x480" in x and "g0.jpg" in x for x in best)
    assert any("same file" in x and "g2_again.jpg" in x for x in out.splitlines())
    assert f"wrote {sheet} (10 photos, 2x5 grid" in out
    # Nothing was deleted.
    assert all(Path(p["path"]).is_file() for p in indexed(d))
