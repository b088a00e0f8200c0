"""The resize kernels against the reference implementations they name."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from replaybench.bundle import PreprocessSpec, QuantParams, ResizeSpec
from replaybench.replay.preprocess import apply_preprocess, resize

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tf():
    import tensorflow  # a required dependency (the reference): a broken install must fail, not skip

    return tensorflow


@pytest.mark.parametrize("size", [(16, 16), (20, 31), (64, 90)])
def test_bilinear_tf_matches_tf_image_resize(tf, size):
    h, w = size
    ref = tf.image.resize(IMG[None].astype(np.float32), (h, w), method="bilinear").numpy()[0]
    np.testing.assert_allclose(resize(IMG, w, h, "bilinear_tf"), ref, atol=1e-3)


@pytest.mark.parametrize("size", [(16, 16), (64, 90)])
def test_bilinear_tf_legacy_matches_tf_v1(tf, size):
    h, w = size
    ref = tf.compat.v1.image.resize_bilinear(
        IMG[None].astype(np.float32), (h, w), align_corners=False
    ).numpy()[0]
    np.testing.assert_allclose(resize(IMG, w, h, "bilinear_tf_legacy"), ref, atol=1e-3)


def test_nearest_matches_tf_half_pixel_nearest(tf):
    ref = tf.image.resize(IMG[None], (16, 24), method="nearest").numpy()[0]
    np.testing.assert_array_equal(resize(IMG, 24, 16, "nearest"), ref.astype(np.float32))


@pytest.mark.parametrize("method,pil", [("bilinear_pil", "BILINEAR"), ("bicubic_pil", "BICUBIC")])
def test_pil_kernels_match_pil_rgb(method, pil):
    ref = np.asarray(Image.fromarray(IMG).resize((20, 15), getattr(Image.Resampling, pil)))
    np.testing.assert_array_equal(resize(IMG, 20, 15, method), ref.astype(np.float32))


def test_apply_preprocess_nchw_bgr_imagenet():
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    spec = PreprocessSpec(
        resize=ResizeSpec(width=8, height=6, method="bilinear_tf"),
        color_order="BGR",
        layout="NCHW",
        scale=list(1 / std[::-1]),
        offset=list(-mean[::-1] / std[::-1]),
    )
    out = apply_preprocess(IMG, spec)
    expect = (resize(IMG, 8, 6, "bilinear_tf")[..., ::-1] - mean[::-1]) / std[::-1]
    assert out.shape == (3, 6, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, expect.transpose(2, 0, 1), atol=1e-4)
    np.testing.assert_allclose(spec.mean, mean[::-1], rtol=1e-6)


def test_apply_preprocess_int8_quantisation_and_center_crop():
    spec = PreprocessSpec(
        resize=ResizeSpec(width=10, height=10, method="nearest", crop="center"),
        dtype="int8",
        scale=[1 / 255],
        offset=[0.0],
        quantization=QuantParams(scale=1 / 255, zero_point=-128),
    )
    out = apply_preprocess(IMG, spec)
    centre = IMG[:, 8:45]  # 53 wide -> 37 wide centre square
    expect = resize(centre, 10, 10, "nearest") - 128
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out.astype(np.int16), expect.astype(np.int16))


def test_letterbox_keeps_aspect_and_pads():
    spec = PreprocessSpec(
        resize=ResizeSpec(width=20, height=20, method="bilinear_tf", keep_aspect=True), scale=[1.0]
    )
    img = np.full((10, 20, 3), 200, np.uint8)
    out = apply_preprocess(img, spec)
    assert out.shape == (20, 20, 3)
    assert out[:5].max() == 0 and out[-5:].max() == 0
    np.testing.assert_allclose(out[5:15], 200.0)


def test_gray_has_one_channel():
    spec = PreprocessSpec(
        resize=ResizeSpec(width=4, height=4, method="area"), color_order="GRAY", scale=[1.0]
    )
    assert apply_preprocess(IMG, spec).shape == (4, 4, 1)


@pytest.mark.parametrize("method", ["bilinear_tf", "bilinear_tf_legacy"])
@pytest.mark.parametrize("size", [(16, 16), (20, 31), (64, 90), (37, 53)])
def test_onnxruntime_resize_backend_matches_numpy_reference(method, size):
    h, w = size
    big = RNG.integers(0, 256, size=(301, 257, 3), dtype=np.uint8)
    for img in (IMG, big, big[13:200, 7:180]):  # small, large, and a non-contiguous crop view
        ref = resize(img, w, h, method)
        got = resize(img, w, h, method, backend="onnxruntime")
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=0.05)


def test_apply_preprocess_backends_agree_within_a_fraction_of_a_step():
    spec = PreprocessSpec(
        resize=ResizeSpec(width=24, height=24, method="bilinear_tf", crop="center"),
        scale=[1 / 127.5],
        offset=[-1.0],
        layout="NCHW",
    )
    a = apply_preprocess(IMG, spec)
    b = apply_preprocess(IMG, spec, backend="onnxruntime")
    assert a.shape == b.shape == (3, 24, 24)
    np.testing.assert_allclose(a, b, atol=0.05 / 127.5)
