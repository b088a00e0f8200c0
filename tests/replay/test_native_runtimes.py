"""Replay in the app's own engines (issue 16): real UltraFace NCNN / MNN and a TFLite model with a custom
op, replayed through the same runner, must give per item exactly what the engine gives when the test
calls it directly on the same input. The input is made here with Pillow, not with replaybench's kernels.
"""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from replaybench.cli import main
from replaybench.errors import CorruptInputError, UnsupportedFormatError
from replaybench.extract.convert import convert_model
from replaybench.replay.runner import ReplayOptions, replay

ULTRA = "ultraface_rfb320_multiformat_linzaer"
NCNN_PARAM = f"{ULTRA}/ncnn/data/version-RFB/RFB-320.param"
MNN_FP32 = f"{ULTRA}/MNN/model/version-RFB/RFB-320.mnn"
SSD = "quant_ssd_detect_aamba/detect.tflite"
N_FACES = 12

# UltraFace's own preprocessing (its repo): RGB, (pixel - 127) / 128, 320x240. Pillow's bilinear so the
# test can make the same tensor with Pillow itself.
FACE_SPEC = {
    "resize": {"width": 320, "height": 240, "method": "bilinear_pil"},
    "color_order": "RGB",
    "layout": "NCHW",
    "dtype": "float32",
    "scale": [1 / 128] * 3,
    "offset": [-127 / 128] * 3,
}
SSD_SPEC = {
    "resize": {"width": 300, "height": 300, "method": "bilinear_pil"},
    "color_order": "RGB",
    "layout": "NHWC",
    "dtype": "uint8",
    "scale": [1.0] * 3,
    "offset": [0.0] * 3,
}


def _need(realdata: Path, *rels: str) -> None:
    for rel in rels:
        if not (realdata / rel).exists():
            pytest.skip(f"{rel} not in this copy of realdata")


def _manifest(folder: Path, images: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path"])
        for p in images:
            w.writerow([str(p)])
    return folder / "manifest.csv"


def _pillow_input(path: Path, spec: dict) -> np.ndarray:
    r = spec["resize"]
    rgb = np.asarray(Image.open(path).convert("RGB").resize((r["width"], r["height"]), Image.BILINEAR))
    if spec["dtype"] == "uint8":
        return rgb[None]
    x = rgb.astype(np.float32) * np.float32(spec["scale"][0]) + np.float32(spec["offset"][0])
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _replayed(bundle: Path, manifest: Path, out: Path) -> pl.DataFrame:
    result = replay([bundle], manifest, out, ReplayOptions(format="manifest"))
    assert result.items_ok == result.items_processed > 0
    return pl.read_parquet(sorted(out.glob("*.parquet"))).sort("source_path")


@pytest.fixture(scope="module")
def faces(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    _need(realdata, "utkface_300")
    images = sorted((realdata / "utkface_300" / "images").glob("*.jpg"))[:N_FACES]
    assert len(images) == N_FACES
    return images, _manifest(tmp_path_factory.mktemp("faces"), images)


def _spec_file(tmp: Path, spec: dict) -> Path:
    p = tmp / "spec.json"
    p.write_text(json.dumps(spec))
    return p


def test_ultraface_ncnn_replays_as_ncnn_computes(realdata, faces, tmp_path):
    import ncnn

    from replaybench.bundle import PreprocessSpec, read_spec

    _need(realdata, NCNN_PARAM)
    images, manifest = faces
    param = realdata / NCNN_PARAM
    spec = read_spec(_spec_file(tmp_path, FACE_SPEC), PreprocessSpec)
    bundle = convert_model(param, tmp_path / "b", preprocess=spec)
    assert bundle.runtime.name == "ncnn" and bundle.runtime.files == ["source.param", "source.bin"]
    assert (tmp_path / "b" / "source.bin").read_bytes() == param.with_suffix(".bin").read_bytes()
    assert not (tmp_path / "b" / "model.onnx").exists()
    rows = _replayed(tmp_path / "b", manifest, tmp_path / "preds")

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
    for img, row in zip(images, rows.iter_rows(named=True), strict=True):
        assert row["source_path"].endswith(img.name) and row["status"] == "ok"
        ex = net.create_extractor()
        x = _pillow_input(img, FACE_SPEC)[0]  # ncnn.Mat does not keep its array alive: this name does
        ex.input("input", ncnn.Mat(x))
        for name in ("scores", "boxes"):
            want = np.array(ex.extract(name)[1]).ravel()
            np.testing.assert_allclose(np.asarray(row[f"raw__{name}"]), want, rtol=0, atol=1e-5)


def test_ultraface_mnn_replays_as_mnn_computes(realdata, faces, tmp_path):
    import MNN

    _need(realdata, MNN_FP32)
    images, manifest = faces
    model = realdata / MNN_FP32
    assert (
        main(
            [
                "convert",
                str(model),
                "-o",
                str(tmp_path / "b"),
                "--preprocess",
                str(_spec_file(tmp_path, FACE_SPEC)),
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert doc["runtime"]["name"] == "mnn" and "no converter from mnn" in doc["runtime"]["reason"]
    rows = _replayed(tmp_path / "b", manifest, tmp_path / "preds")

    interp = MNN.Interpreter(str(model))
    session = interp.createSession({"numThread": 1})
    caffe = MNN.Tensor_DimensionType_Caffe
    for img, row in zip(images, rows.iter_rows(named=True), strict=True):
        x = _pillow_input(img, FACE_SPEC)
        interp.getSessionInput(session).copyFrom(MNN.Tensor(x.shape, MNN.Halide_Type_Float, x, caffe))
        assert interp.runSession(session) == 0
        for name in ("scores", "boxes"):
            out = interp.getSessionOutput(session, name)
            host = MNN.Tensor(
                out.getShape(), MNN.Halide_Type_Float, np.zeros(out.getShape(), np.float32), caffe
            )
            out.copyToHostTensor(host)
            want = np.array(host.getNumpyData()).ravel()
            np.testing.assert_allclose(np.asarray(row[f"raw__{name}"]), want, rtol=0, atol=1e-5)


def test_tflite_with_a_custom_op_replays_whole_in_litert(realdata, tmp_path):
    """detect.tflite ends in TFLite_Detection_PostProcess: ONNX would be cut before it; the bundle runs the
    whole model in ai-edge-litert instead, so replay gives the app's own boxes, classes and scores."""
    from ai_edge_litert.interpreter import Interpreter

    from replaybench.bundle import PreprocessSpec, read_spec

    _need(realdata, SSD, "coco_mini_captions_159")
    images = sorted((realdata / "coco_mini_captions_159").rglob("*.jpg"))[:4]
    assert images
    spec = read_spec(_spec_file(tmp_path, SSD_SPEC), PreprocessSpec)
    bundle = convert_model(realdata / SSD, tmp_path / "b", preprocess=spec, n_random=1)
    assert bundle.runtime.name == "tflite" and "TFLite_Detection_PostProcess" in (bundle.runtime.reason or "")
    rows = _replayed(tmp_path / "b", _manifest(tmp_path / "ds", images), tmp_path / "preds")

    interp = Interpreter(model_path=str(realdata / SSD))
    interp.allocate_tensors()
    outs = interp.get_output_details()
    assert len(outs) == 4  # boxes, classes, scores, count: the post-processing op's outputs
    for img, row in zip(images, rows.iter_rows(named=True), strict=True):
        interp.set_tensor(interp.get_input_details()[0]["index"], _pillow_input(img, SSD_SPEC))
        interp.invoke()
        for d in outs:
            want = interp.get_tensor(d["index"]).ravel()
            np.testing.assert_array_equal(np.asarray(row[f"raw__{d['name']}"], dtype=want.dtype), want)


def test_ncnn_param_without_its_bin_is_refused_naming_the_file(realdata, tmp_path):
    _need(realdata, NCNN_PARAM)
    param = shutil.copy(realdata / NCNN_PARAM, tmp_path / "face.param")
    with pytest.raises(CorruptInputError, match=r"face\.bin not found"):
        convert_model(Path(param), tmp_path / "out", input_shape=[1, 3, 240, 320])
    assert not (tmp_path / "out").exists()


def test_truncated_ncnn_bin_is_refused_and_nothing_is_written(realdata, tmp_path):
    _need(realdata, NCNN_PARAM)
    param = Path(shutil.copy(realdata / NCNN_PARAM, tmp_path / "face.param"))
    weights = (realdata / NCNN_PARAM).with_suffix(".bin").read_bytes()
    (tmp_path / "face.bin").write_bytes(weights[: len(weights) // 2])
    code = main(["convert", str(param), "-o", str(tmp_path / "out"), "--input-shape", "1,3,240,320"])
    assert code == CorruptInputError.exit_code
    assert not (tmp_path / "out").exists()


def test_mnn_file_the_engine_cannot_run_is_refused_and_nothing_is_written(realdata, tmp_path):
    rel = f"{ULTRA}/MNN/model/version-RFB/RFB-320-quant-KL-5792.mnn"  # EltwiseInt8: gone from MNN 3
    _need(realdata, rel)
    with pytest.raises(CorruptInputError, match="cannot run RFB-320-quant-KL-5792.mnn"):
        convert_model(realdata / rel, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _task_zip(path: Path, models: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in models.items():
            z.writestr(name, data)
    return path


def test_mediapipe_task_lists_its_models_in_scan_and_convert(realdata, tmp_path):
    from replaybench.extract.scan import scan_app
    from tests.fixtures.apk import build_apk

    rel = "mediapipe_0.10.14_face_tflite"
    _need(realdata, rel)
    det = (realdata / rel / "face_detection_short_range.tflite").read_bytes()
    mesh = (realdata / rel / "face_landmark.tflite").read_bytes()
    task = _task_zip(
        tmp_path / "face_landmarker.task",
        {"face_detector.tflite": det, "face_landmarks_detector.tflite": mesh},
    )
    with pytest.raises(UnsupportedFormatError, match="face_detector.tflite, face_landmarks_detector.tflite"):
        convert_model(task, tmp_path / "out")

    apk = build_apk(tmp_path / "app.apk", assets={"face_landmarker.task": task})
    inv = scan_app([apk], code=False)
    inside = {
        b.location.entry: b
        for b in inv.model_blobs
        if b.location.container[-1] == "assets/face_landmarker.task"
    }
    assert set(inside) == {"face_detector.tflite", "face_landmarks_detector.tflite"}
    assert all(b.format == "tflite" for b in inside.values())


def test_ptl_replays_in_torchs_lite_interpreter(tmp_path):
    """A bytecode-only .ptl (no TorchScript code to export) replayed as the lite interpreter runs it."""
    import torch
    from torch.jit.mobile import _load_for_lite_interpreter

    from tests.fixtures.models import torch_models

    _, ptl = torch_models()
    lite_only = tmp_path / "lite.ptl"
    with zipfile.ZipFile(ptl) as src, zipfile.ZipFile(lite_only, "w") as dst:
        for info in src.infolist():
            if "/code/" not in info.filename and not info.filename.endswith("constants.pkl"):
                dst.writestr(info, src.read(info))
    spec = {**FACE_SPEC, "resize": {"width": 32, "height": 32, "method": "bilinear_pil"}}
    assert (
        main(
            [
                "convert",
                str(lite_only),
                "-o",
                str(tmp_path / "b"),
                "--preprocess",
                str(_spec_file(tmp_path, spec)),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["runtime"]["name"] == "pytorch_lite"
    rng = np.random.default_rng(3)
    images = []
    for i in range(5):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(p)
        images.append(p)
    rows = _replayed(tmp_path / "b", _manifest(tmp_path / "ds", images), tmp_path / "preds")
    module = _load_for_lite_interpreter(str(lite_only))
    for img, row in zip(images, rows.iter_rows(named=True), strict=True):
        want = module(torch.from_numpy(_pillow_input(img, spec))).detach().numpy().ravel()
        np.testing.assert_allclose(np.asarray(row["raw__output"]), want, rtol=0, atol=1e-6)
