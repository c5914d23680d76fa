"""gpu. The CLIP and faces phases on a CUDA GPU, next to the CPU.

Without a GPU (torch sees none) this prints one row saying so, and why, and
measures nothing: there is nothing honest to report.

With one, on the generated 3000x2000 JPEGs, the daemon's own parts run the
way its pipeline drives them (`decode_ahead` in decode worker threads, each
phase's preparation in the workers, chunks of CLIP's batch on its device),
in one process, one side after the other:

* CLIP, files -> embeddings, three ways: nvJPEG decode and CLIP's transform
  on the GPU then the GPU tower (`device: cuda`, `decode.device: cuda`: the
  target, at least 500 images/s where the issue measured a decode limit of
  about 1,000); Pillow decode and preprocessing in the workers then the GPU
  tower (`decode.device: cpu`); and the whole CPU path (`device: cpu`), the
  baseline. The vectors of the first and the last are compared, image by
  image (a bf16 tower against fp32, two decoders): cosine >= 0.99.
* Decoding alone: nvJPEG (gathered calls from the workers) against Pillow in
  the same number of threads.
* Faces, files -> faces: the face models with `device: cuda` (onnxruntime's
  CUDA provider when `onnxruntime-gpu` is installed; the row says which
  providers the sessions got) and photos decoded by nvJPEG, against
  `device: cpu` with Pillow, and how often both find the same number of faces.

Both sides use `min(16, cores)` decode workers, the count a GPU machine's
config would set (`decode.workers`); everything else is the daemon's default.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import assets
from bench.common import Context, Row, Stopwatch, interleaved

TARGET_CLIP = 500.0  # images/s, files -> embeddings, 3000x2000 JPEGs
TARGET_COSINE = 0.99
WARMUP = 64  # photos through each GPU side first: CUDA context, nvJPEG, cuBLAS, allocator


def run(ctx: Context) -> list[Row]:
    from daemon.models.device import resolve_device

    device = resolve_device("auto")
    if not device.is_cuda:
        ctx.log(f"gpu: {device.note}; nothing measured")
        return [
            Row(
                "gpu",
                "no GPU here: nothing measured",
                None,
                note=f"torch sees no CUDA device ({device.note.removeprefix('no GPU: ')}); run "
                "`python -m bench gpu` on a machine with an NVIDIA GPU and a CUDA build of torch",
            )
        ]
    return _measure(ctx, device.describe())


# -- one side: files in, results out, the pipeline's way ------------------------------------------
def _workers() -> int:
    return max(2, min(16, len(os.sched_getaffinity(0))))


def _clip_files(clip: Any, decoding: Any, paths: list[Path], workers: int) -> np.ndarray:
    from daemon.phases.ahead import decode_ahead

    def work(path: Path) -> Any:
        d = decoding.decode(path, False)  # the embedding phase needs no host image
        if d.pixels is not None:
            return clip.preprocess_pixels(d.pixels)
        x = clip.preprocess(d.image)
        d.image.close()
        return x

    parts = [
        clip.embed_tensors(chunk)
        for chunk in decode_ahead(paths, work, chunk=decoding.chunk, workers=workers)
    ]
    return np.concatenate(parts)


def _decode_only(decoding: Any, paths: list[Path], workers: int) -> None:
    from daemon.phases.ahead import decode_ahead

    def work(path: Path) -> None:
        d = decoding.decode(path, False)
        if d.image is not None:
            d.image.close()

    for _ in decode_ahead(paths, work, chunk=decoding.chunk, workers=workers):
        pass


def _faces_files(faces: Any, decoding: Any, paths: list[Path], workers: int) -> list[int]:
    from daemon.phases.ahead import decode_ahead

    counts: list[int] = []
    for chunk in decode_ahead(
        paths, lambda p: decoding.decode(p, True), chunk=decoding.chunk, workers=workers
    ):
        counts += [len(f) for f in faces.analyze_images([(d.image, d.scale) for d in chunk])]
        for d in chunk:
            d.image.close()
    return counts


def _rate(fn: Callable[[list[Path]], Any], paths: list[Path]) -> tuple[float, Any]:
    with Stopwatch() as sw:
        out = fn(paths)
    return len(paths) / sw.wall, out


# -- the measurements -------------------------------------------------------------------------
def _measure(ctx: Context, gpu_name: str) -> list[Row]:
    import torch

    from daemon.models import ClipModel, FaceAnalyzer
    from daemon.phases import decoding

    workers = _workers()
    photos = ctx.photos
    reps = ctx.reps(3, 1)
    cpu_per = max(8, len(photos) // (2 * reps))  # the CPU side gets a slice per round
    cpu_slices = [photos[i * cpu_per : (i + 1) * cpu_per] for i in range(reps)]
    gpu_decode = {"device": "cuda", "workers": workers}
    gpu_cfg = assets.config(ctx.work / "gpu", device="cuda", decode=gpu_decode)
    cpu_cfg = assets.config(ctx.work / "cpu", device="cpu", decode={"workers": workers})

    clip_gpu = ClipModel(gpu_cfg.clip, gpu_cfg.device)
    clip_cpu = ClipModel(cpu_cfg.clip, cpu_cfg.device)
    clip_gpu.load()
    clip_cpu.load()
    nvjpeg = decoding.choose(gpu_cfg, clip_gpu)
    pillow_gpu = decoding.pillow(gpu_cfg, clip_gpu.batch_size)
    pillow_cpu = decoding.choose(cpu_cfg, clip_cpu)
    settings = (
        f"{gpu_name}; CLIP {clip_gpu.precision} batch {clip_gpu.batch_size} on the GPU, "
        f"{clip_cpu.precision} batch {clip_cpu.batch_size} with {torch.get_num_threads()} "
        f"threads on the CPU; {workers} decode workers"
    )
    ctx.log(f"gpu: {settings}; decode {nvjpeg.where}")
    _clip_files(clip_gpu, nvjpeg, photos[:WARMUP], workers)
    _clip_files(clip_gpu, pillow_gpu, photos[:WARMUP], workers)
    _clip_files(clip_cpu, pillow_cpu, photos[:8], workers)

    gpu_vecs: dict[Path, np.ndarray] = {}
    cpu_vecs: dict[Path, np.ndarray] = {}

    def gpu_side(_: int) -> float:
        rate, vecs = _rate(lambda p: _clip_files(clip_gpu, nvjpeg, p, workers), photos)
        gpu_vecs.update(zip(photos, vecs, strict=True))
        return rate

    def cpu_side(i: int) -> float:
        paths = cpu_slices[i]
        rate, vecs = _rate(lambda p: _clip_files(clip_cpu, pillow_cpu, p, workers), paths)
        cpu_vecs.update(zip(paths, vecs, strict=True))
        return rate

    clip_fr = interleaved(reps, gpu_side, cpu_side)
    pil = interleaved(
        reps,
        lambda i: _rate(lambda p: _clip_files(clip_gpu, pillow_gpu, p, workers), photos)[0],
        lambda i: _rate(lambda p: _clip_files(clip_cpu, pillow_cpu, p, workers), cpu_slices[i])[0],
    )
    cos = np.array([float(gpu_vecs[p] @ cpu_vecs[p]) for p in cpu_vecs])
    dec = interleaved(
        reps,
        lambda i: _rate(lambda p: _decode_only(nvjpeg, p, workers), photos)[0],
        lambda i: _rate(lambda p: _decode_only(pillow_gpu, p, workers), cpu_slices[i])[0],
    )
    decoder = nvjpeg.decode.__self__  # the TensorDecoder: its counters
    ctx.log(
        f"gpu clip: nvJPEG {clip_fr.ours:.0f} img/s, Pillow+GPU {pil.ours:.0f}, CPU "
        f"{clip_fr.baseline:.1f}; decode nvJPEG {dec.ours:.0f} vs Pillow {dec.baseline:.0f}; "
        f"min cosine {cos.min():.5f}; {decoder.fallbacks} fallbacks, {decoder.calls} calls"
    )

    faces_gpu = FaceAnalyzer(gpu_cfg.faces, gpu_cfg.device)
    faces_cpu = FaceAnalyzer(cpu_cfg.faces, cpu_cfg.device)
    faces_gpu.load()
    faces_cpu.load()
    _faces_files(faces_gpu, nvjpeg, photos[:WARMUP], workers)
    found: dict[str, list[int]] = {"gpu": [], "cpu": []}

    def faces_side(key: str, analyzer: Any, dec_: Any) -> Callable[[int], float]:
        def side(i: int) -> float:
            rate, counts = _rate(lambda p: _faces_files(analyzer, dec_, p, workers), cpu_slices[i])
            found[key] += counts
            return rate

        return side

    fc = interleaved(
        reps, faces_side("gpu", faces_gpu, nvjpeg), faces_side("cpu", faces_cpu, pillow_cpu)
    )
    same = float(np.mean(np.array(found["gpu"]) == np.array(found["cpu"])))
    providers = ", ".join(faces_gpu.providers)
    ctx.log(f"gpu faces: {fc.ours:.1f} img/s on {providers} vs CPU {fc.baseline:.1f}")

    met = bool(clip_fr.ours >= TARGET_CLIP)
    cos_ok = bool(cos.min() >= TARGET_COSINE)
    return [
        Row(
            "gpu",
            "CLIP files -> embeddings, nvJPEG decode + GPU tower",
            clip_fr.ours,
            "img/s",
            clip_fr.baseline,
            clip_fr.ratio,
            f">= {TARGET_CLIP:g} img/s",
            met,
            f"{len(photos)} photos a round, {reps} rounds; {settings}; baseline: device cpu, "
            f"Pillow ({cpu_per} photos a round); decoder: {nvjpeg.where}, {decoder.calls} "
            f"calls, {decoder.fallbacks} fallbacks to Pillow",
            clip_fr.ours_samples + clip_fr.baseline_samples,
        ),
        Row(
            "gpu",
            "CLIP files -> embeddings, Pillow decode + GPU tower",
            pil.ours,
            "img/s",
            pil.baseline,
            pil.ratio,
            note="decode.device: cpu with device: cuda: Pillow decodes and preprocesses in the "
            "workers",
            samples=pil.ours_samples + pil.baseline_samples,
        ),
        Row(
            "gpu",
            "CLIP min cosine, nvJPEG + GPU vs all-CPU vectors",
            float(cos.min()),
            target=f">= {TARGET_COSINE}",
            met=cos_ok,
            note=f"{len(cos)} images; median {float(np.median(cos)):.6f} "
            f"({clip_gpu.precision} tower vs {clip_cpu.precision})",
        ),
        Row(
            "gpu",
            "decode alone, nvJPEG vs Pillow",
            dec.ours,
            "img/s",
            dec.baseline,
            dec.ratio,
            note=f"both with {workers} worker threads; nvJPEG output resized on the GPU to "
            "decode.max_side",
            samples=dec.ours_samples + dec.baseline_samples,
        ),
        Row(
            "gpu",
            "faces files -> faces, device cuda vs cpu",
            fc.ours,
            "img/s",
            fc.baseline,
            fc.ratio,
            note=f"GPU side: sessions on {providers}, photos decoded by nvJPEG; CPU side: "
            f"CPUExecutionProvider, Pillow; {len(found['gpu'])} photos",
            samples=fc.ours_samples + fc.baseline_samples,
        ),
        Row(
            "gpu",
            "faces: share of photos with the same face count, GPU vs CPU",
            same,
            note="two decoders (nvJPEG + a GPU resize, Pillow's DCT scaling) and two providers",
        ),
    ]
