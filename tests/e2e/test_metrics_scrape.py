"""The metrics file as Prometheus gets it: the README's node_exporter line, scraped during a run.

node_exporter's textfile collector is the reader the file is written for, and
a stricter one than a regular expression: a sample without its TYPE line
before it, a family split in two, a label written badly or a file read while
half written makes it drop the file and say `node_textfile_scrape_error 1`.
Debian's package (`prometheus-node-exporter`, the README's prerequisites
line) is started exactly as the README shows it, with the status directory of
the test's daemon and a free port, and scraped four times a second while a
batch runs.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, make_jpeg
from tests.e2e.conftest import Daemon
from tests.helpers import wait_for
from tests.servers import free_port

README_DIR = "/var/lib/imgtrain/status"


def _readme_command() -> list[str]:
    """The README's node_exporter command line (the one reading imgtrain's status directory)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("prometheus-node-exporter ") and README_DIR in line
    ]
    assert len(lines) == 1, f"README shows {len(lines)} node_exporter lines: {lines}"
    return shlex.split(lines[0], comments=True)


def _scrape(url: str) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    out = {}
    for line in text.splitlines():
        if line.startswith(("imgtrain_", "node_textfile_scrape_error")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_node_exporter_reads_every_write_of_a_run(
    daemon_factory, tmp_path: Path, shared_photos: Path
) -> None:
    binary = shutil.which("prometheus-node-exporter")
    if binary is None:
        pytest.fail("prometheus-node-exporter is missing: README's apt-get install line has it")
    d: Daemon = daemon_factory(status={"heartbeat_seconds": 1, "busy_interval_seconds": 0.25})
    status_dir = d.status_path.parent
    status_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [a.replace(README_DIR, str(status_dir)) for a in _readme_command()]
    args += [f"--web.listen-address=127.0.0.1:{port}"]
    log = (tmp_path / "node_exporter.log").open("w")
    exporter = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"
    folder = tmp_path / "src" / "garden"
    for i in range(10):
        make_jpeg(folder / f"g{i:02d}.jpg", size=(640, 480), seed=300 + i)
    for f in sorted((shared_photos / "mixed").glob("*.jpg"))[:3]:
        shutil.copy(f, folder / f.name)
    scrapes: list[dict[str, float]] = []
    try:
        wait_for(lambda: _scrape(url) is not None, 30, "node_exporter to answer")
        d.start()
        d.wait_status(lambda s: s["status"] == "idle", 90, "the daemon to start")
        folder.rename(d.inbox / "garden")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            s = _scrape(url)
            assert s is not None, "node_exporter stopped answering"
            scrapes.append(s)
            if s.get('imgtrain_queue_batches{state="completed"}') == 1 and s.get(
                'imgtrain_status{status="idle"}'
            ):
                break
            time.sleep(0.25)
        else:
            raise AssertionError(f"no scrape showed the batch completed: {scrapes[-1:]}")
    finally:
        exporter.terminate()
        exporter.wait(timeout=20)
        log.close()
        d.terminate()
    errors = [s["node_textfile_scrape_error"] for s in scrapes]
    assert errors and not any(errors), "node_exporter could not read the metrics file"
    # It saw the file change as the run went: training with an ETA, then done.
    training = [s for s in scrapes if s.get('imgtrain_status{status="training"}') == 1]
    assert training, "no scrape during the batch"
    assert any("imgtrain_eta_seconds" in s for s in training)
    last = scrapes[-1]
    assert last["imgtrain_images_processed_total"] == 13
    assert last["imgtrain_faces_found_total"] > 0
    assert last["imgtrain_stalled"] == 0
    assert "imgtrain_eta_seconds" not in last, "an ETA shown while idle"
    labels = re.compile(r'^imgtrain_[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})?$')
    assert all(labels.match(name) for name in last if name.startswith("imgtrain_")), last
