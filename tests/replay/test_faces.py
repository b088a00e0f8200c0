"""The face stage: SSD anchors, BlazeFace/UltraFace decoding, NMS, crops, and real detectors on UTKFace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest

from replaybench.bundle import PreprocessSpec, ResizeSpec
from replaybench.errors import UsageError
from replaybench.replay.decode import decode_image
from replaybench.replay.faces import (
    BLAZEFACE_SHORT_RANGE,
    FaceDetector,
    crop_face,
    decode_blazeface,
    decode_ultraface,
    nms,
    ssd_anchors,
    weighted_nms,
)
from replaybench.replay.preprocess import apply_preprocess
from replaybench.replay.runner import ReplayOptions, replay
from tests.fixtures.cache import cached_build
from tests.replay.helpers import tflite_to_onnx, tiny_bundle, write_bundle

ULTRAFACE = "ultraface_rfb320_multiformat_linzaer/models/onnx/version-RFB-320.onnx"
BLAZEFACE = "mediapipe_0.10.14_face_tflite/face_detection_short_range.tflite"


def test_blazeface_short_range_anchors_follow_mediapipe():
    a = ssd_anchors(BLAZEFACE_SHORT_RANGE)
    assert a.shape == (896, 4)
    # stride 8: 16x16 cells x 2 anchors, then stride 16 (three layers merged): 8x8 cells x 6 anchors
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(a[1], a[0])
    np.testing.assert_allclose(a[2], [1.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(a[512], [0.5 / 8, 0.5 / 8, 1, 1])
    np.testing.assert_allclose(a[512:518, :2], np.tile([[0.5 / 8, 0.5 / 8]], (6, 1)))
    np.testing.assert_allclose(a[-1], [7.5 / 8, 7.5 / 8, 1, 1])


def test_blazeface_decode_synthetic_outputs():
    reg = np.zeros((1, 896, 16), np.float32)
    cls = np.full((1, 896, 1), -10.0, np.float32)
    k = 512 + 6 * (8 * 3 + 4)  # stride-16 cell (x=4, y=3): anchor centre (4.5/8, 3.5/8)
    reg[0, k, :4] = [6.4, -3.2, 32.0, 48.0]  # dx, dy, w, h in 128-pixel units
    cls[0, k, 0] = 3.0
    reg[0, k + 1, :4] = [7.0, -3.0, 30.0, 46.0]  # a near-duplicate: merged into the first by NMS
    cls[0, k + 1, 0] = 2.0
    reg[0, 10, :4] = [0, 0, 10, 10]  # a separate weak face below the 0.5 threshold
    cls[0, 10, 0] = -0.5

    def corners(dx, dy, w, h):
        cx, cy = 4.5 / 8 + dx / 128, 3.5 / 8 + dy / 128
        return np.array([cx - w / 256, cy - h / 256, cx + w / 256, cy + h / 256])

    best, dup = corners(6.4, -3.2, 32.0, 48.0), corners(7.0, -3.0, 30.0, 46.0)
    s_best, s_dup = 1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(-2.0))
    (face,) = decode_blazeface(reg, cls, {})  # MediaPipe's weighted NMS: the score-weighted mean box
    np.testing.assert_allclose(face.box, (s_best * best + s_dup * dup) / (s_best + s_dup), atol=1e-6)
    assert face.score == pytest.approx(s_best)  # the best box's score
    (hard,) = decode_blazeface(reg, cls, {"nms": "hard"})  # the best box of the cluster alone
    np.testing.assert_allclose(hard.box, best, atol=1e-6)
    assert len(decode_blazeface(reg, cls, {"score_threshold": 0.3})) == 2
    with pytest.raises(UsageError, match="nms"):
        decode_blazeface(reg, cls, {"nms": "soft"})


def test_ultraface_decode_and_nms():
    scores = np.array([[[0.1, 0.9], [0.2, 0.8], [0.5, 0.5], [0.05, 0.95]]], np.float32)
    boxes = np.array([[[0.1, 0.1, 0.4, 0.4], [0.12, 0.1, 0.41, 0.42], [0, 0, 1, 1], [0.6, 0.6, 0.9, 1.2]]])
    faces = decode_ultraface(scores, boxes, {})
    assert [f.score for f in faces] == pytest.approx([0.95, 0.9])
    np.testing.assert_allclose(faces[0].box, [0.6, 0.6, 0.9, 1.0])  # clipped to the image
    assert nms(np.array([[0, 0, 1, 1], [0, 0, 1, 1.0]]), np.array([0.5, 0.6]), 0.3) == [1]


def test_weighted_nms_clusters_like_mediapipe():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.8], [0.9, 0.9, 1, 1], [0.1, 0, 1, 1.0]])
    scores = np.array([0.9, 0.6, 0.8, 0.3])
    (b1, s1), (b2, s2) = weighted_nms(boxes, scores, 0.3)
    assert (s1, s2) == (0.9, 0.8)  # best first; the small box (IoU 0.01 with the first) is its own cluster
    np.testing.assert_allclose(b1, (0.9 * boxes[0] + 0.6 * boxes[1] + 0.3 * boxes[3]) / 1.8)
    np.testing.assert_allclose(b2, boxes[2])


def test_crop_face_margin_and_clipping():
    img = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    c = crop_face(img, (0.25, 0.2, 0.5, 0.6), 0.1)  # box 50x40 px at (50, 20); margin 5 / 4 px
    assert c.shape == (48, 60, 3)
    np.testing.assert_array_equal(c, img[16:64, 45:105])
    assert crop_face(img, (0.0, 0.0, 0.5, 0.5), 0.5).shape == (75, 150, 3)


def test_one_face_needs_faces(tmp_path):
    with pytest.raises(UsageError, match="--faces"):
        replay([tiny_bundle(tmp_path / "b")], tmp_path, tmp_path / "p", ReplayOptions(one_face=True))


@pytest.fixture(scope="module")
def ultraface_bundle(realdata, tmp_path_factory) -> Path:
    src = realdata / ULTRAFACE
    if not src.is_file():
        pytest.skip(f"{ULTRAFACE} not in the real data")
    # PROVENANCE: RGB, (pixel - 127) / 128, NCHW 320x240; outputs scores [1,N,2], boxes [1,N,4] (corners, 0..1)
    spec = PreprocessSpec(
        resize=ResizeSpec(width=320, height=240, method="bilinear_tf"),
        layout="NCHW",
        scale=[1 / 128.0],
        offset=[-127 / 128.0],
    )
    folder = tmp_path_factory.mktemp("det") / "ultraface"
    return write_bundle(
        folder, src.read_bytes(), "ultraface", spec, [], task="detection", detection={"kind": "ultraface"}
    )


@pytest.fixture(scope="module")
def blazeface_bundle(realdata, tmp_path_factory) -> Path:
    src = realdata / BLAZEFACE
    if not src.is_file():
        pytest.skip(f"{BLAZEFACE} not in the real data")
    onnx_dir = cached_build("tf2onnx-blazeface-short", tflite_to_onnx, tflite=str(src))
    spec = PreprocessSpec(  # MediaPipe: RGB in [-1, 1]
        resize=ResizeSpec(width=128, height=128, method="bilinear_tf"), scale=[1 / 127.5], offset=[-1.0]
    )
    folder = tmp_path_factory.mktemp("det") / "blazeface"
    return write_bundle(
        folder,
        (onnx_dir / "model.onnx").read_bytes(),
        "blazeface",
        spec,
        [],
        task="detection",
        detection={"kind": "blazeface"},
    )


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_real_detectors_agree_on_utkface_faces(realdata, ultraface_bundle, blazeface_bundle):
    paths = sorted((realdata / "utkface_300" / "images").glob("*.jpg"))[::10]
    assert len(paths) == 30, "utkface_300/images should hold 300 JPEGs"
    uf, bf = FaceDetector(ultraface_bundle), FaceDetector(blazeface_bundle)
    assert (uf.kind, bf.kind) == ("ultraface", "blazeface")
    both = 0
    for p in paths:
        img = decode_image(p)
        a, b = uf.detect(img), bf.detect(img)
        if len(a) == 1 and len(b) == 1:  # two independent detectors, one face each: the same face
            both += 1
            assert _iou(a[0].box, b[0].box) > 0.4, p.name
    assert both >= len(paths) * 3 // 4  # tight face crops: nearly all have one face for both detectors


def test_replay_with_faces_crops_before_the_model(realdata, ultraface_bundle, tmp_path):
    b = tiny_bundle(tmp_path / "b", size=32)
    res = replay(
        [b],
        realdata / "utkface_300",
        tmp_path / "p",
        ReplayOptions(workers=1, limit=40, faces=ultraface_bundle, one_face=True, face_margin=0.1),
    )
    df = pl.read_parquet(tmp_path / "p" / "*.parquet")
    assert df.height == 40 and df["face_count"].null_count() == 0
    # one face -> ok, any other count -> skipped, row by row (no error rows)
    expected = ["ok" if n == 1 else "skipped" for n in df["face_count"]]
    assert df["status"].to_list() == expected
    ok = df.filter(pl.col("status") == "ok")
    assert ok.height == res.items_ok > 10
    lb_spec = PreprocessSpec(resize=ResizeSpec(width=32, height=32))
    sess = ort.InferenceSession(str(b / "model.onnx"), providers=["CPUExecutionProvider"])
    for row in ok.head(5).iter_rows(named=True):
        img = crop_face(decode_image(Path(row["source_path"])), tuple(row["face_box"]), 0.1)
        ref = sess.run(["probs"], {"image": apply_preprocess(img, lb_spec)[None]})[0][0]
        np.testing.assert_allclose(row["raw__probs"], ref, rtol=1e-4, atol=1e-5)
