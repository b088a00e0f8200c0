"""Camera frames (NV21, YUV_420_888) -> RGB ``uint8``, as libyuv converts them on Android.

Android has no single framework call for YUV -> RGB; apps and their libraries (CameraX's
``ImageProcessingUtil``, many ML SDKs) use libyuv's ``NV21ToARGB`` / ``Android420ToARGB``, which convert with
the BT.601 limited-range matrix in 6-bit fixed point. This module is that arithmetic, integer for integer,
from libyuv's ``source/row_common.cc`` (``YuvPixel`` and the ``I601`` constants; read at
chromium's libyuv mirror github.com/lemenkov/libyuv, commit 44d9bc68):

    UB = 128 (round(2.018 * 64) capped at 128 unless LIBYUV_UNLIMITED_DATA), UG = 25, VG = 52, VR = 102,
    YG = 18997 (round(1.164 * 64 * 65536 / 257)), YB = -1160 (1.164 * 64 * -16 + 32)
    y1 = (y * 0x0101 * YG) >> 16
    B = clamp((y1 + UB * (u - 128) + YB) >> 6), G = clamp((y1 - UG * (u - 128) - VG * (v - 128) + YB) >> 6),
    R = clamp((y1 + VR * (v - 128) + YB) >> 6)

Chroma is 2x2 subsampled and taken without interpolation (each U/V sample covers a 2x2 block of Y), as
libyuv's row functions do. ``tests/replay/test_kernel_references.py`` checks this against a per-pixel
transliteration of ``YuvPixel`` written in the test.
"""

from __future__ import annotations

import numpy as np

# libyuv I601 (BT.601 limited range) YUV -> RGB constants, row_common.cc.
UB, UG, VG, VR = 128, 25, 52, 102
YG, YB = 18997, -1160


def yuv_pixels_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Full-resolution Y, U, V (same shape, uint8) -> (..., 3) RGB uint8 with libyuv's I601 arithmetic."""
    y1 = (y.astype(np.int64) * 0x0101 * YG) >> 16
    ui = u.astype(np.int64) - 128
    vi = v.astype(np.int64) - 128
    b = (y1 + ui * UB + YB) >> 6
    g = (y1 - (ui * UG + vi * VG) + YB) >> 6
    r = (y1 + vi * VR + YB) >> 6
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def _upsample_chroma(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.repeat(np.repeat(plane, 2, axis=0), 2, axis=1)[:height, :width]


def yuv420_to_rgb(
    y_plane: bytes | np.ndarray,
    u_plane: bytes | np.ndarray,
    v_plane: bytes | np.ndarray,
    width: int,
    height: int,
    *,
    y_row_stride: int | None = None,
    uv_row_stride: int | None = None,
    uv_pixel_stride: int = 1,
) -> np.ndarray:
    """An Android ``YUV_420_888`` image (the three ``Image.Plane`` buffers with their strides) -> RGB.

    libyuv's ``Android420ToARGB``: ``uv_pixel_stride`` 1 is planar I420, 2 is semi-planar (the U and V
    buffers interleave, as most camera HALs deliver them). Raises ``ValueError`` when a buffer is too short
    for the strides given.
    """
    cw, ch = (width + 1) // 2, (height + 1) // 2
    y_row_stride = y_row_stride or width
    uv_row_stride = uv_row_stride or cw * uv_pixel_stride

    def plane(
        buf: bytes | np.ndarray, rows: int, cols: int, row_stride: int, pixel_stride: int
    ) -> np.ndarray:
        a = np.frombuffer(buf, np.uint8) if isinstance(buf, bytes | bytearray) else np.asarray(buf, np.uint8)
        a = a.reshape(-1)
        need = (rows - 1) * row_stride + (cols - 1) * pixel_stride + 1
        if a.size < need:
            raise ValueError(f"plane of {a.size} bytes is shorter than the {need} its strides need")
        idx = np.arange(rows)[:, None] * row_stride + np.arange(cols)[None, :] * pixel_stride
        return a[idx]

    y = plane(y_plane, height, width, y_row_stride, 1)
    u = _upsample_chroma(plane(u_plane, ch, cw, uv_row_stride, uv_pixel_stride), height, width)
    v = _upsample_chroma(plane(v_plane, ch, cw, uv_row_stride, uv_pixel_stride), height, width)
    return yuv_pixels_to_rgb(y, u, v)


def nv21_to_rgb(data: bytes | np.ndarray, width: int, height: int) -> np.ndarray:
    """An NV21 buffer (``ImageFormat.NV21``: Y plane, then interleaved V/U at half resolution) -> RGB.

    libyuv's ``NV21ToARGB`` (V first in each chroma pair). Raises ``ValueError`` on a short buffer.
    """
    a = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else np.asarray(data, np.uint8)
    a = a.reshape(-1)
    cw, ch = (width + 1) // 2, (height + 1) // 2
    need = width * height + 2 * cw * ch
    if a.size < need:
        raise ValueError(f"NV21 buffer of {a.size} bytes; {width}x{height} needs {need}")
    vu = a[width * height : need]
    return yuv420_to_rgb(a[: width * height], vu[1:], vu, width, height, uv_pixel_stride=2)


def packed_yuv420_to_rgb(data: bytes | np.ndarray, width: int, height: int, layout: str) -> np.ndarray:
    """A packed 4:2:0 frame to RGB: ``layout`` "NV21" (Y, then V/U interleaved: Android's camera
    default), "NV12" (Y, then U/V) or "I420" (Y, U, V planes). Odd sizes round the chroma planes up."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else np.asarray(data, np.uint8)
    cw, ch = (width + 1) // 2, (height + 1) // 2
    need = width * height + 2 * cw * ch
    if buf.size != need:
        raise ValueError(f"a {width}x{height} {layout} frame has {need} bytes, got {buf.size}")
    y = buf[: width * height].reshape(height, width)
    rest = buf[width * height :]
    if layout in ("NV21", "NV12"):
        inter = rest.reshape(ch, cw, 2)
        first, second = inter[..., 0], inter[..., 1]
        u, v = (second, first) if layout == "NV21" else (first, second)
    elif layout == "I420":
        u, v = rest[: cw * ch].reshape(ch, cw), rest[cw * ch :].reshape(ch, cw)
    else:
        raise ValueError(f"unknown YUV layout {layout!r}; known: NV21, NV12, I420")
    return yuv_pixels_to_rgb(y, _upsample_chroma(u, height, width), _upsample_chroma(v, height, width))


def rgb_to_yuv420(img: np.ndarray, layout: str = "NV21") -> bytes:
    """RGB (H, W, 3) uint8 to a packed 4:2:0 frame, BT.601 limited range with libyuv's integer
    ``RGBToY``/``RGBToU``/``RGBToV`` (chroma from the rounded mean of each 2x2 block). Replay uses it
    to give photos the chroma subsampling and limited range a camera frame has."""
    h, w = img.shape[:2]
    px = img[..., :3].astype(np.int64)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    y = (66 * r + 129 * g + 25 * b + 0x1080) >> 8
    ph, pw = h + (h & 1), w + (w & 1)
    padded = np.pad(px, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    avg = (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2] + 2) >> 2
    ar, ag, ab = avg[..., 0], avg[..., 1], avg[..., 2]
    u = (112 * ab - 74 * ag - 38 * ar + 0x8080) >> 8
    v = (112 * ar - 94 * ag - 18 * ab + 0x8080) >> 8
    y8, u8, v8 = (np.clip(c, 0, 255).astype(np.uint8) for c in (y, u, v))
    if layout == "I420":
        return y8.tobytes() + u8.tobytes() + v8.tobytes()
    pair = np.stack([v8, u8] if layout == "NV21" else [u8, v8], axis=-1)
    return y8.tobytes() + pair.tobytes()
