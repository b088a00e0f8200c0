"""`extract APP --trace T` on an app with a letterboxed detector, a centre-cropped classifier and a
resize+crop model (tests/fixtures/pipelines_app.py): all three solved exactly; a trace no searched
pipeline explains is written marked unresolved, extract exits 15 and replay refuses the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replaybench.cli import main
from replaybench.errors import UnresolvedPreprocessError
from replaybench.extract.pipeline import extract_app
from tests.fixtures import pipelines_app
from tests.replay.helpers import utk_images


@pytest.fixture(scope="module")
def photos(realdata: Path) -> list[np.ndarray]:
    folder = realdata / "coco_mini_captions_159" / "val2017"
    paths = sorted(folder.glob("*.jpg"))[:4]
    if len(paths) < 4:
        pytest.skip(f"fewer than 4 COCO photos in {folder}")
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        im.thumbnail((120, 120))
        out.append(np.asarray(im))
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    return pipelines_app.build_app(tmp_path_factory.mktemp("app") / "pipelines.apk")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, app, photos):
    tmp = tmp_path_factory.mktemp("extract")
    trace = pipelines_app.write_trace(tmp / "trace", photos)
    out = tmp / "out"
    return out, extract_app([app], out, trace=trace, code=False)


def _by_name(result, name: str):
    return next(m for m in result.models if m.location.endswith(name))


def _preprocess(out: Path, model) -> dict:
    return json.loads((out / model.bundle / "bundle.json").read_text())["preprocess"]


def test_all_three_pipelines_solved(extracted, photos):
    out, result = extracted
    for name in pipelines_app.MODELS:
        m = _by_name(result, name)
        assert m.ran_in_trace and m.preprocess_from == "trace", (name, m)
        assert m.preprocess_residual["max_error"] <= m.preprocess_residual["tolerance"]
        pre = _preprocess(out, m)
        assert set(pre["provenance"].values()) == {"trace"}
    det = _preprocess(out, _by_name(result, "detector.tflite"))["resize"]
    assert det["keep_aspect"] and det["placement"] == "center"
    np.testing.assert_allclose(det["pad_value"], [114] * 3, atol=0.05)
    cls = _preprocess(out, _by_name(result, "classifier.tflite"))["resize"]
    assert cls["crop"] == "center" or cls["shorter_side"] == pipelines_app.SIZE  # the same pixels
    crop = _preprocess(out, _by_name(result, "cropper.tflite"))["resize"]
    assert crop["shorter_side"] == 40
    doc = json.loads((out / "extract.json").read_text())
    assert all(m["preprocess_candidates"] for m in doc["models"] if m["preprocess_from"] == "trace")


@pytest.fixture(scope="module")
def unresolved(tmp_path_factory, app, photos):
    tmp = tmp_path_factory.mktemp("unresolved")
    trace = pipelines_app.write_trace(tmp / "trace", photos, broken=True)
    out = tmp / "out"
    code = main(["extract", str(app), "--trace", str(trace), "-o", str(out), "--no-code", "--json"])
    return tmp, app, trace, out, code


def test_unresolved_exits_15_after_writing_everything(unresolved, capsys):
    _, _, _, out, code = unresolved
    assert code == UnresolvedPreprocessError.exit_code == 15
    doc = json.loads((out / "extract.json").read_text())
    cls = next(m for m in doc["models"] if m["location"].endswith("classifier.tflite"))
    assert cls["preprocess_from"] == "trace_unresolved"
    assert cls["preprocess_residual"]["max_error"] > cls["preprocess_residual"]["tolerance"]
    assert len(cls["preprocess_candidates"]) >= 2 and cls["preprocess_candidates"][0]["best"]
    pre = json.loads((out / cls["bundle"] / "bundle.json").read_text())["preprocess"]
    assert set(pre["provenance"].values()) == {"trace_unresolved"}
    others = [m for m in doc["models"] if m["location"].endswith(("detector.tflite", "cropper.tflite"))]
    assert [m["preprocess_from"] for m in others] == ["trace", "trace"]


def test_unresolved_message_says_what_to_do(tmp_path, unresolved, capsys):
    _, app, trace, _, _ = unresolved
    capsys.readouterr()
    assert main(["extract", str(app), "--trace", str(trace), "-o", str(tmp_path / "o"), "--no-code"]) == 15
    err = capsys.readouterr().err
    assert "classifier.tflite" in err and "tolerance" in err
    assert "record more invokes" in err and "--preprocess 00_classifier.tflite=SPEC.json" in err
    assert "--accept-unresolved" in err


def test_accept_unresolved_and_preprocess_override(tmp_path, unresolved):
    _, app, trace, _, _ = unresolved
    assert (
        main(
            [
                "extract",
                str(app),
                "--trace",
                str(trace),
                "-o",
                str(tmp_path / "a"),
                "--no-code",
                "--no-convert",
                "--accept-unresolved",
            ]
        )
        == 0
    )
    spec = tmp_path / "spec.json"
    spec.write_text(
        '{"resize": {"width": 32, "height": 32, "crop": "center", "method": "bilinear_pil"}, "dtype": "uint8", "mean": 0, "std": 1, "pixel_range": "0-1"}'
    )
    out = tmp_path / "b"
    args = ["extract", str(app), "--trace", str(trace), "-o", str(out), "--no-code"]
    # the hand-given spec is used as given; it is not the app's, so its end-to-end fidelity fails (exit 16)
    assert main([*args, "--preprocess", f"classifier.tflite={spec}"]) == 16
    assert main([*args, "--preprocess", f"classifier.tflite={spec}", "--allow-unfaithful"]) == 0
    doc = json.loads((out / "extract.json").read_text())
    cls = next(m for m in doc["models"] if m["location"].endswith("classifier.tflite"))
    assert cls["preprocess_from"] == "user" and cls["fidelity"]["verdict"] == "failed"
    assert main([*args, "--preprocess", f"nosuchmodel={spec}"]) == 2


def test_replay_refuses_unresolved_unless_accepted(tmp_path, unresolved, capsys):
    _, _, _, out, _ = unresolved
    doc = json.loads((out / "extract.json").read_text())
    cls = next(m for m in doc["models"] if m["location"].endswith("classifier.tflite"))
    bundle = out / cls["bundle"]
    data = tmp_path / "utk"
    utk_images(data, 3)
    capsys.readouterr()
    code = main(
        [
            "replay",
            str(bundle),
            str(data),
            "--format",
            "utkface",
            "-o",
            str(tmp_path / "p1"),
            "--workers",
            "0",
        ]
    )
    assert code == 15
    err = capsys.readouterr().err
    assert "was not determined by its trace" in err and "--accept-unresolved" in err
    assert not (tmp_path / "p1" / "run.json").exists()
    args = [str(bundle), str(data), "--format", "utkface", "-o", str(tmp_path / "p2"), "--workers", "0"]
    assert main(["replay", *args, "--accept-unresolved"]) == 0
    run = json.loads((tmp_path / "p2" / "run.json").read_text())
    assert (
        run["bundles"][0]["preprocess_unresolved"] is True
        and run["bundles"][0]["accepted_unresolved"] is True
    )
