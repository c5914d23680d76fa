"""Which way of running the ViT-B-32 image tower is fastest here, at the required accuracy?

    python -m bench.explore_clip [--onnx] [--rounds N]

Not part of `python -m bench`: a sweep to decide settings, over the model's
forward pass alone (preprocessed 224x224 inputs from the benchmark photos):
fp32 and bf16 (weights cast, as the daemon does) at several batch sizes and
thread counts, and with --onnx the image tower exported to ONNX and run by
onnxruntime in fp32 and int8 (dynamic quantisation). Each variant's min
cosine to fp32 eager is printed with its median images/s; variants take turns
within every round, so load from elsewhere spreads over all of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import numpy as np

from bench import assets
from bench.common import Stopwatch

BATCHES = (8, 16, 32, 64)
THREADS = (1, 2)


def _inputs(n: int) -> np.ndarray:
    import open_clip
    from PIL import Image

    preprocess = open_clip.image_transform(224, is_train=False)
    out = []
    for p in assets.FULL.paths()[:n]:
        with Image.open(p) as im:
            out.append(preprocess(im.convert("RGB")).numpy())
    return np.stack(out)


def _onnx_sessions(model: object, x: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = assets.CACHE / "vit-b-32-visual.onnx"
    int8 = assets.CACHE / "vit-b-32-visual-int8.onnx"
    if not fp32.exists():
        torch.onnx.export(
            model,
            (torch.from_numpy(x[:2]),),
            str(fp32),
            input_names=["pixels"],
            output_names=["embedding"],
            dynamic_axes={"pixels": {0: "n"}, "embedding": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    if not int8.exists():
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    out = {}
    for name, path in (("onnx fp32", fp32), ("onnx int8", int8)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = len(os.sched_getaffinity(0))
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out[name] = lambda a, s=sess: s.run(None, {"pixels": a})[0]
    return out


def main() -> None:
    import copy

    import open_clip
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", action="store_true", help="also onnxruntime fp32 and int8")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = 64
    x = _inputs(n)
    model = open_clip.create_model("ViT-B-32", pretrained=str(assets.clip_weights())).eval()
    fp32 = model.visual
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)

    def torch_run(tower: torch.nn.Module, dtype: torch.dtype) -> Callable[[np.ndarray], np.ndarray]:
        def run(a: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return tower(torch.from_numpy(a).to(dtype)).float().numpy()

        return run

    engines = {
        "torch fp32": torch_run(fp32, torch.float32),
        "torch bf16": torch_run(bf16, torch.bfloat16),
    }
    if args.onnx:
        engines.update(_onnx_sessions(fp32, x))

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    ref = unit(engines["torch fp32"](x))
    # onnxruntime has its own thread pool (all cores); only torch varies threads.
    variants = [
        (e, b, t)
        for e in engines
        for b in BATCHES
        for t in (THREADS if e.startswith("torch") else THREADS[-1:])
    ]
    cos = {e: float(np.min(np.sum(unit(fn(x)) * ref, axis=1))) for e, fn in engines.items()}
    rates: dict[tuple[str, int, int], list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            engine, batch, threads = v
            torch.set_num_threads(threads)
            fn = engines[engine]
            fn(x[:batch])  # oneDNN/ORT set up kernels per shape on first use
            with Stopwatch() as sw:
                for i in range(0, n, batch):
                    fn(x[i : i + batch])
            rates[v].append(n / sw.wall)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"{'engine':12} {'batch':>5} {'threads':>7} {'img/s':>7}  min cos vs fp32")
    for v in sorted(variants, key=lambda v: -statistics.median(rates[v])):
        e, b, t = v
        print(f"{e:12} {b:5} {t:7} {statistics.median(rates[v]):7.1f}  {cos[e]:.6f}")


if __name__ == "__main__":
    main()
