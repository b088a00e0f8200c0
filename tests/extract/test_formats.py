"""Format detectors one by one: magic first, then structure, then the name; wrong content is rejected."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from replaybench.extract.formats import DETECTORS, claimed_format, detect, detector
from replaybench.extract.scan import scan_app
from replaybench.extract.tflite import flatbuffer_extent, parse_tflite
from tests.fixtures.models import saved_model, tflite_models, torch_models


def _pb_field(num: int, payload: bytes) -> bytes:
    return bytes([num << 3 | 2, len(payload)]) + payload


def graphdef() -> bytes:
    """A frozen GraphDef with two NodeDefs (name=1, op=2), hand-encoded."""
    return _pb_field(1, _pb_field(1, b"input") + _pb_field(2, b"Placeholder")) + _pb_field(
        1, _pb_field(1, b"w") + _pb_field(2, b"Const")
    )


@pytest.mark.parametrize(
    "name,head,fmt",
    [
        ("m.param", b"7767517\n3 3\nInput input 0 1 data\n", "ncnn_param"),
        ("m.param.bin", struct.pack("<i", 7767517) + bytes(12), "ncnn_param"),
        (
            "deploy.prototxt",
            b'name: "n"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n',
            "caffe_prototxt",
        ),
        ("m.nb", struct.pack("<H", 1) + b"v2.10\0\0\0\0\0\0\0\0\0\0\0" + bytes(16), "paddle_lite"),
        ("frozen.pb", graphdef(), "tf_graphdef"),
        ("m.mlmodel", b"\x08\x04\x12\x05hello", "coreml"),
        ("net.caffemodel", _pb_field(1, b"net") + _pb_field(2, b"x"), "caffemodel"),
    ],
)
def test_detect_by_content(name: str, head: bytes, fmt: str) -> None:
    det = detect(head, name, len(head))
    assert det is not None and det.format == fmt and det.evidence


def test_content_wins_over_name() -> None:
    tfl = tflite_models()["float"].read_bytes()
    assert detect(tfl[:65536], "weights.onnx", len(tfl)).format == "tflite"  # type: ignore[union-attr]
    assert detect(b"hello world, not a model", "model.tflite", 24) is None
    assert claimed_format("a/b/Model.TFLITE") == "tflite" and claimed_format("x.bin") is None


def test_registry_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown blob format"):
        detector("pickle_of_doom")
    assert set(DETECTORS) >= {"tflite", "onnx", "torchscript", "mnn", "ncnn_param", "snpe_dlc", "coreml"}


def test_tflite_extent_is_exact_for_every_quantisation() -> None:
    for path in tflite_models().values():
        data = path.read_bytes()
        assert flatbuffer_extent(data + b"\xaa" * 100) == len(data)


def test_tflite_structure() -> None:
    info = parse_tflite(tflite_models()["uint8"].read_bytes())
    assert info["quantization"] == "full_uint8"
    assert info["inputs"][0]["dtype"] == "uint8" and info["inputs"][0]["quantization"]["scale"]
    assert info["outputs"][0]["shape"] == [1, 2]


def test_corrupt_tflite_is_rejected_not_trusted(tmp_path: Path) -> None:
    data = bytearray(tflite_models()["float"].read_bytes())
    data[0:4] = struct.pack("<I", 0xFFFF)  # root table offset now points into nowhere sensible
    (tmp_path / "bad.tflite").write_bytes(bytes(data))
    inv = scan_app([tmp_path], code=False)
    assert inv.model_blobs == []
    [rej] = inv.rejected_candidates
    assert rej.claimed_format == "tflite" and "structure is invalid" in rej.reason


def test_torchscript_vs_lite(tmp_path: Path) -> None:
    pt, ptl = torch_models()
    inv = scan_app([pt.parent], code=False)
    fmts = {Path(b.location.entry).name: b.format for b in inv.model_blobs}
    assert fmts[pt.name] == "torchscript" and fmts[ptl.name] == "pytorch_lite"
    from replaybench.extract.blobs import extract_blobs

    manifest = extract_blobs(inv, tmp_path / "out")
    files = {i.blob.format: (tmp_path / "out" / i.file) for i in manifest.blobs}
    assert files["pytorch_lite"].read_bytes() == ptl.read_bytes() and files["pytorch_lite"].suffix == ".ptl"
    assert files["torchscript"].read_bytes() == pt.read_bytes()


def test_zip_named_pt_without_torch_layout_is_rejected(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/readme.txt", "hi")
    (tmp_path / "m.pt").write_bytes(buf.getvalue())
    inv = scan_app([tmp_path], code=False)
    assert inv.model_blobs == [] and inv.rejected_candidates[0].claimed_format == "torchscript"


def test_savedmodel_and_snpe(tmp_path: Path) -> None:
    inv = scan_app([saved_model()], code=False)
    assert [b.format for b in inv.model_blobs] == ["savedmodel"]
    dlc = io.BytesIO()
    with zipfile.ZipFile(dlc, "w") as z:
        z.writestr("model", b"\x00" * 64)
        z.writestr("model.params", b"\x01" * 64)
    (tmp_path / "net.dlc").write_bytes(dlc.getvalue())
    [blob] = scan_app([tmp_path], code=False).model_blobs
    assert blob.format == "snpe_dlc"


def test_mutated_models_never_crash_the_scan(tmp_path: Path) -> None:
    """Hostile bytes: flipped bytes and truncations of real formats end as verdicts, never exceptions."""
    import random

    from tests.extract.conftest import tiny_onnx

    sources = {
        "a.tflite": tflite_models()["uint8"].read_bytes(),
        "b.onnx": tiny_onnx(),
        "d.ptl": torch_models()[1].read_bytes(),
    }
    rnd = random.Random(1)
    for i in range(60):
        name, data = rnd.choice(sorted(sources.items()))
        d = bytearray(data)
        for _ in range(rnd.randint(1, 20)):
            d[rnd.randrange(min(len(d), 4096))] = rnd.randrange(256)
        if i % 3 == 0:
            d = d[: rnd.randrange(1, len(d))]
        (tmp_path / f"{i}_{name}").write_bytes(bytes(d))
    inv = scan_app([tmp_path], code=False)
    seen = {b.location.entry for b in inv.model_blobs} | {r.location.entry for r in inv.rejected_candidates}
    # every file got a verdict (model or rejected) except the few whose damage hides the model entirely
    assert len(seen) + len(inv.warnings) >= 50
    for b in inv.model_blobs:
        claimed = claimed_format(b.location.entry)
        assert b.format == claimed or (claimed == "torchscript" and b.format == "pytorch_lite")
