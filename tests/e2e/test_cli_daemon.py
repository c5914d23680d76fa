"""The `imgtrain` commands against what a real daemon made, and steering a running daemon.

One daemon (module scope) processes a small library: the shared photos of
people, a few generated photos and one broken file. The read commands are
checked on it, human output (key lines) and `--json` (exact fields). A second
daemon with a slow batch is paused, resumed, cancelled and retried.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from daemon.cli import main
from daemon.imaging.contactsheet import layout
from daemon.status.model import Status
from tests.commands import cli, cli_json
from tests.conftest import base_config, make_jpeg
from tests.e2e.conftest import Daemon
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def library(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_clip_config: Path,
    face_pack: Path,
    shared_photos: Path,
) -> Iterator[Daemon]:
    """Three batches: people (9 photos, 9 faces), mixed (9 photos, 13 faces), garden (3 + 1)."""
    root = tmp_path_factory.mktemp("library")
    d = Daemon(root, base_config(root, tiny_clip_config, face_pack))
    src = root / "src"
    for photo in sorted(shared_photos.glob("people/*/*")):
        dest = src / "people" / f"{photo.parent.name}-{photo.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, dest)
    shutil.copytree(shared_photos / "mixed", src / "mixed")
    for i in range(3):
        make_jpeg(src / "garden" / f"g{i}.jpg", seed=500 + i)
    (src / "garden" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a whole JPEG")
    d.start()
    try:
        d.wait_status(lambda s: s["status"] == "idle", 90, "the daemon to start")
        for n, name in enumerate(("people", "mixed", "garden"), 1):
            os.rename(src / name, d.inbox / name)  # one at a time: batch ids follow this order
            d.wait_idle_with(completed=n, timeout=180)
        yield d
    finally:
        if d.proc is not None:
            d.terminate()


def test_status_shows_the_idle_daemon_and_its_last_batch(library: Daemon, capsys) -> None:
    code, out, _ = cli(capsys, library, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("idle: Idle: watching")
    assert f"pid {library.proc.pid}" in lines[0]
    assert "Library: 21 images · 22 faces · 4 clusters" in out
    last = next(x for x in lines if x.startswith("Last batch:"))
    assert "#3 'garden' completed" in last and "4 images (3 processed" in last
    assert "1 failed" in last
    assert any("UNREADABLE_IMAGE" in x and "broken.jpg" in x for x in lines)

    data = cli_json(capsys, library, "status")
    assert set(data) == set(Status.model_fields)
    assert data["status"] == "idle" and data["daemon"]["pid"] == library.proc.pid
    assert data["queue"] == {
        "waiting": 0,
        "running": 0,
        "completed": 3,
        "failed": 0,
        "paused": 0,
        "cancelled": 0,
    }
    assert data["totals"]["images"] == 21 and data["totals"]["faces"] == 22
    assert data["last_batch"]["name"] == "garden" and data["last_batch"]["failed_images"] == 1


def test_queue_lists_the_batches_and_their_stats(library: Daemon, capsys) -> None:
    code, out, _ = cli(capsys, library, "queue")
    assert code == 0
    rows = [x.split() for x in out.splitlines()[1:4]]
    assert rows[0][:7] == ["1", "completed", "people", "9", "9", "0", "1"]
    assert rows[1][:5] == ["2", "completed", "mixed", "9", "13"]
    assert rows[2][:6] == ["3", "completed", "garden", "4", "(1", "failed)"]
    data = cli_json(capsys, library, "queue")
    assert data["paused"] is False
    people, mixed, garden = data["batches"]
    assert (people["images"], people["processed"], people["faces"], people["errors"]) == (
        9,
        9,
        9,
        0,
    )
    assert (mixed["faces"], mixed["attempts"], mixed["error"]) == (13, 1, None)
    assert (garden["images"], garden["processed"], garden["failed_images"]) == (4, 3, 1)
    assert garden["errors"] == 1
    assert garden["path"].endswith("-garden") and Path(garden["path"]).is_dir()
    assert garden["steps_done"] == garden["steps_total"] > 0

    stats = cli_json(capsys, library, "queue", "stats")
    assert stats["batches"]["completed"] == 3 and stats["success_rate"] == 1.0
    assert (stats["images"], stats["faces"], stats["clusters"]) == (21, 22, 4)
    assert stats["failed_images"] == 1 and stats["avg_seconds_per_image"] > 0
    code, out, _ = cli(capsys, library, "queue", "stats")
    assert "Success rate: 100.0% of 3 finished batches" in out


def test_people_list_name_show_unassign_merge_and_sheet(library: Daemon, capsys) -> None:
    data = cli_json(capsys, library, "people")
    assert data["people"] == []
    # The shared photos: obama 7 faces, kit_harington 4, biden 4, rose_leslie 3, 4 loners.
    assert [c["faces"] for c in data["clusters"]] == [7, 4, 4, 3]
    assert data["unclustered_faces"] == 4
    assert all(Path(c["image_path"]).is_file() for c in data["clusters"])
    obama, _, _, rose = (c["cluster_id"] for c in data["clusters"])
    code, out, _ = cli(capsys, library, "people")
    assert "No one is named yet." in out and "Unnamed clusters (4)" in out
    assert any(x.split()[:2] == [f"#{obama}", "7"] for x in out.splitlines())

    sheet = library.root / "obama.png"
    made = cli_json(capsys, library, "people", "sheet", str(obama), "-o", str(sheet))
    assert (made["faces"], made["columns"], made["rows"], made["missing"]) == (7, 3, 3, [])
    with Image.open(sheet) as img:
        assert img.format == "PNG" and img.size == layout(7).size

    code, out, _ = cli(capsys, library, "people", "name", str(obama), "Obama")
    assert code == 0 and out.strip() == f"cluster {obama} is now 'Obama'"
    (person,) = cli_json(capsys, library, "people")["people"]
    assert (person["name"], person["faces"], person["clusters"]) == ("Obama", 7, [obama])

    shown = cli_json(capsys, library, "people", "show", "Obama")
    assert len(shown["face_list"]) == 7
    assert {f["person"] for f in shown["face_list"]} == {"Obama"}
    code, out, _ = cli(capsys, library, "people", "show", "Obama")
    face = shown["face_list"][-1]["face_id"]
    short = f"{face[:12]}:{face.rsplit(':', 1)[1]}"
    assert out.startswith("Obama (person ") and short in out

    code, out, _ = cli(capsys, library, "people", "unassign", short)
    assert code == 0 and "went back to the unknown faces" in out
    assert cli_json(capsys, library, "people", "show", "Obama")["faces"] == 6

    merged = cli_json(capsys, library, "people", "merge", "Obama", str(rose))
    assert merged["kind"] == "person" and merged["name"] == "Obama"
    assert merged["faces"] > 6 and rose in merged["clusters"]

    code, _, err = cli(capsys, library, "people", "name", "999", "Someone")
    assert code == 1 and "NOT_FOUND: there is no cluster 999" in err
    code, _, err = cli(capsys, library, "people", "show", "Nobody")
    assert code == 1 and "NOT_FOUND" in err

    # A full recluster of the unnamed faces keeps the cluster ids people have seen.
    before = {c["cluster_id"] for c in cli_json(capsys, library, "people")["clusters"]}
    res = cli_json(capsys, library, "people", "recluster")
    assert res["kind"] == "recluster"
    assert (res["clusters_after"], res["kept"], res["created"]) == (len(before), len(before), 0)
    assert {c["cluster_id"] for c in cli_json(capsys, library, "people")["clusters"]} == before


def test_search_by_text_and_by_photo(library: Daemon, capsys) -> None:
    data = cli_json(capsys, library, "search", "a man in a suit", "-n", "3")
    assert data["query"] == {"text": "a man in a suit"}
    assert data["random_weights"] is True and data["library_images"] == 21
    assert [r["rank"] for r in data["results"]] == [1, 2, 3]
    assert set(data["results"][0]) == {"rank", "score", "path", "image_id", "batch_id"}
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(Path(r["path"]).is_file() for r in data["results"])

    photo = next((library.data / "batches").glob("*-garden")) / "g1.jpg"
    assert photo.is_file()
    data = cli_json(capsys, library, "search", "--image", str(photo), "-n", "2")
    best = data["results"][0]
    assert best["path"] == str(photo) and best["score"] > 0.99

    code, out, _ = cli(capsys, library, "search", "a dog on the beach", "-n", "2")
    assert code == 0
    assert "random weights" in out and "2 best of 21 photos" in out
    assert str(library.data / "batches") in out
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(library.config_path), "search"])
    assert exc.value.code == 2


def test_doctor_checks_the_running_setup(library: Daemon, capsys) -> None:
    code, out, _ = cli(capsys, library, "doctor")
    assert code == 0
    checks = {c["check"]: c for c in cli_json(capsys, library, "doctor", "--no-models")["checks"]}
    assert f"the running daemon, pid {library.proc.pid}" in checks["data_dir"]["detail"]
    assert checks["status file"]["level"] == "OK"
    assert checks["inbox watch"]["level"] == "OK"
    assert checks["images collection"]["detail"].startswith("21 vectors")
    assert checks["faces collection"]["detail"].startswith("22 vectors")
    lines = out.splitlines()
    assert any(x.startswith("WARN") and "CLIP model" in x and "RANDOM WEIGHTS" in x for x in lines)
    assert any(
        x.startswith("OK") and "images collection" in x and "as configured" in x for x in lines
    )


# -- steering a running daemon -----------------------------------------------------------
def test_pause_resume_cancel_and_retry_a_running_batch(daemon_factory, tmp_path, capsys) -> None:
    d: Daemon = daemon_factory(clip={"batch_size": 4}, decode={"workers": 1})
    folder = tmp_path / "big"
    for i in range(80):
        make_jpeg(folder / f"p{i:03d}.jpg", size=(480, 360), seed=1000 + i)
    d.start()
    d.wait_status(lambda s: s["status"] == "idle", 90, "start")
    os.rename(folder, d.inbox / "big")
    d.wait_status(lambda s: (s["batch_step"] or 0) >= 4, 120, "the batch to be under way")

    assert cli(capsys, d, "queue", "pause")[0] == 0
    paused = d.wait_status(lambda s: s["status"] == "paused", 10, "paused in the status file")
    held = paused["batch_step"]
    # Three more writes of the status file, and still no step taken.
    seen = {paused["updated_at"]}
    wait_for(lambda: seen.add(d.status()["updated_at"]) or len(seen) > 3, 20, "status writes")
    assert d.status()["batch_step"] == held and d.status()["status"] == "paused"
    code, out, _ = cli(capsys, d, "status")
    assert out.startswith("paused: Paused between chunks")
    assert f"step {held}/" in out

    assert cli(capsys, d, "queue", "resume")[0] == 0
    d.wait_status(
        lambda s: s["status"] == "training" and s["batch_step"] > held,
        10,
        "work to go on after resume",
    )

    assert cli(capsys, d, "queue", "pause")[0] == 0
    d.wait_status(lambda s: s["status"] == "paused", 10, "paused again")
    code, out, _ = cli(capsys, d, "queue", "cancel", "1")
    assert code == 0 and "will stop at its next step" in out
    done = d.wait_status(
        lambda s: s["last_batch"] is not None and s["last_batch"]["state"] == "cancelled",
        10,
        "the batch cancelled in the status file",
    )
    assert done["queue"]["cancelled"] == 1 and done["batch_id"] is None
    (row,) = cli_json(capsys, d, "queue")["batches"]
    assert row["state"] == "cancelled" and 0 < row["processed"] < 80
    # Nothing half-written: the store holds exactly the images the ledger says are done.
    assert cli_json(capsys, d, "search", "x", "-n", "1")["library_images"] == row["processed"]

    assert cli(capsys, d, "queue", "resume")[0] == 0
    code, out, _ = cli(capsys, d, "queue", "retry", "1")
    assert code == 0 and f"{80 - row['processed']} images to process" in out
    final = d.wait_status(
        lambda s: s["status"] == "idle" and s["queue"]["completed"] == 1,
        180,
        "the retried batch to complete",
    )
    assert final["last_batch"]["state"] == "completed"
    assert final["last_batch"]["processed"] == 80
    (row,) = cli_json(capsys, d, "queue")["batches"]
    assert row["attempts"] == 2 and row["processed"] == 80
    assert cli_json(capsys, d, "search", "x", "-n", "1")["library_images"] == 80
    assert d.terminate() == 0
