"""Image files -> RGB ``uint8`` arrays (H, W, 3), or a reason why not.

JPEG, PNG, WebP, GIF/BMP/TIFF (whatever Pillow reads), HEIC/HEIF when ``pillow-heif`` is installed. EXIF
orientation is applied (phones store portrait photos rotated plus a tag). Grayscale, CMYK, palette and
alpha images become RGB: alpha is dropped and the colour values kept, which is what reading an Android
``Bitmap``'s pixels into an RGB tensor does.

Bad inputs never raise out of ``decode_image`` callers in the runner: ``DecodeFailure`` carries a short
reason that becomes the ``error`` column of an error row (missing, zero-byte, not an image, truncated,
decompression bomb).

Reduced-size JPEG decoding (``fast=True``) uses libjpeg's DCT scaling through ``Image.draft``: the decoder
produces a 1/2, 1/4 or 1/8 scale image directly, several times faster for large photos. The result is an
area-averaged image, not the full-size one, so a model whose resize kernel does not antialias
(``bilinear_tf``, ``nearest``) sees different pixels; it is therefore off by default. ``draft_size`` keeps
the decoded image at least as large as the target, so the later resize still downsamples.
``benchmarks/replay_bench.py`` measures the speed-up and the mean/max difference in pixel steps.

Plain full-size JPEGs (YCbCr, no EXIF rotation, under the pixel cap) are decoded by ``simplejpeg`` when it
is installed (``pip install 'replaybench[fast]'``): the same libjpeg-turbo with the same settings (accurate
DCT, fancy upsampling), so the same pixels (checked on 600 real and synthetic JPEGs), without Pillow's
header parsing and image object (200px faces: 0.48 -> 0.25 ms). Anything else, and any file simplejpeg
refuses (truncated, corrupt), goes through Pillow, which gives the reason.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Refuse what Pillow calls a decompression bomb (default cap ~89 Mpx) as an error row, not a warning:
# a 1 GB bitmap from a crafted 50 kB PNG would stall or kill a worker.
MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

_heif_registered: bool | None = None


class DecodeFailure(Exception):
    """An image that cannot be used; ``reason`` is short and goes into the predictions' ``error``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _register_heif() -> bool:
    global _heif_registered
    if _heif_registered is None:
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
            _heif_registered = True
        except ImportError:
            _heif_registered = False
    return _heif_registered


def draft_size(targets: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The size to ask ``Image.draft`` for: the largest target (width, height), or None.

    libjpeg picks the strongest DCT scaling (1/2, 1/4, 1/8) that keeps the image at least this large, so
    the resize that follows still downsamples (or is the identity)."""
    if not targets:
        return None
    return (max(w for w, _ in targets), max(h for _, h in targets))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (alpha dropped, palette expanded, CMYK/YCbCr/16-bit converted)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits rather than clip (Pillow's convert("L") clips at 255).
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(arr * 255.0 / peak), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _exif_orientation(data: bytes) -> int | None:
    """The EXIF orientation tag of a JPEG (1 when absent), or None when the markers cannot be walked."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no APPn segments after this
            return 1
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            tiff = data[i + 10 : i + 2 + length]
            order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
            if order is None or len(tiff) < 8:
                return None
            ifd = int.from_bytes(tiff[4:8], order)  # type: ignore[arg-type]
            if ifd + 2 > len(tiff):
                return None
            for k in range(int.from_bytes(tiff[ifd : ifd + 2], order)):  # type: ignore[arg-type]
                entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
                if len(entry) < 12:
                    return None
                if int.from_bytes(entry[:2], order) == 0x0112:  # type: ignore[arg-type]
                    return int.from_bytes(entry[8:10], order)  # type: ignore[arg-type]
            return 1
        i += 2 + length
    return None


def _decode_plain_jpeg(path: Path) -> np.ndarray | None:
    """A plain JPEG decoded by simplejpeg, or None to let Pillow handle (and explain) it."""
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        data = path.read_bytes()
        if not data.startswith(b"\xff\xd8"):
            return None
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace != "YCbCr" or w * h > MAX_IMAGE_PIXELS or _exif_orientation(data) != 1:
            return None
        # strict: libjpeg's warnings (premature end of data) are errors, not grey padding
        arr: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except (ValueError, OSError):  # truncated or corrupt: Pillow's path names the reason
        return None
    return arr


def decode_image(
    path: Path, *, fast_size: tuple[int, int] | None = None, simplejpeg: bool = True
) -> np.ndarray:
    """Read ``path`` as an RGB uint8 (H, W, 3) array with EXIF orientation applied.

    ``fast_size`` (width, height): allow a reduced-size JPEG decode no smaller than this.
    ``simplejpeg``: decode plain JPEGs with simplejpeg when installed (same pixels; see the module doc).
    Raises ``DecodeFailure`` with the reason for anything unusable.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DecodeFailure("missing: file not found") from None
    except OSError as e:
        raise DecodeFailure(f"unreadable: {e.strerror or e}") from e
    if size == 0:
        raise DecodeFailure("empty: zero-byte file")
    if path.suffix.lower() in (".heic", ".heif", ".avif") and not _register_heif():
        raise DecodeFailure("unsupported: HEIC/HEIF needs pillow-heif (pip install 'replaybench[heic]')")
    if simplejpeg and fast_size is None and path.suffix.lower() in (".jpg", ".jpeg", ".jpe", ".jfif"):
        plain = _decode_plain_jpeg(path)
        if plain is not None:
            return plain
    # Truncated files must fail, not be padded with grey (Pillow's LOAD_TRUNCATED_IMAGES is global).
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DecodeFailure(
                        f"too large: {w}x{h} = {w * h:,} pixels exceeds the decompression-bomb cap "
                        f"{MAX_IMAGE_PIXELS:,}"
                    )
                if fast_size is not None and img.format == "JPEG":
                    img.draft("RGB", fast_size)
                img.load()
                # exif_transpose copies the image even when there is nothing to do: check the tag first.
                orientation = img.getexif().get(0x0112, 1)
                upright: Image.Image = (ImageOps.exif_transpose(img) or img) if orientation != 1 else img
                arr = np.asarray(to_rgb(upright), dtype=np.uint8)
    except DecodeFailure:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeFailure(f"too large: {e}") from e
    except Image.UnidentifiedImageError as e:
        raise DecodeFailure("not an image: unidentified format") from e
    except OSError as e:
        text = str(e)
        reason = "truncated" if "truncated" in text.lower() else "corrupt"
        raise DecodeFailure(f"{reason}: {text}") from e
    except (ValueError, SyntaxError, EOFError) as e:  # Pillow raises these for some broken headers
        raise DecodeFailure(f"corrupt: {type(e).__name__}: {e}") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DecodeFailure(f"corrupt: decoded to shape {arr.shape}")
    return arr
