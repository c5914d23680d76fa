"""The models the phases use, each loaded once and kept loaded.

Importing this package is cheap: torch, open_clip and insightface are imported
when a model is first loaded, so CLI commands that never embed anything do
not pay seconds of import time.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from daemon.models.base import InferenceModel, make_ort_session
from daemon.models.clip import ClipModel
from daemon.models.faces import Face, FaceAnalyzer

if TYPE_CHECKING:
    from daemon.config import ClipConfig, Config

__all__ = [
    "ClipModel",
    "Face",
    "FaceAnalyzer",
    "InferenceModel",
    "ModelRegistry",
    "make_ort_session",
]


class ModelRegistry:
    """Hands every phase the same model objects. Creating one loads nothing."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._clip: ClipModel | None = None
        self._faces: FaceAnalyzer | None = None
        self._other_clips: dict[ClipConfig, ClipModel] = {}

    def clip(self) -> ClipModel:
        with self._lock:
            if self._clip is None:
                self._clip = ClipModel(self.config.clip, self.config.device, self.config.models.dir)
            return self._clip

    def clip_for(self, cfg: ClipConfig) -> ClipModel:
        """The CLIP model of these settings: the configured one, or another model the library
        has vectors of (during a re-index, the one search still uses)."""
        if cfg == self.config.clip:
            return self.clip()
        with self._lock:
            if cfg not in self._other_clips:
                self._other_clips[cfg] = ClipModel(cfg, self.config.device, self.config.models.dir)
            return self._other_clips[cfg]

    def faces(self) -> FaceAnalyzer:
        with self._lock:
            if self._faces is None:
                self._faces = FaceAnalyzer(self.config.faces, self.config.device)
            return self._faces

    @property
    def loaded_clip(self) -> ClipModel | None:
        """The CLIP model if it has been loaded, else None (never triggers a load)."""
        clip = self._clip
        return clip if clip is not None and clip.loaded else None

    def accelerators(self) -> tuple[str | None, list[str] | None]:
        """(the device CLIP runs on, the onnxruntime providers the face models got), each
        None until that model is loaded; never triggers a load."""
        clip, faces = self.loaded_clip, self._faces
        device = clip.device.torch if clip is not None and clip.device is not None else None
        providers = list(faces.providers) if faces is not None and faces.loaded else None
        if device is None and faces is not None and faces.loaded and faces.device is not None:
            device = faces.device.torch  # faces without embedding: their device
        return device, providers
