"""Preprocessing recovery on generated traces: true settings -> tensors (through the replay kernels) ->
infer_preprocess -> the same setting back, and tensors reproduced within one quantisation step or 1e-3."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest

from replaybench.bundle import PreprocessSpec, Provenance, QuantParams, ResizeSpec
from replaybench.errors import TraceError
from replaybench.extract.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalization,
    infer_preprocess,
    preprocess_from_static,
)
from replaybench.extract.trace import Quantization
from replaybench.replay.preprocess import apply_preprocess


@dataclass
class Sample:
    array: np.ndarray
    quantization: Quantization | None = None


def _images(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """Natural-ish images: smooth colour gradients plus texture, so resize kernels differ measurably and
    the three channels differ (otherwise RGB and BGR could not be told apart)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(n):
        base = np.stack(
            [
                128 + 100 * np.sin(xx / rng.uniform(3, 9) + rng.uniform(0, 6)),
                128 + 90 * np.cos(yy / rng.uniform(3, 9) + rng.uniform(0, 6)),
                np.full((h, w), rng.uniform(40, 200)) + 40 * np.sin((xx + yy) / 5),
            ],
            axis=-1,
        )
        noise = rng.normal(0, 25, size=(h, w, 3))
        out.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return out


NORMS = {
    "unit": ([1 / 255], [0.0]),
    "pm1": ([1 / 127.5], [-1.0]),
    "imagenet": (
        [1 / (255 * s) for s in IMAGENET_STD],
        [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)],
    ),
}

# (name, size (w, h), method, colour, layout, norm, dtype, quant, centre crop)
GRID = [
    ("nearest-unit", (24, 24), "nearest", "RGB", "NHWC", "unit", "float32", None, False),
    ("android-pm1-bgr", (20, 20), "bilinear_android", "BGR", "NHWC", "pm1", "float32", None, False),
    ("tf-imagenet-nchw", (24, 16), "bilinear_tf", "RGB", "NCHW", "imagenet", "float32", None, False),
    ("area-unit-crop", (16, 16), "area", "RGB", "NHWC", "unit", "float32", None, True),
    ("pil-pm1-nchw-crop", (20, 20), "bilinear_pil", "BGR", "NCHW", "pm1", "float32", None, True),
    ("nearest-imagenet-crop", (18, 18), "nearest", "BGR", "NCHW", "imagenet", "float32", None, True),
    ("tf-uint8", (24, 24), "bilinear_tf", "RGB", "NHWC", "unit", "uint8", (1 / 255, 0), False),
    ("android-int8-pm1", (20, 20), "bilinear_android", "RGB", "NHWC", "pm1", "int8", (1 / 128, 0), False),
    ("area-int8-imagenet-bgr-crop", (16, 16), "area", "BGR", "NHWC", "imagenet", "int8", (0.0187, -14), True),
    ("pil-uint8-nchw", (18, 18), "bilinear_pil", "RGB", "NCHW", "pm1", "uint8", (2 / 255, 128), False),
]


def _true_spec(size, method, color, layout, norm, dtype, quant, centre) -> PreprocessSpec:
    scale, offset = NORMS[norm]
    return PreprocessSpec(
        resize=ResizeSpec(width=size[0], height=size[1], method=method, crop="center" if centre else "none"),
        color_order=color,
        layout=layout,
        dtype=dtype,
        scale=scale,
        offset=offset,
        quantization=QuantParams(scale=quant[0], zero_point=quant[1]) if quant else None,
    )


@pytest.mark.parametrize("case", GRID, ids=[c[0] for c in GRID])
def test_recovers_true_setting(case) -> None:
    name, size, method, color, layout, norm, dtype, quant, centre = case
    true = _true_spec(size, method, color, layout, norm, dtype, quant, centre)
    # Sources of another size and aspect (so a centre crop matters) than the tensor.
    images = _images(3, 37, 53 if centre else 37, seed=zlib.crc32(name.encode()) % 1000)
    q = Quantization(scale=quant[0], zero_point=quant[1]) if quant else None
    pairs = [(img, Sample(apply_preprocess(img, true)[None], q)) for img in images]

    spec = infer_preprocess(pairs)

    # 1. The recovered spec reproduces every captured tensor within 1 quantisation step / 1e-3.
    tol = 1.0 if quant else 1e-3
    for img, s in pairs:
        got = apply_preprocess(img, spec).astype(np.float64)
        assert np.abs(got - s.array[0].astype(np.float64)).max() <= tol
    # 2. The true setting is ranked first, or the winner is numerically equivalent to it: both reproduce
    #    the captured tensors exactly the same (a tie the evidence cannot break, e.g. bilinear_tf and
    #    bilinear_android under uint8 quantisation, where rounding erases the difference). Then the true
    #    setting must be among the alternatives marked equivalent.
    chosen = (spec.resize.method, spec.resize.crop, spec.color_order, spec.layout)
    wanted = (method, true.resize.crop, color, layout)
    if chosen != wanted:
        equivalent = [
            (a["method"], a["crop"], a["color_order"], a["layout"])
            for a in spec.alternatives
            if a["equivalent"]
        ]
        assert wanted in equivalent, (chosen, spec.alternatives[:3])
        for img, _ in pairs:
            np.testing.assert_allclose(apply_preprocess(img, spec), apply_preprocess(img, true), atol=tol)
    # 3. The linear map is the true one (mean/std reported), and every field says it came from the trace.
    np.testing.assert_allclose(
        np.resize(spec.scale, 3) if color != "GRAY" else spec.scale, np.resize(true.scale, 3), rtol=2e-2
    )
    assert spec.provenance["scale"] == Provenance.TRACE and spec.provenance["resize"] == Provenance.TRACE
    assert spec.quantization == true.quantization
    assert (spec.resize.width, spec.resize.height) == size
    assert spec.residual["max_error"] <= tol


def test_snaps_to_imagenet_constants() -> None:
    true = _true_spec((16, 16), "bilinear_tf", "RGB", "NHWC", "imagenet", "float32", None, False)
    images = _images(2, 32, 32, seed=3)
    spec = infer_preprocess([(img, Sample(apply_preprocess(img, true)[None])) for img in images])
    np.testing.assert_allclose(spec.mean, [m * 255 for m in IMAGENET_MEAN], atol=1e-6)
    np.testing.assert_allclose(spec.std, [s * 255 for s in IMAGENET_STD], atol=1e-6)
    assert any("ImageNet" in n for n in spec.notes)


def test_ambiguous_near_identity_ranks_alternatives() -> None:
    # A 32x32 source into a 32x32 tensor: every resize kernel is the identity, so they all tie.
    true = _true_spec((32, 32), "bilinear_android", "RGB", "NHWC", "unit", "float32", None, False)
    images = _images(2, 32, 32, seed=5)
    spec = infer_preprocess([(img, Sample(apply_preprocess(img, true)[None])) for img in images])
    equivalent = {a["method"] for a in spec.alternatives if a["equivalent"]} | {spec.resize.method}
    assert {"bilinear_tf", "bilinear_android", "nearest"} <= equivalent
    assert any("cannot separate" in n for n in spec.notes)


def test_no_pairs_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match="no \\(bitmap, input tensor\\) pairs"):
        infer_preprocess([])


def test_static_fallback_prefers_metadata_over_app_code() -> None:
    spec = preprocess_from_static(
        [1, 224, 224, 3],
        "float32",
        normalization=[
            Normalization((0.0,), (255.0,), Provenance.APP_CODE),
            Normalization((127.5,), (127.5,), Provenance.METADATA),
        ],
    )
    assert (spec.resize.width, spec.resize.height, spec.layout) == (224, 224, "NHWC")
    assert spec.mean == [127.5, 127.5, 127.5] and spec.std == [127.5, 127.5, 127.5]
    assert spec.provenance["scale"] == Provenance.METADATA
    assert spec.provenance["resize.method"] == Provenance.DEFAULT
    assert spec.provenance["color_order"] == Provenance.DEFAULT


def test_static_defaults_for_quantised_and_nchw_inputs() -> None:
    q = QuantParams(scale=1 / 255, zero_point=0)
    spec = preprocess_from_static([1, 96, 96, 3], "uint8", q)
    img = np.arange(96 * 96 * 3, dtype=np.uint32).reshape(96, 96, 3).astype(np.uint8)
    np.testing.assert_array_equal(apply_preprocess(img, spec), img)  # raw pixel bytes
    assert spec.provenance["scale"] == Provenance.DEFAULT
    spec8 = preprocess_from_static([1, 96, 96, 3], "int8", QuantParams(scale=1 / 255, zero_point=-128))
    np.testing.assert_array_equal(apply_preprocess(img, spec8), (img.astype(np.int16) - 128).astype(np.int8))
    nchw = preprocess_from_static(
        [1, 3, 64, 48],
        "float32",
        normalization=[Normalization.from_unit(IMAGENET_MEAN, IMAGENET_STD, Provenance.APP_CODE)],
    )
    assert (nchw.layout, nchw.resize.width, nchw.resize.height) == ("NCHW", 48, 64)
    assert nchw.provenance["offset"] == Provenance.APP_CODE
