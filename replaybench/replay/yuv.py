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
