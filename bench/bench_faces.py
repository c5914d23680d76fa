"""2. Faces: the daemon's FaceAnalyzer against insightface's FaceAnalysis.get.

Both use the same two ONNX files (det_2.5g detector, mobilefacenet_128
recognizer) from one pack directory and detect at 640x640. Ours is what the
daemon runs: `daemon.imaging.decode` ahead in `decode.workers` threads, then
`FaceAnalyzer.analyze_images` on each chunk (`faces.threads` images at a time,
one onnxruntime thread each). The baseline is insightface as
its README uses it: `cv2.imread`, then `FaceAnalysis.get`, image by image.

Target: ours >= 1.5x the baseline's images/s, finding the same number of faces
in every image.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

from bench import assets
from bench.common import Context, Row, Stopwatch, interleaved
from bench.overlap import run_overlapped

TARGET_RATIO = 1.5
README_FACES = 22  # faces in ../shared/photos, per its README


def insightface_app() -> Any:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from insightface.app import FaceAnalysis

    assets.face_pack()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every model it finds
        app = FaceAnalysis(
            name=assets.FACE_PACK_NAME,
            root=str(assets.FACE_ROOT),
            providers=["CPUExecutionProvider"],
        )
        app.prepare(ctx_id=-1, det_size=(640, 640))
    return app


def run(ctx: Context) -> list[Row]:
    import cv2

    from daemon.imaging.decode import decode
    from daemon.models.faces import FaceAnalyzer

    cfg = assets.config(ctx.work / "faces")
    ours = FaceAnalyzer(cfg.faces)
    ours.load()
    app = insightface_app()
    ctx.log(f"faces: ours {ours.model_name}, det_size {cfg.faces.det_size}")

    def ours_files(paths: list[Path], counts: dict[Path, int]) -> None:
        done = 0

        def process(chunk: list[Any]) -> None:
            nonlocal done
            for faces in ours.analyze_images([(d.image, d.scale) for d, _ in chunk]):
                counts[paths[done]] = len(faces)
                done += 1

        run_overlapped(paths, cfg.decode, cfg.clip.batch_size, process)

    def base_files(paths: list[Path], counts: dict[Path, int]) -> None:
        for p in paths:
            counts[p] = len(app.get(cv2.imread(str(p))))

    photos = ctx.photos
    reps = ctx.reps(5, 2)
    per = len(photos) // reps
    slices = [photos[i * per : (i + 1) * per] for i in range(reps)]
    ours_n: dict[Path, int] = {}
    base_n: dict[Path, int] = {}

    def timed(fn: Any, paths: list[Path], counts: dict[Path, int]) -> float:
        with Stopwatch() as sw:
            fn(paths, counts)
        return len(paths) / sw.wall

    ours_files(slices[0][:4], {})  # warm-up: first inference sets up the sessions' kernels
    base_files(slices[0][:4], {})
    files = interleaved(
        reps,
        lambda i: timed(ours_files, slices[i], ours_n),
        lambda i: timed(base_files, slices[i], base_n),
    )
    differ = sorted(p.name for p in ours_n if ours_n[p] != base_n[p])
    ctx.log(
        f"faces files: ours {files.ours:.1f} img/s, insightface {files.baseline:.1f} img/s, "
        f"ratio {files.ratio:.2f}; faces {sum(ours_n.values())} vs {sum(base_n.values())}"
    )

    mem_paths = photos[: 8 if ctx.quick else 48]
    ours_imgs = []
    for p in mem_paths:
        d = decode(p, cfg.decode)
        ours_imgs.append((d.image, d.scale))
    base_imgs = [cv2.imread(str(p)) for p in mem_paths]

    def mem_rate(is_ours: bool) -> float:
        with Stopwatch() as sw:
            if is_ours:
                for _ in ours.analyze_images(ours_imgs):
                    pass
            else:
                for img in base_imgs:
                    app.get(img)
        return len(mem_paths) / sw.wall

    mem = interleaved(reps, lambda i: mem_rate(True), lambda i: mem_rate(False))

    shared_ours: dict[Path, int] = {}
    shared_base: dict[Path, int] = {}
    ours_files(ctx.shared_photos, shared_ours)
    base_files(ctx.shared_photos, shared_base)
    shared_differ = sorted(p.name for p in shared_ours if shared_ours[p] != shared_base[p])

    agree = not differ and not shared_differ
    return [
        Row(
            "faces",
            "files -> faces (decode + detect + embed)",
            files.ours,
            "img/s",
            files.baseline,
            files.ratio,
            f">= {TARGET_RATIO:g}x",
            files.ratio >= TARGET_RATIO,
            f"{len(photos)} photos in {reps} rounds; ours: decode max_side {cfg.decode.max_side}, "
            f"{cfg.decode.workers} decode workers; baseline: cv2.imread + FaceAnalysis.get",
            files.ours_samples + files.baseline_samples,
        ),
        Row(
            "faces",
            "face count agreement (every image)",
            float(len(ours_n) - len(differ)),
            f"of {len(ours_n)}",
            target="equal on every image",
            met=agree,
            note=f"faces found: ours {sum(ours_n.values())}, insightface {sum(base_n.values())}"
            + (f"; differ: {', '.join(differ[:5])}" if differ else ""),
        ),
        Row(
            "faces",
            "decoded images -> faces (model only)",
            mem.ours,
            "img/s",
            mem.baseline,
            mem.ratio,
            note=f"{len(mem_paths)} images in memory; baseline gets the full-size image",
            samples=mem.ours_samples + mem.baseline_samples,
        ),
        Row(
            "faces",
            "faces found in ../shared/photos",
            float(sum(shared_ours.values())),
            "faces",
            float(sum(shared_base.values())),
            target=f"= insightface, README says {README_FACES}",
            met=not shared_differ,
            note="differ: " + ", ".join(shared_differ) if shared_differ else "same count per photo",
        ),
    ]
