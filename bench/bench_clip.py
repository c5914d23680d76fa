"""1. CLIP image embeddings: the daemon's ClipModel against a plain open_clip loop.

Ours is what the daemon runs: `daemon.imaging.decode` and
`ClipModel.preprocess` (the embedding phase's `prepare`) in `decode.workers`
threads running ahead of the model, then `ClipModel.embed_tensors` with the
default config (`batch_size` 32, `precision: auto`, threads 0). The baseline is
the loop most people write: PIL open, open_clip's preprocess, fp32, eager,
batch 32, no overlap. Both load the same local ViT-B-32 weights file, each in
a process of its own (bench/worker.py), so each sets torch up as it would
alone.

Figures: files -> embeddings (the target: ours >= 3x), decoded images ->
embeddings (preprocess + model, decode excluded), and decode alone. Every
image of the set is embedded by both sides once, and the cosine similarity of
the two vectors must be >= 0.999 for every one of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench import assets
from bench.common import Context, Row, Stopwatch, interleaved
from bench.worker import Worker

TARGET_RATIO = 3.0
TARGET_COSINE = 0.999
PLAIN_BATCH = 32


class Ours:
    """The daemon's decode and ClipModel, as its pipeline drives them."""

    def __init__(self, work: Path) -> None:
        from daemon.models.clip import ClipModel

        self.cfg = assets.config(work)
        self.clip = ClipModel(self.cfg.clip)
        self.clip.load()
        self.images: list[Any] = []

    def describe(self) -> str:
        import torch

        c = self.cfg
        return (
            f"{self.clip.precision}, batch {c.clip.batch_size}, {torch.get_num_threads()} "
            f"torch threads, {c.decode.workers} decode workers, max_side {c.decode.max_side}"
        )

    def files(self, paths: list[Path]) -> tuple[np.ndarray, float]:
        from bench.overlap import run_overlapped

        parts: list[np.ndarray] = []
        with Stopwatch() as sw:
            run_overlapped(
                paths,
                self.cfg.decode,
                self.cfg.clip.batch_size,
                lambda done: parts.append(self.clip.embed_tensors([t for _, t in done])),
                lambda d: self.clip.preprocess(d.image),
            )
        return np.concatenate(parts), sw.wall

    def hold(self, paths: list[Path]) -> None:
        from daemon.imaging.decode import decode

        self.images = [decode(p, self.cfg.decode).image for p in paths]

    def held(self) -> tuple[np.ndarray, float]:
        with Stopwatch() as sw:
            vecs = self.clip.embed_images(self.images)
        return vecs, sw.wall


class Plain:
    """open_clip as its README shows it: fp32, eager, PIL in, one batch at a time."""

    def __init__(self, weights: Path) -> None:
        import open_clip

        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            "ViT-B-32", pretrained=str(weights)
        )
        self.model.eval()
        self.images: list[Any] = []

    def files(self, paths: list[Path]) -> tuple[np.ndarray, float]:
        """Open, preprocess and embed, one batch after another (no decode ahead)."""
        from PIL import Image

        out = []
        with Stopwatch() as sw:
            for i in range(0, len(paths), PLAIN_BATCH):
                tensors = []
                for p in paths[i : i + PLAIN_BATCH]:
                    with Image.open(p) as im:
                        tensors.append(self.preprocess(im.convert("RGB")))
                out.append(self._embed(tensors))
        return np.concatenate(out), sw.wall

    def hold(self, paths: list[Path]) -> None:
        from PIL import Image

        self.images = []
        for p in paths:
            with Image.open(p) as im:
                self.images.append(im.convert("RGB"))

    def held(self) -> tuple[np.ndarray, float]:
        out = []
        with Stopwatch() as sw:
            for i in range(0, len(self.images), PLAIN_BATCH):
                chunk = self.images[i : i + PLAIN_BATCH]
                out.append(self._embed([self.preprocess(im) for im in chunk]))
        return np.concatenate(out), sw.wall

    def _embed(self, tensors: list[Any]) -> np.ndarray:
        import torch

        with torch.no_grad():
            feats = self.model.encode_image(torch.stack(tensors))
            return torch.nn.functional.normalize(feats, dim=-1).numpy()


def _decode_rate(paths: list[Path], decode_cfg: Any, ours: bool) -> float:
    from PIL import Image

    from daemon.imaging.decode import decode

    with Stopwatch() as sw:
        for p in paths:
            if ours:
                decode(p, decode_cfg).image.close()
            else:
                with Image.open(p) as im:
                    im.convert("RGB").close()
    return len(paths) / sw.wall


def run(ctx: Context) -> list[Row]:
    photos = ctx.photos
    reps = ctx.reps(5, 2)
    per = len(photos) // reps
    slices = [photos[i * per : (i + 1) * per] for i in range(reps)]
    with (
        Worker("bench.bench_clip:Ours", ctx.work / "clip") as ours,
        Worker("bench.bench_clip:Plain", assets.clip_weights()) as plain,
    ):
        settings = ours.call("describe")
        ctx.log(f"clip: ours {settings}")
        ours_vec: dict[Path, np.ndarray] = {}
        plain_vec: dict[Path, np.ndarray] = {}

        def files(side: Worker, paths: list[Path], keep: dict[Path, np.ndarray]) -> float:
            vecs, seconds = side.call("files", paths)
            keep.update(zip(paths, vecs, strict=True))
            return len(paths) / seconds

        # Warm-up: oneDNN builds its kernels per input shape on first use.
        ours.call("files", slices[0])
        plain.call("files", slices[0][:8])
        fr = interleaved(
            reps,
            lambda i: files(ours, slices[i], ours_vec),
            lambda i: files(plain, slices[i], plain_vec),
        )
        cos = np.array([float(ours_vec[p] @ plain_vec[p]) for p in ours_vec])
        ctx.log(
            f"clip files: ours {fr.ours:.1f} img/s, plain {fr.baseline:.1f} img/s, "
            f"ratio {fr.ratio:.2f} (rounds {[round(x, 1) for x in fr.ours_samples]} vs "
            f"{[round(x, 1) for x in fr.baseline_samples]}), min cosine {cos.min():.5f}"
        )

        # Decoded images in memory: preprocess + model only.
        mem_paths = photos[: 8 if ctx.quick else 64]
        ours.call("hold", mem_paths)
        plain.call("hold", mem_paths)
        mem_out: dict[str, np.ndarray] = {}

        def held(side: Worker, key: str) -> float:
            vecs, seconds = side.call("held")
            mem_out[key] = vecs
            return len(mem_paths) / seconds

        mem = interleaved(reps, lambda i: held(ours, "ours"), lambda i: held(plain, "plain"))
        mem_cos = float(np.min(np.sum(mem_out["ours"] * mem_out["plain"], axis=1)))

        # The real photos: other sizes, a PNG with alpha; accuracy only.
        shared_ours, _ = ours.call("files", ctx.shared_photos)
        shared_plain, _ = plain.call("files", ctx.shared_photos)
    shared_cos = np.sum(shared_ours * shared_plain, axis=1)
    worst = ctx.shared_photos[int(np.argmin(shared_cos))].name

    decode_cfg = assets.config(ctx.work / "clip").decode
    dec = interleaved(
        reps,
        lambda i: _decode_rate(slices[i][:16], decode_cfg, True),
        lambda i: _decode_rate(slices[i][:16], decode_cfg, False),
    )
    cos_ok = bool(cos.min() >= TARGET_COSINE)
    return [
        Row(
            "clip",
            "files -> embeddings (decode + model)",
            fr.ours,
            "img/s",
            fr.baseline,
            fr.ratio,
            f">= {TARGET_RATIO:g}x, cos >= {TARGET_COSINE}",
            fr.ratio >= TARGET_RATIO and cos_ok,
            f"{len(photos)} photos in {reps} rounds; ours: {settings}; "
            "baseline: PIL + open_clip fp32 eager batch 32",
            fr.ours_samples + fr.baseline_samples,
        ),
        Row(
            "clip",
            "min cosine ours vs plain, every image",
            float(cos.min()),
            "",
            target=f">= {TARGET_COSINE}",
            met=cos_ok,
            note=f"{len(cos)} images; median {float(np.median(cos)):.6f}",
        ),
        Row(
            "clip",
            "decoded images -> embeddings (preprocess + model)",
            mem.ours,
            "img/s",
            mem.baseline,
            mem.ratio,
            note=f"{len(mem_paths)} images in memory; min cosine {mem_cos:.5f}; "
            "baseline preprocesses the full-size image",
            samples=mem.ours_samples + mem.baseline_samples,
        ),
        Row(
            "clip",
            "decode alone, one thread",
            dec.ours,
            "img/s",
            dec.baseline,
            dec.ratio,
            note=f"ours: daemon.imaging.decode (max_side {decode_cfg.max_side}); "
            "baseline: PIL open + convert",
            samples=dec.ours_samples + dec.baseline_samples,
        ),
        Row(
            "clip",
            "min cosine ours vs plain, shared photos",
            float(shared_cos.min()),
            note=f"{len(ctx.shared_photos)} real photos; lowest: {worst}",
        ),
    ]
