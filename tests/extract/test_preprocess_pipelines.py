"""The pipelines real apps use, recovered from (photo, tensor) pairs made by independent references.

Every "captured" tensor here is made by Pillow / numpy code written in this file (never by replaybench's
kernels) from real photos (../shared/realdata: COCO photos, UTKFace faces). ``infer_preprocess`` must
find the geometry (letterbox with its padding and placement, torchvision Resize(S) + CenterCrop,
a crop box, rotation / mirroring) and the spec it returns must reproduce every tensor within the
acceptance rule (1 quantisation step, or 1e-3 of the tensor range). A pipeline outside the search is
reported unresolved, never as a solved spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replaybench.bundle import PreprocessSpec, Provenance, read_spec
from replaybench.errors import UsageError
from replaybench.extract.preprocess import infer_preprocess
from replaybench.extract.trace import Quantization
from replaybench.replay.preprocess import apply_preprocess

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


@dataclass
class Captured:
    array: np.ndarray
    quantization: Quantization | None = None


def _load(paths: list[Path], longest: int) -> list[np.ndarray]:
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        im.thumbnail((longest, longest), Image.Resampling.LANCZOS)  # a smaller real photo: a faster test
        out.append(np.asarray(im))
    return out


@pytest.fixture(scope="module")
def photos(realdata: Path) -> list[np.ndarray]:
    """Three COCO photos of different aspects (landscape, portrait), at most 320 px."""
    folder = realdata / "coco_mini_captions_159" / "val2017"
    paths = sorted(folder.glob("*.jpg"))[:3]
    if len(paths) < 3:
        pytest.skip(f"fewer than 3 COCO photos in {folder}")
    return _load(paths, 320)


@pytest.fixture(scope="module")
def faces(realdata: Path) -> list[np.ndarray]:
    folder = realdata / "utkface_300" / "images"
    paths = sorted(folder.glob("*.jpg"))[:3]
    if len(paths) < 3:
        pytest.skip(f"fewer than 3 UTKFace images in {folder}")
    return _load(paths, 200)


def _check_reproduces(spec: PreprocessSpec, pairs: list[tuple[np.ndarray, Captured]], integer: bool) -> None:
    assert not spec.unresolved, spec.notes
    assert set(spec.provenance.values()) == {Provenance.TRACE}
    caps = [c.array[0].astype(np.float64) for _, c in pairs]
    tol = 1.0 if integer else 1e-3 * (max(c.max() for c in caps) - min(c.min() for c in caps))
    for (img, _), cap in zip(pairs, caps, strict=True):
        got = apply_preprocess(img, spec).astype(np.float64)
        assert got.shape == cap.shape
        assert np.abs(got - cap).max() <= tol


# ---------------------------------------------------------------------------- independent references


def letterbox_yolo(img: np.ndarray, size: int, pad: int) -> np.ndarray:
    """YOLO-style letterbox with Pillow: keep aspect, round the content size, centre it, pad grey;
    float [0, 1] NHWC."""
    h, w = img.shape[:2]
    r = min(size / w, size / h)
    nw, nh = int(round(w * r)), int(round(h * r))
    content = Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), (pad, pad, pad))
    canvas.paste(content, ((size - nw) // 2, (size - nh) // 2))
    return (np.asarray(canvas, dtype=np.float32) / 255.0)[None]


def letterbox_java_top_left(img: np.ndarray, size: int) -> np.ndarray:
    """An Android-app letterbox: scale = min(...), (int) casts (floor), drawn at the top-left of a
    zeroed uint8 buffer; uint8 NHWC."""
    h, w = img.shape[:2]
    r = min(size / w, size / h)
    nw, nh = int(np.floor(w * r + 1e-6)), int(np.floor(h * r + 1e-6))
    import cv2  # OpenCV for Android's Imgproc.resize(INTER_AREA), as such an app would call it

    content = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.zeros((size, size, 3), np.uint8)
    out[:nh, :nw] = content
    return out[None]


def torchvision_resize_center_crop(img: np.ndarray, short: int, crop: int) -> np.ndarray:
    """torchvision Resize(short) + CenterCrop(crop) on a PIL image (its documented arithmetic), then
    ToTensor + Normalize(ImageNet); float NCHW."""
    h, w = img.shape[:2]
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    im = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float64)
    top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
    x = (im[top : top + crop, left : left + crop] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def rotated_mirrored_int8(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """A front-camera frame: turned 90 degrees clockwise, mirrored, stretched, int8 (pixel - 128)."""
    im = Image.fromarray(img).transpose(Image.Transpose.ROTATE_270)  # PIL turns counter-clockwise
    im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((width, height), Image.Resampling.BILINEAR)
    return (np.asarray(im).astype(np.int16) - 128).astype(np.int8)[None]


def crop_box_bgr(img: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """A region of interest cut out, stretched, BGR, (pixel - 127.5) / 127.5; float NHWC."""
    x0, y0, x1, y1 = box
    im = np.asarray(Image.fromarray(img[y0:y1, x0:x1]).resize((size, size), Image.Resampling.BILINEAR))
    return ((im[..., ::-1].astype(np.float32) - 127.5) / 127.5)[None]


# --------------------------------------------------------------------------------------------- tests


def test_letterbox_centre_grey_padding(photos):
    pairs = [(img, Captured(letterbox_yolo(img, 160, 114))) for img in photos]
    spec = infer_preprocess(pairs)
    r = spec.resize
    assert r.keep_aspect and r.placement == "center" and r.shorter_side is None
    np.testing.assert_allclose(r.pad_value, [114, 114, 114], atol=0.01)
    np.testing.assert_allclose(spec.scale, [1 / 255] * 3, rtol=1e-4)
    _check_reproduces(spec, pairs, integer=False)


def test_letterbox_top_left_java_rounding_uint8(photos):
    q = Quantization(scale=1 / 255, zero_point=0)
    pairs = [(img, Captured(letterbox_java_top_left(img, 128), q)) for img in photos]
    spec = infer_preprocess(pairs)
    r = spec.resize
    assert r.keep_aspect and r.placement == "top_left"
    np.testing.assert_allclose(r.pad_value, [0, 0, 0], atol=0.5)
    _check_reproduces(spec, pairs, integer=True)


def test_letterbox_java_math_round_half_up(photos):
    # 160 x (odd) photos into 80 x 80: the content height is k + 0.5 with k even, where Java's
    # Math.round (half up) and Python's round (half to even) disagree by one row; the offset is
    # Math.round too, so the odd row of padding goes above the content.
    crops = [p[:h, :160] for p, h in zip(photos, (101, 105, 109), strict=True)]

    def java_round_letterbox(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        r = min(80 / w, 80 / h)
        nw, nh = int(np.floor(w * r + 0.5)), int(np.floor(h * r + 0.5))
        content = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR), np.float32)
        out = np.full((80, 80, 3), -1.0, np.float32)  # the buffer was filled with -1 (pixel 0)
        top, left = int(np.floor((80 - nh) / 2 + 0.5)), int(np.floor((80 - nw) / 2 + 0.5))  # Math.round
        out[top : top + nh, left : left + nw] = content / 127.5 - 1.0
        return out[None]

    pairs = [(img, Captured(java_round_letterbox(img))) for img in crops]
    spec = infer_preprocess(pairs)
    assert spec.resize.keep_aspect and spec.resize.rounding == "half_up"
    assert spec.resize.placement == "center_up"  # 80 - 51 = 29 rows of padding: 15 above, 14 below
    np.testing.assert_allclose(spec.resize.pad_value, [0, 0, 0], atol=0.01)
    _check_reproduces(spec, pairs, integer=False)


def test_shorter_side_then_centre_crop_solves_s(photos):
    pairs = [(img, Captured(torchvision_resize_center_crop(img, 146, 128))) for img in photos]
    spec = infer_preprocess(pairs)
    assert spec.resize.shorter_side == 146 and spec.layout == "NCHW"
    np.testing.assert_allclose(spec.mean, IMAGENET_MEAN * 255, rtol=1e-3)
    np.testing.assert_allclose(spec.std, IMAGENET_STD * 255, rtol=1e-3)
    _check_reproduces(spec, pairs, integer=False)


def test_rotation_and_mirror(photos):
    q = Quantization(scale=1 / 128, zero_point=0)
    pairs = [(img, Captured(rotated_mirrored_int8(img, 96, 72), q)) for img in photos]
    spec = infer_preprocess(pairs)
    assert (spec.rotation, spec.mirror) == (90, True)
    _check_reproduces(spec, pairs, integer=True)


def test_crop_box_per_image_faces_in_photos(photos):
    boxes = [(60, 40, 160, 140), (20, 120, 140, 240), (40, 30, 130, 120)]
    pairs = [(img, Captured(crop_box_bgr(img, b, 48))) for img, b in zip(photos, boxes, strict=True)]
    spec = infer_preprocess(pairs)
    assert spec.resize.roi == "per_image" and spec.color_order == "BGR"
    assert any(str(b) in " ".join(spec.notes) for b in boxes)  # the boxes found are the ones cut
    crops = [(img[b[1] : b[3], b[0] : b[2]], c) for (img, c), b in zip(pairs, boxes, strict=True)]
    _check_reproduces(spec, crops, integer=False)


def test_fixed_crop_box_as_fractions(faces):
    # Every face photo is 200x200 here: one fixed box (a centre-left region) cut from each.
    box = (30, 40, 150, 160)
    pairs = [(img, Captured(crop_box_bgr(img, box, 56))) for img in faces]
    assert {img.shape for img in faces} == {(200, 200, 3)}
    spec = infer_preprocess(pairs)
    assert spec.resize.crop_box is not None
    np.testing.assert_allclose(spec.resize.crop_box, [b / 200 for b in box], atol=1e-9)
    _check_reproduces(spec, pairs, integer=False)


def test_pipeline_outside_the_search_is_unresolved(photos):
    # Gamma before normalising: no linear map of any resized image gives it.
    def gamma(img: np.ndarray) -> np.ndarray:
        im = np.asarray(Image.fromarray(img).resize((64, 64), Image.Resampling.BILINEAR), np.float32)
        return ((im / 255.0) ** 2.2)[None].astype(np.float32)

    pairs = [(img, Captured(gamma(img))) for img in photos]
    spec = infer_preprocess(pairs)
    assert spec.unresolved
    assert set(spec.provenance.values()) == {Provenance.TRACE_UNRESOLVED}
    assert spec.residual["max_error"] > spec.residual["tolerance"] > 0
    assert spec.alternatives and all("max_error" in a for a in spec.alternatives)
    assert any("UNRESOLVED" in n for n in spec.notes)


# ------------------------------------------------------------------------------- hand-written spec


def test_spec_file_with_mean_std_on_unit_scale(tmp_path):
    p = tmp_path / "spec.json"
    p.write_text(
        '{"resize": {"width": 224, "height": 224, "shorter_side": 256, "method": "bilinear_pil"},'
        ' "layout": "NCHW", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],'
        ' "pixel_range": "0-1"}'
    )
    spec = read_spec(p, PreprocessSpec)
    np.testing.assert_allclose(spec.mean, IMAGENET_MEAN * 255, rtol=1e-9)
    np.testing.assert_allclose(spec.std, IMAGENET_STD * 255, rtol=1e-9)
    assert spec.resize.shorter_side == 256


def test_spec_file_mean_std_in_pixel_units(tmp_path):
    p = tmp_path / "spec.json"
    p.write_text(
        '{"resize": {"width": 64, "height": 64}, "mean": 127.5, "std": 127.5, "pixel_range": "0-255"}'
    )
    spec = read_spec(p, PreprocessSpec)
    assert spec.scale == [1 / 127.5] and spec.offset == [-1.0]


@pytest.mark.parametrize(
    ("doc", "expect"),
    [
        (
            '{"resize": {"width": 8, "height": 8, "method": "bilinearr"}}',
            "resize.method: 'bilinearr' is not allowed; allowed: 'nearest'",
        ),
        (
            '{"resize": {"width": 8, "height": 8}, "rotation": 45}',
            "rotation: 45 is not allowed; allowed: 0, 90, 180 or 270",
        ),
        ('{"resize": {"width": 8, "height": 8}, "mean": 0.5, "std": 0.5}', 'pixel_range must be "0-255"'),
        (
            '{"resize": {"width": 8, "height": 8}, "mean": 0.5, "std": 0.5, "pixel_range": "0-1", "scale": [1]}',
            "either mean/std or scale/offset",
        ),
        ('{"resize": {"width": 8}}', "resize.height: required field missing"),
        (
            '{"resize": {"width": 8, "height": 8}, "version": 9}',
            "version 9 is newer than this replaybench reads",
        ),
        ('{"resize": {"width": 8, "height": 8}, "colour": "RGB"}', "colour: unknown field"),
    ],
)
def test_bad_spec_file_names_the_field_and_the_allowed_values(tmp_path, doc, expect):
    p = tmp_path / "spec.json"
    p.write_text(doc)
    with pytest.raises(UsageError) as e:
        read_spec(p, PreprocessSpec)
    assert expect in e.value.message
    assert "validation error" not in e.value.message and "pydantic" not in e.value.message
