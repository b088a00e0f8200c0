"""`extract --trace` end to end on the embedded sample app: scan, pull, match, infer, convert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from replaybench.cli import main
from replaybench.demo import sample_app
from replaybench.extract.pipeline import extract_app

SAMPLE = Path(sample_app.__file__).parent / "sample"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    out = tmp_path_factory.mktemp("extract")
    return out, extract_app([SAMPLE / "sample.apk"], out, trace=SAMPLE / "trace")


def test_memory_only_model_is_recovered_and_linked_to_the_obfuscated_asset(extracted):
    out, result = extracted
    dumped = [m for m in result.models if m.origin == "trace_dump"]
    assert len(dumped) == 1
    m = dumped[0]
    assert m.location == f"decrypted from assets/{sample_app.OBFUSCATED_ASSET}"
    assert m.ran_in_trace is True and m.status == "converted"
    # parity ran the recovered original blob itself, and extract.json says so
    assert m.parity_reference == "original" and m.parity_reference_reason is None
    doc = json.loads((out / "extract.json").read_text())
    assert {d["parity_reference"] for d in doc["models"] if d["status"] == "converted"} == {"original"}
    blob = (out / m.file).read_bytes()
    assert sample_app.xor_keystream(blob) == (out / "blobs" / "02_fa.bin").read_bytes()
    # the plain models in assets and in the .so were never loaded by the app
    plain = {m.location: m.ran_in_trace for m in result.models if m.origin == "app" and m.format == "tflite"}
    assert plain and not any(plain.values())
    assert result.trace is not None and result.trace["version"]["same_app"] is True


def test_preprocessing_recovered_from_the_trace_is_the_apps(extracted):
    out, result = extracted
    m = next(m for m in result.models if m.origin == "trace_dump")
    assert m.preprocess_from == "trace"
    bundle = json.loads((out / m.bundle / "bundle.json").read_text())
    pre, truth = bundle["preprocess"], sample_app.APP_PREPROCESS
    assert pre["resize"]["method"] == truth.resize.method
    assert (pre["resize"]["width"], pre["resize"]["height"]) == (64, 64)
    assert pre["color_order"] == "RGB" and pre["layout"] == "NHWC"
    assert pre["scale"] == pytest.approx([truth.scale[0]] * 3, rel=1e-5)
    assert pre["offset"] == pytest.approx([-1.0] * 3, abs=1e-5)
    assert set(pre["provenance"].values()) == {"trace"}
    assert bundle["parity"]["passed"] is True
    assert "trace" in bundle["parity"]["input_kinds"]  # parity also ran on the app's own traced inputs


def test_static_app_code_evidence_without_trace(extracted):
    out, result = extracted
    v1 = next(m for m in result.models if m.location.endswith("face_gender_v1.tflite"))
    assert v1.preprocess_from == "app_code" and v1.ran_in_trace is False
    pre = json.loads((out / v1.bundle / "bundle.json").read_text())["preprocess"]
    assert pre["resize"]["method"] == "bilinear_android"  # createScaledBitmap(.., 64, 64, true)
    assert pre["provenance"]["scale"] == "app_code"  # NormalizeOp(127.5f, 127.5f)
    assert pre["scale"][0] == pytest.approx(1 / 127.5)


def test_trace_from_another_version_is_reported(tmp_path):
    trace = tmp_path / "trace"
    shutil.copytree(SAMPLE / "trace", trace)
    lines = (trace / "trace.jsonl").read_text().splitlines()
    session = json.loads(lines[0])
    session["version_name"], session["version_code"] = "2.0", 2
    lines[0] = json.dumps(session)
    (trace / "trace.jsonl").write_text("\n".join(lines) + "\n")
    result = extract_app([SAMPLE / "sample.apk"], tmp_path / "out", trace=trace, convert=False)
    assert result.trace is not None and result.trace["version"]["same_app"] is False
    assert any("another app or version" in w for w in result.warnings)


def test_cli_extract_json(tmp_path, capsys):
    assert main(["extract", str(SAMPLE / "sample.apk"), "-o", str(tmp_path), "--no-convert", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {m["status"] for m in doc["models"]} == {"not_converted"}
    assert (tmp_path / "extract.json").is_file() and (tmp_path / "blobs" / "manifest.json").is_file()


def test_cli_extract_missing_trace_is_a_clear_error(tmp_path, capsys):
    rc = main(["extract", str(SAMPLE / "sample.apk"), "-o", str(tmp_path), "--trace", str(tmp_path / "nope")])
    assert rc == 3  # InputNotFoundError
    err = capsys.readouterr().err
    assert f"error: trace not found: {tmp_path / 'nope'}" in err
    assert "hint: record one with: replaybench trace --spawn APP -o TRACE_DIR" in err
    assert "Traceback" not in err


def test_extract_table_shows_what_parity_ran(extracted, capsys):
    from replaybench.extract.render import print_extract_result

    _, result = extracted
    print_extract_result(result)
    text = capsys.readouterr().out
    assert "parity vs" in text and "original" in text
