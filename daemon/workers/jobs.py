"""What a worker does with one chunk job: decode, CLIP, faces, upsert, and report back.

The job's payload names the batch folder as the daemon sees it and, per
image, its ledger id, SHA-256, path inside the folder and the image phases
still pending (and, with `workers.send_bytes`, the file itself). The worker
runs the same phase classes the local pipeline runs, over the same
decode-ahead generator, so the vectors it upserts into the Chroma server are
the ones the daemon would have made; ids are content hashes, so a chunk done
twice (a worker killed mid-job, a retry) writes the same records again.

Nothing here touches the ledger. The result is plain JSON: per image its
outcome in each phase, its faces (id, box, score, area) for the daemon's face
rows, or the per-file error that stopped it; and the job's timings.
"""

from __future__ import annotations

import base64
import socket
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from daemon.config import Config
from daemon.errors import ImageError, InvalidState
from daemon.imaging.decode import decode
from daemon.phases.ahead import decode_ahead
from daemon.phases.base import BatchInfo, DecodedImage, ImagePhase, PhaseContext
from daemon.phases.embedding import EmbeddingPhase
from daemon.phases.faces import FacesPhase
from daemon.vocab import IMAGE_PHASES, ImageOutcome, PhaseName
from daemon.workers.connection import PAYLOAD_VERSION


def map_path(path: str, path_map: dict[str, str]) -> str:
    """The daemon's path as this worker reaches it: the longest matching prefix is replaced."""
    best = ""
    for prefix in path_map:
        inside = prefix == "/" or path == prefix or path.startswith(prefix + "/")
        if inside and len(prefix) > len(best):
            best = prefix
    if not best:
        return path
    rest = path[len(best) :].lstrip("/")
    there = path_map[best]
    return f"{there.rstrip('/')}/{rest}" if rest else there


class _CollectingFaces(FacesPhase):
    """The faces phase with its ledger rows kept for the result instead of written."""

    def __init__(self) -> None:
        super().__init__()
        self.collected: dict[int, list[dict[str, Any]]] = {}

    def record_rows(
        self, batch_id: int, d: DecodedImage, rows: list[tuple[str, float, float]], faces: list
    ) -> None:
        self.collected[d.image_id] = [
            {
                "face_id": fid,
                "det_score": score,
                "area": area,
                "bbox": [round(float(v), 1) for v in f.bbox],
            }
            for (fid, score, area), f in zip(rows, faces, strict=True)
        ]


@dataclass
class _Failed:
    item: dict[str, Any]
    error: ImageError


@dataclass
class _Timings:
    decode: float = 0.0  # summed over the decode threads
    phases: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def decoded(self, seconds: float) -> None:
        with self.lock:
            self.decode += seconds


def _unreported(n: int, /, *, faces: int | None = None) -> None:
    """A worker's steps reach the status with its results: the daemon counts them there."""


class WorkerRuntime:
    """A worker's loaded models and store connection, kept for every job it runs."""

    def __init__(self, config: Config, store: Any, models: Any, name: str = "") -> None:
        self.config = config
        self.name = name or socket.gethostname()
        self.host = socket.gethostname()
        ctx = PhaseContext(config=config, store=store, ledger=None, models=models)
        self.phases: list[ImagePhase] = []
        self._faces: _CollectingFaces | None = None
        for phase_name in (p for p in IMAGE_PHASES if p in config.phases):
            phase: ImagePhase
            if phase_name == PhaseName.FACES:
                phase = self._faces = _CollectingFaces()
            else:
                phase = EmbeddingPhase()
            phase.setup(ctx)  # loads the model once, opens its collection
            self.phases.append(phase)

    @property
    def phase_names(self) -> list[str]:
        return [str(p.name) for p in self.phases]

    # -- one job --------------------------------------------------------------
    def process(self, payload: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        if payload.get("v") != PAYLOAD_VERSION:
            raise InvalidState(
                f"chunk job of payload version {payload.get('v')}, this worker reads"
                f" {PAYLOAD_VERSION}",
                hint="Run the same imgtrain version on the daemon and the workers.",
            )
        items: list[dict[str, Any]] = payload["images"]
        asked = {p for item in items for p in item["phases"]}
        missing = sorted(asked - set(self.phase_names))
        if missing:
            raise InvalidState(
                f"the chunk needs phases {missing}, this worker runs {self.phase_names}",
                hint="Give the workers the daemon's `phases` (and its clip and faces settings).",
            )
        info = BatchInfo(payload["batch_id"], payload["name"], Path(payload["root"]))
        timings = _Timings(phases=dict.fromkeys(self.phase_names, 0.0))
        out: dict[int, dict[str, Any]] = {
            item["image_id"]: {
                "image_id": item["image_id"],
                "sha256": item["sha256"],
                "error": None,
                "outcomes": {},
                "faces": [],
            }
            for item in items
        }
        if self._faces is not None:
            self._faces.collected = {}
        with tempfile.TemporaryDirectory(prefix="imgtrain-job-") as tmp:
            work = partial(self._decode, info, Path(tmp), timings)
            chunks = decode_ahead(
                items,
                work,
                chunk=self.config.clip.batch_size,
                workers=self.config.decode.workers,
            )
            with closing(chunks):
                for results in chunks:
                    self._process(info, results, out, timings)
        if self._faces is not None:
            for image_id, faces in self._faces.collected.items():
                out[image_id]["faces"] = faces
        total = time.monotonic() - t0
        return {
            "v": PAYLOAD_VERSION,
            "worker": self.name,
            "host": self.host,
            "images": [out[item["image_id"]] for item in items],
            "timings": {
                "decode": round(timings.decode, 4),
                **{k: round(v, 4) for k, v in timings.phases.items()},
                "total": round(total, 4),
            },
        }

    def _decode(
        self, info: BatchInfo, tmp: Path, timings: _Timings, item: dict[str, Any]
    ) -> DecodedImage | _Failed:
        t0 = time.monotonic()
        path = info.path / item["rel_path"]  # as the daemon sees it: stored with the vectors
        try:
            if item.get("data") is not None:
                # workers.send_bytes: the file came in the job; a folder per image keeps its name.
                local = tmp / str(item["image_id"]) / Path(item["rel_path"]).name
                local.parent.mkdir(parents=True)
                local.write_bytes(base64.b64decode(item["data"]))
            else:
                local = Path(map_path(str(path), self.config.workers.path_map))
            d = decode(local, self.config.decode)
        except ImageError as exc:
            return _Failed(item, exc)
        finally:
            timings.decoded(time.monotonic() - t0)
        decoded = DecodedImage(
            image_id=item["image_id"],
            sha256=item["sha256"],
            path=path,
            rel_path=item["rel_path"],
            image=d.image,
            width=d.width,
            height=d.height,
            scale=d.scale,
            captured_at=d.captured_at,
            pending=frozenset(item["phases"]),
        )
        try:
            for phase in self.phases:
                if phase.name in decoded.pending:
                    decoded.prepared[phase.name] = phase.prepare(decoded)
        except ImageError as exc:
            d.image.close()
            return _Failed(item, exc)
        return decoded

    def _process(
        self,
        info: BatchInfo,
        results: list[DecodedImage | _Failed],
        out: dict[int, dict[str, Any]],
        timings: _Timings,
    ) -> None:
        decoded = [r for r in results if isinstance(r, DecodedImage)]
        for r in results:
            if isinstance(r, _Failed):
                out[r.item["image_id"]]["error"] = {
                    "code": str(r.error.code),
                    "message": r.error.message,
                }
        try:
            for phase in self.phases:
                todo = [d for d in decoded if phase.name in d.pending]
                if not todo:
                    continue
                t0 = time.monotonic()
                outcomes = phase.process(info, todo, _unreported)
                timings.phases[str(phase.name)] += time.monotonic() - t0
                if len(outcomes) != len(todo):
                    raise RuntimeError(
                        f"{phase.name} returned {len(outcomes)} outcomes for {len(todo)}"
                    )
                for o in outcomes:
                    out[o.image_id]["outcomes"][str(phase.name)] = _outcome(o)
        finally:
            for d in decoded:
                d.image.close()
                d.prepared.clear()


def _outcome(o: ImageOutcome) -> dict[str, Any]:
    return {
        "state": str(o.state),
        "error_code": o.error_code,
        "message": o.message,
        "detail": o.detail or {},
    }


# -- the job function RQ calls ----------------------------------------------------------
_RUNTIME: WorkerRuntime | None = None


def install(runtime: WorkerRuntime | None) -> None:
    """Make `runtime` the one every job in this process uses (`imgtrain worker` does this)."""
    global _RUNTIME
    _RUNTIME = runtime


def run_chunk(payload: dict[str, Any]) -> dict[str, Any]:
    """The RQ job: one chunk of a batch. Runs in `imgtrain worker`, which loaded the models."""
    if _RUNTIME is None:
        raise InvalidState(
            "this process has no imgtrain models loaded",
            hint="Run chunk jobs with `imgtrain worker`, not a plain `rq worker`.",
        )
    return _RUNTIME.process(payload)
