"""The one small interface every phase implements.

Two kinds of phase, run in a fixed order by the pipeline:

* An image phase (`ImagePhase`: embedding, faces) is handed chunks of images
  that the pipeline decoded once for all image phases. Its `prepare` runs in
  the decode workers right after each decode (per-image CPU work such as a
  model's preprocessing, so it overlaps the models' work on the previous
  chunk); `process` then calls `report(1)` as each image finishes (success or
  a per-file failure) so progress is exact, and returns one `ImageOutcome` per
  image.
* A batch phase (`BatchPhase`: clustering) runs once per batch after the image
  phases and reports its declared sub-steps.

Phases write their vectors to the store themselves (idempotent upserts keyed
by content hash), and the pipeline then records each outcome in the ledger in
one transaction, so a crash between the two repeats the upsert and never
duplicates anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from daemon.vocab import ImageOutcome, PhaseName

if TYPE_CHECKING:
    from PIL import Image

    from daemon.config import Config


class Report(Protocol):
    """How a phase says `n` steps are done; a phase that finds faces says how many too."""

    def __call__(self, n: int, /, *, faces: int | None = None) -> None: ...


@dataclass(frozen=True)
class BatchInfo:
    batch_id: int
    name: str  # the dropped folder's name
    path: Path  # permanent home under data/batches (or the claimed symlink)


@dataclass
class DecodedImage:
    """One photo, decoded once for every image phase."""

    image_id: int  # ledger row id
    sha256: str
    path: Path  # absolute path of the original
    rel_path: str  # path inside the batch folder
    # RGB, EXIF-rotated, possibly reduced by JPEG draft mode. None only when the
    # photo was decoded on the GPU and every phase it is pending for takes `pixels`.
    image: Image.Image | None
    width: int  # original (upright) width in pixels
    height: int  # original (upright) height in pixels
    scale: float  # decoded size / original size (<= 1.0)
    captured_at: str | None = None  # EXIF DateTimeOriginal as ISO-8601, when present
    pending: frozenset[str] = frozenset()  # the phases that still have to process it
    prepared: dict[str, Any] = field(default_factory=dict)  # phase name -> its prepare() result
    pixels: Any = None  # uint8 3xHxW tensor on the GPU (decode.device), until prepare has run


@dataclass
class PhaseContext:
    """What a phase may use. Built once by the service and passed down."""

    config: Config
    store: Any  # daemon.store.Store
    ledger: Any  # daemon.queue.Ledger
    models: Any  # daemon.models.ModelRegistry


class ImagePhase(Protocol):
    name: PhaseName
    # Optional: a phase whose `prepare` can start from `DecodedImage.pixels` (a photo
    # decoded on the GPU) sets it True; for the others the pipeline asks for `image`.
    takes_pixels: bool

    def setup(self, ctx: PhaseContext) -> None:
        """Load models (once; later calls are cheap). Raises ModelUnavailable."""

    def prepare(self, image: DecodedImage) -> Any:
        """Per-image work done in a decode worker thread; the result is kept in
        `image.prepared[name]` for `process`. Must touch neither the store nor
        the ledger, and may raise ImageError (recorded like a decode failure)."""

    def process(
        self, batch: BatchInfo, images: list[DecodedImage], report: Report
    ) -> list[ImageOutcome]:
        """Process the images; call report(1) as each finishes."""
        ...

    def cleanup(self) -> None:
        """Release per-batch resources; models stay loaded."""


class BatchPhase(Protocol):
    name: PhaseName

    def setup(self, ctx: PhaseContext) -> None: ...

    def total_steps(self, batch: BatchInfo) -> int:
        """How many sub-steps run() will report. Fixed before it starts."""
        ...

    def run(self, batch: BatchInfo, report: Report, describe: Callable[[str], None]) -> None:
        """Do the work, calling report(1) per sub-step and describe(text) as each starts."""

    def cleanup(self) -> None: ...
