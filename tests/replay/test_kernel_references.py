"""Every resize / colour kernel against the implementation it names, on real photos and odd sizes.

The expected tensors come from the reference libraries themselves (Skia through skia-python, TensorFlow,
Pillow, OpenCV) or, for YUV, from a transliteration of libyuv's C reference written here; never from
replaybench. Sizes cover upscaling, downscaling by integer and non-integer factors, and tiny outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from replaybench.replay.preprocess import resize
from replaybench.replay.yuv import nv21_to_rgb, yuv420_to_rgb
from tests.conftest import REALDATA
from tests.fixtures.references import create_scaled_bitmap

PHOTOS = REALDATA / "utkface_300" / "images"

# (width, height): non-integer downscale, integer downscale, upscale (uneven), tiny, one pixel, identity-ish
SIZES = [(64, 64), (37, 53), (133, 97), (100, 50), (263, 311), (3, 5), (1, 1), (2, 1), (199, 200)]


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Three real 200x200 face photos and an odd-sized crop of a fourth (UTKFace, read-only)."""
    files = sorted(PHOTOS.glob("*.jpg"))[:4] if PHOTOS.is_dir() else []
    if len(files) < 4:
        pytest.skip(f"real photos not available at {PHOTOS} (../shared/realdata/utkface_300)")
    imgs = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    imgs[3] = np.ascontiguousarray(imgs[3][17:188, 9:140])  # 131 x 171: odd, non-square
    return imgs


# ------------------------------------------------------------------------------------------- Skia


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method,filter", [("bilinear_android", True), ("nearest", False)])
def test_android_kernels_equal_skia_create_scaled_bitmap(photos, size, method, filter):
    width, height = size
    for img in photos:
        expected = create_scaled_bitmap(img, width, height, filter).astype(np.float32)
        for backend in ("numpy", "onnxruntime"):  # replay's workers pass onnxruntime
            got = resize(img, width, height, method, backend)
            assert got.shape == expected.shape
            diff = np.abs(got - expected)
            assert diff.max() == 0, f"{method} {img.shape[:2]}->{size}: {int((diff > 0).sum())} differ"


def test_skia_reference_is_not_plain_half_pixel_bilinear(photos):
    """Guard on the reference itself: Skia's 8-bit sampler is not TF's float bilinear rounded, so the
    exact test above tells the two apart (it failed on the old rounded-TF kernel)."""
    img = photos[0]
    skia_out = create_scaled_bitmap(img, 133, 97, True).astype(np.float32)
    rounded_tf = np.rint(resize(img, 133, 97, "bilinear_tf"))
    assert (skia_out != rounded_tf).sum() > 0


# --------------------------------------------------------------------------------------- TensorFlow


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


@pytest.mark.parametrize("size", SIZES)
def test_bilinear_tf_kernels_equal_tensorflow(tf, photos, size):
    width, height = size
    for img in photos:
        batch = img[None].astype(np.float32)
        half_pixel = tf.image.resize(batch, (height, width), method="bilinear", antialias=False).numpy()[0]
        v1_half = tf.compat.v1.image.resize_bilinear(
            batch, (height, width), align_corners=False, half_pixel_centers=True
        ).numpy()[0]
        legacy = tf.compat.v1.image.resize_bilinear(
            batch, (height, width), align_corners=False, half_pixel_centers=False
        ).numpy()[0]
        np.testing.assert_allclose(v1_half, half_pixel, atol=1e-3)  # the two TF spellings agree
        for backend, atol in (("numpy", 2e-3), ("onnxruntime", 4e-3)):  # float32 rounding only
            np.testing.assert_allclose(
                resize(img, width, height, "bilinear_tf", backend), half_pixel, atol=atol
            )
            np.testing.assert_allclose(
                resize(img, width, height, "bilinear_tf_legacy", backend), legacy, atol=atol
            )


# ------------------------------------------------------------------------------------ Pillow, OpenCV


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method,pil", [("bilinear_pil", "BILINEAR"), ("bicubic_pil", "BICUBIC")])
def test_pil_kernels_equal_pillow(photos, size, method, pil):
    width, height = size
    for img in photos:
        expected = np.asarray(Image.fromarray(img).resize((width, height), getattr(Image.Resampling, pil)))
        np.testing.assert_array_equal(resize(img, width, height, method), expected.astype(np.float32))


@pytest.mark.parametrize("size", SIZES)
def test_area_equals_opencv_inter_area(photos, size):
    import cv2

    width, height = size
    for img in photos:
        expected = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(resize(img, width, height, "area"), expected.astype(np.float32))


# ------------------------------------------------------------------------------------------ libyuv

# libyuv source/row_common.cc, "BT.601 limited range YUV to RGB reference" (I601), default build:
LIBYUV_UB, LIBYUV_UG, LIBYUV_VG, LIBYUV_VR = 128, 25, 52, 102  # UB: max(128, round(2.018 * 64)) = 128
LIBYUV_YG, LIBYUV_YB = 18997, -1160


def libyuv_yuv_pixel(y: int, u: int, v: int) -> tuple[int, int, int]:
    """libyuv's ``YuvPixel`` (ARM branch of LOAD_YUV_CONSTANTS / CALC_RGB16), one pixel, as R, G, B."""
    ub, vr, ug, vg, yg = LIBYUV_UB, LIBYUV_VR, LIBYUV_UG, LIBYUV_VG, LIBYUV_YG
    bb = ub * 128 - LIBYUV_YB  # kRGBCoeffBias: (UB * 128 - YB), (UG * 128 + VG * 128 + YB), (VR * 128 - YB)
    bg = ug * 128 + vg * 128 + LIBYUV_YB
    br = vr * 128 - LIBYUV_YB
    y1 = ((y * 0x0101) * yg & 0xFFFFFFFF) >> 16
    b16 = y1 + u * ub - bb
    g16 = y1 + bg - (u * ug + v * vg)
    r16 = y1 + v * vr - br

    def clamp(x: int) -> int:
        return min(max(x >> 6, 0), 255)

    return clamp(r16), clamp(g16), clamp(b16)


def libyuv_nv21_to_rgb(data: bytes, width: int, height: int) -> np.ndarray:
    """``NV21ToARGBRow_C`` row by row: each VU pair serves two pixels of two rows."""
    out = np.zeros((height, width, 3), np.uint8)
    vu0 = width * height
    for row in range(height):
        vu = vu0 + (row // 2) * ((width + 1) // 2) * 2
        for col in range(width):
            v, u = data[vu + (col // 2) * 2], data[vu + (col // 2) * 2 + 1]
            out[row, col] = libyuv_yuv_pixel(data[row * width + col], u, v)
    return out


def _encode_nv21(rgb: np.ndarray) -> bytes:
    """An NV21 frame of a photo (any BT.601 encoder will do: the test is the decode)."""
    f = rgb.astype(np.float64)
    y = 16 + 0.257 * f[..., 0] + 0.504 * f[..., 1] + 0.098 * f[..., 2]
    u = 128 - 0.148 * f[..., 0] - 0.291 * f[..., 1] + 0.439 * f[..., 2]
    v = 128 + 0.439 * f[..., 0] - 0.368 * f[..., 1] - 0.071 * f[..., 2]
    h, w = y.shape
    ch, cw = (h + 1) // 2, (w + 1) // 2
    pad = np.pad(np.stack([v, u], -1), ((0, ch * 2 - h), (0, cw * 2 - w), (0, 0)), mode="edge")
    vu = pad.reshape(ch, 2, cw, 2, 2).mean(axis=(1, 3))
    to8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
    return to8(y).tobytes() + to8(vu).tobytes()


@pytest.mark.parametrize("size", [(40, 30), (33, 17), (1, 1)])
def test_nv21_equals_libyuv_reference(photos, size):
    width, height = size
    for img in photos[:2]:
        frame = np.asarray(Image.fromarray(img).resize((width, height)))
        data = _encode_nv21(frame)
        np.testing.assert_array_equal(
            nv21_to_rgb(data, width, height), libyuv_nv21_to_rgb(data, width, height)
        )


def test_yuv_extremes_equal_libyuv_reference():
    """Every corner of the YUV cube and a random sample of it (clamping at both ends, rounding)."""
    rng = np.random.default_rng(0)
    triples = rng.integers(0, 256, size=(1500, 3))
    corners = np.array([[y, u, v] for y in (0, 16, 235, 255) for u in (0, 128, 255) for v in (0, 128, 255)])
    triples = np.concatenate([triples, corners])
    width, height = len(triples), 1
    # a 1-row YUV_420_888 image per triple pair is awkward: use planar full-chroma via repeated columns
    y = np.repeat(triples[:, 0], 2).astype(np.uint8)[None].repeat(2, axis=0)
    u, v = triples[:, 1].astype(np.uint8)[None], triples[:, 2].astype(np.uint8)[None]
    got = yuv420_to_rgb(y.tobytes(), u.tobytes(), v.tobytes(), 2 * width, 2 * height)
    expected = np.array([libyuv_yuv_pixel(*map(int, t)) for t in triples], np.uint8)
    np.testing.assert_array_equal(got[0, ::2], expected)
    np.testing.assert_array_equal(got[1, 1::2], expected)


def test_yuv_420_888_strides_and_semi_planar_equal_nv21(photos):
    """The same frame as NV21 and as a padded YUV_420_888 (row stride > width, pixel stride 2)."""
    width, height = 31, 20
    frame = np.asarray(Image.fromarray(photos[0]).resize((width, height)))
    data = _encode_nv21(frame)
    y = np.frombuffer(data[: width * height], np.uint8).reshape(height, width)
    vu = np.frombuffer(data[width * height :], np.uint8).reshape(height // 2, -1)
    y_padded = np.pad(y, ((0, 0), (0, 9)))  # row stride 40
    vu_padded = np.pad(vu, ((0, 0), (0, 8)))
    got = yuv420_to_rgb(
        y_padded.tobytes(),
        vu_padded.tobytes()[1:],  # U plane starts one byte after V in NV21's interleaving
        vu_padded.tobytes(),
        width,
        height,
        y_row_stride=40,
        uv_row_stride=vu_padded.shape[1],
        uv_pixel_stride=2,
    )
    np.testing.assert_array_equal(got, libyuv_nv21_to_rgb(data, width, height))
