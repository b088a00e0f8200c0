"""Image decode for the student: the one function training and scoring share, so both see the same pixels.

Decoding is replay's (``replaybench.replay.decode``: EXIF orientation, any Pillow mode to RGB, HEIC when
available, decompression-bomb and truncation checks, short failure reasons), asked for a reduced-scale
JPEG decode inside libjpeg (``Image.draft``: a 1080x1080 JPEG decodes at 270x270, 2.5-5x faster than a
full decode); then a bilinear resize to 224x224.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replaybench.distill.student import IMAGE_SIZE


def decode_image(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 CHW (3, size, size) RGB array of the image at ``path``. Raises DecodeFailure if unusable."""
    from PIL import Image

    from replaybench.replay.decode import decode_image as decode_rgb

    rgb = decode_rgb(Path(path), fast_size=(size, size))
    im = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))


def try_decode(path: Path | None) -> tuple[np.ndarray | None, str | None]:
    """(array, None) or (None, reason): never raises, for worker processes and error rows."""
    from replaybench.replay.decode import DecodeFailure

    if path is None:
        return None, "missing: no image path"
    try:
        return decode_image(Path(path)), None
    except DecodeFailure as e:
        return None, e.reason
    except Exception as e:  # anything else Pillow raises for a hostile file still becomes an error row
        return None, f"corrupt: {type(e).__name__}: {e}"
