"""Real third-party models and APKs (../shared/realdata), driven by the shared expectations manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from replaybench.extract.blobs import extract_blobs
from replaybench.extract.inventory import Inventory, ModelBlob
from replaybench.extract.scan import scan_app
from tests.fixtures.apk import build_apk
from tests.fixtures.elf import build_so
from tests.fixtures.realdata_models import NEGATIVE_APKS, REAL_MODELS

FOLDERS = sorted({m.path.split("/", 1)[0] for m in REAL_MODELS})


@pytest.fixture(scope="module")
def real_blobs(realdata: Path) -> dict[str, ModelBlob]:
    """One scan per real-data folder; blobs by path relative to the realdata root."""
    out: dict[str, ModelBlob] = {}
    for folder in FOLDERS:
        inv = scan_app([realdata / folder], code=False)
        for b in inv.model_blobs:
            out[f"{folder}/{b.location.entry}"] = b
    return out


@pytest.mark.parametrize("model", REAL_MODELS, ids=lambda m: m.path.rsplit("/", 1)[-1])
def test_real_model_format(real_blobs: dict[str, ModelBlob], model) -> None:
    blob = real_blobs.get(model.path)
    assert blob is not None, f"{model.path} not found by the scan"
    assert blob.format == model.format, blob.evidence
    facts = model.facts
    d = blob.details
    if "quantization" in facts:
        assert d["quantization"] == facts["quantization"]
    if "labels" in facts:
        assert len(d["labels"]) == facts["labels"]
    if "mean" in facts:
        [inp] = [i for i in d["metadata"]["inputs"] if "normalization" in i]
        assert inp["normalization"] == {"mean": facts["mean"], "std": facts["std"]}
    if "input_shape" in facts:
        assert d["inputs"][0]["shape"] == facts["input_shape"]
    if "custom_op" in facts:
        assert facts["custom_op"] in d["ops"]
    if "producer" in facts:
        assert d["producer"].startswith(facts["producer"])


def test_every_real_model_file_is_in_the_manifest(realdata: Path, real_blobs: dict[str, ModelBlob]) -> None:
    # No extra blobs: the scan reports exactly the manifest's files, nothing else (labels, licences...).
    assert sorted(real_blobs) == sorted(m.path for m in REAL_MODELS)


def test_age_classifier_labels_from_metadata(real_blobs: dict[str, ModelBlob]) -> None:
    d = real_blobs["age_classifier_quant_radualexandrub/AndroidAge_quant.tflite"].details
    assert d["labels"][:3] == ["04-06", "07-08", "09-11"]
    assert d["inputs"][0]["dtype"] == "uint8"
    assert any(f["type"] == "TENSOR_AXIS_LABELS" for f in d["metadata"]["associated_files"])


@pytest.mark.parametrize("apk", NEGATIVE_APKS, ids=lambda p: p.rsplit("/", 1)[-1])
def test_negative_control_apks_have_no_on_device_ml(realdata: Path, apk: str) -> None:
    inv: Inventory = scan_app([realdata / apk])
    assert inv.model_blobs == []
    assert inv.runtimes == []
    assert not any(lib.likely_inference_engine for lib in inv.native_libraries)
    assert inv.app.package is not None


def test_real_model_with_metadata_zip_embedded_in_so(realdata: Path, tmp_path: Path) -> None:
    """A MediaPipe model (metadata + appended zip) inside a .so comes out byte-exact."""
    original = (realdata / "mediapipe_0.10.14_face_tflite/face_detection_short_range.tflite").read_bytes()
    so = build_so(
        tmp_path / "libface.so", arch="aarch64", blob=original, symbols=["_ZN9mediapipe13CalculatorGraphC1Ev"]
    )
    apk = build_apk(tmp_path / "face.apk", native_libs={"arm64-v8a/libface.so": so})
    inv = scan_app([apk], code=False)
    [blob] = inv.model_blobs
    assert blob.size == len(original) and blob.location.section == ".rodata"
    assert inv.runtimes == ["mediapipe"]
    manifest = extract_blobs(inv, tmp_path / "out")
    assert (tmp_path / "out" / manifest.blobs[0].file).read_bytes() == original
