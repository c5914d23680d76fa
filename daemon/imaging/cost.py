"""What decoding a photo will cost, read from its header before any pixel is decoded.

The estimator (`daemon.status.estimate`) predicts decode time from these
numbers, so they mirror `daemon.imaging.decode` exactly: a large JPEG is
decoded with libjpeg's DCT scaling, so a 4032x3024 photo costs its 2016x1512
decode plus a resize to `max_side`, while a 3000x2000 one lands at 1500x1000
and needs no resize at all. Reading a header costs a fraction of a
millisecond; a file whose header cannot be read costs (almost) nothing to
fail on, and says so with zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from daemon.imaging.decode import _DECODE_ERRORS, DRAFT_SLACK

if TYPE_CHECKING:
    from daemon.config import DecodeConfig


@dataclass(frozen=True)
class DecodeShape:
    decoded_mpx: float  # megapixels the decoder produces (after DCT scaling)
    resized_mpx: float  # megapixels fed to the resize down to max_side (0 when none)

    def features(self, file_bytes: int) -> tuple[float, float, float, float]:
        """The decode regression's inputs: (photo, decoded Mpx, resized Mpx, file MB)."""
        return (1.0, self.decoded_mpx, self.resized_mpx, file_bytes / 1e6)


NOTHING = DecodeShape(0.0, 0.0)


def decode_shape(path: Path, cfg: DecodeConfig) -> DecodeShape:
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > cfg.max_image_pixels or min(w, h) < cfg.min_side:
                return NOTHING  # refused from the header, as decode() does
            scale = min(1.0, cfg.max_side / max(w, h))
            if scale < 1.0 and im.format in ("JPEG", "MPO"):
                floor = scale * DRAFT_SLACK
                # draft() only chooses libjpeg's scale; nothing is decoded here.
                im.draft("RGB", (max(1, math.ceil(w * floor)), max(1, math.ceil(h * floor))))
            dw, dh = im.size
    except (*_DECODE_ERRORS, Image.DecompressionBombError):
        return NOTHING
    mpx = dw * dh / 1e6
    return DecodeShape(mpx, mpx if max(dw, dh) > cfg.max_side else 0.0)
