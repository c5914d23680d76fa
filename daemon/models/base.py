"""What every model wrapper shares: lazy, thread-safe loading, and ONNX sessions.

A model is created cheaply and loaded on first use (or by an explicit
`load()` when the service wants to know early that the files are there). A
failed load leaves the model unloaded, so the next call tries again: the
service retries every `models.retry_seconds` until someone puts the files in
place.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import ModelUnavailable

if TYPE_CHECKING:
    import onnxruntime


class InferenceModel(ABC):
    """One model task, loaded on first use. Subclasses implement `_load()` and their task's
    methods (`embed_images`, `analyze`), which call `load()` first."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loaded = False
        self._load_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Load the weights once; later calls return at once. Raises ModelUnavailable."""
        if self._loaded:
            return
        with self._load_lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    @abstractmethod
    def _load(self) -> None: ...


def default_threads() -> int:
    """CPUs this process may run on (a container or `taskset` may allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def make_ort_session(
    path: Path, threads: int, providers: list[Any] | None = None
) -> onnxruntime.InferenceSession:
    """The one place onnxruntime sessions are made: `threads` intra-op threads, on the CPU
    unless `providers` (from `daemon.models.device.ort_providers`) names CUDA first."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    if not path.is_file():
        raise ModelUnavailable(f"model file {path} does not exist")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads if threads > 0 else default_threads()
    # One image at a time goes through a graph; parallel branches gain nothing
    # and a second pool would compete with the intra-op threads for the cores.
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
        )
    except (
        OSError,
        ort_state.Fail,
        ort_state.InvalidArgument,
        ort_state.InvalidGraph,
        ort_state.InvalidProtobuf,
        ort_state.NoModel,
        ort_state.NoSuchFile,
        ort_state.NotImplemented,
        ort_state.RuntimeException,
    ) as exc:
        raise ModelUnavailable(
            f"{path} is not a usable ONNX model: {exc}",
            hint=f"Replace {path} with a complete copy of the model, then send SIGHUP "
            "(systemctl reload imgtrain).",
        ) from exc
