"""End-to-end fidelity: extract runs each bundle on the traced bitmaps as replay would and compares with
the app's own outputs; a bundle that does not reproduce them is marked, and replay refuses it.

The sample app's trace was made by the reference implementations (Skia's createScaledBitmap through
skia-python, NormalizeOp arithmetic: replaybench/demo/sample_app.py), so a right spec must pass and a
deliberately wrong one (colour order swapped, normalisation wrong) must fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from replaybench.bundle import Decoder, PostprocessSpec, load_bundle
from replaybench.cli import main
from replaybench.demo import sample_app
from replaybench.demo.pipeline import PATTERN
from replaybench.demo.synthetic import write_face_dataset
from replaybench.errors import UnfaithfulBundleError
from replaybench.extract.fidelity import check_fidelity
from replaybench.extract.pipeline import extract_app
from replaybench.extract.trace import read_trace
from replaybench.extract.trace_match import traced_invokes
from replaybench.replay.admission import check_bundle_admissible
from tests.fixtures.references import create_scaled_bitmap

SAMPLE = Path(sample_app.__file__).parent / "sample"
TRACED = "fa_decrypted"  # the model the sample app decrypts and runs (the only one in the trace)


@pytest.fixture(scope="module")
def faithful(tmp_path_factory):
    out = tmp_path_factory.mktemp("faithful")
    return out, extract_app([SAMPLE / "sample.apk"], out, trace=SAMPLE / "trace")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_face_dataset(tmp_path_factory.mktemp("faces"), 6)


def test_fidelity_passes_on_the_demo_sample(faithful):
    out, result = faithful
    ran = next(m for m in result.models if m.origin == "trace_dump")
    assert ran.status == "converted" and ran.fidelity is not None
    fid = ran.fidelity
    assert fid.verdict == "passed" and fid.reason is None
    assert fid.invokes_checked == fid.invokes_traced == 6  # every traced invoke had a bitmap and outputs
    assert fid.output_match == "name"
    assert fid.input_max_abs_diff is not None and fid.input_max_abs_diff < 1e-5  # the app's own tensors
    (o,) = fid.outputs
    assert o.passed and o.max_abs_diff <= 1e-4 < o.tolerance  # the same numbers as the app, to float error
    # the block is in the bundle and in extract.json
    bundle = load_bundle(out / ran.bundle).bundle
    assert bundle.fidelity == fid
    doc = json.loads((out / "extract.json").read_text())
    entry = next(m for m in doc["models"] if m["origin"] == "trace_dump")
    assert entry["fidelity"]["verdict"] == "passed" and entry["fidelity"]["rtol"] == fid.rtol
    # the models the app never ran say so instead of claiming a verdict
    idle = [m for m in result.models if m.origin == "app" and m.bundle]
    assert idle and all(m.fidelity and m.fidelity.verdict == "not_checked" for m in idle)
    assert all("did not run" in (m.fidelity.reason or "") for m in idle if m.fidelity)


def test_inspect_shows_the_fidelity_block(faithful, capsys):
    out, result = faithful
    ran = next(m for m in result.models if m.origin == "trace_dump")
    assert main(["inspect", str(out / str(ran.bundle))]) == 0
    text = capsys.readouterr().out
    assert "fidelity vs the app's outputs" in text and "passed" in text
    assert main(["inspect", str(out / str(ran.bundle)), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fidelity"]["verdict"] == "passed"


WRONG_SPECS = {
    "swapped-colour-order": {"color_order": "BGR"},
    "wrong-normalisation": {"scale": [1 / 255], "offset": [0.0]},
}


@pytest.mark.parametrize("wrong", list(WRONG_SPECS))
def test_wrong_spec_fails_fidelity_and_replay_refuses_it(tmp_path, faces, capsys, wrong):
    spec = sample_app.APP_PREPROCESS.model_copy(update=WRONG_SPECS[wrong])
    spec_file = tmp_path / "wrong.json"
    spec_file.write_text(spec.model_dump_json())
    out = tmp_path / "extract"
    argv = ["extract", str(SAMPLE / "sample.apk"), "--trace", str(SAMPLE / "trace"), "-o", str(out)]
    rc = main([*argv, "--preprocess", f"fa_decrypted={spec_file}"])
    captured = capsys.readouterr()
    assert rc == UnfaithfulBundleError.exit_code == 16
    assert "do not reproduce the app's own outputs" in captured.err
    assert "fidelity" in captured.out and "failed" in captured.out  # printed per model

    doc = json.loads((out / "extract.json").read_text())
    entry = next(m for m in doc["models"] if m["origin"] == "trace_dump")
    assert entry["preprocess_from"] == "user"
    assert entry["status"] == "fidelity_failed"
    fid = entry["fidelity"]
    assert fid["verdict"] == "failed" and fid["invokes_checked"] == 6
    (o,) = fid["outputs"]
    assert not o["passed"] and o["max_abs_diff"] > o["tolerance"]
    bundle = out / entry["bundle"]
    assert load_bundle(bundle).bundle.fidelity.verdict == "failed"  # type: ignore[union-attr]

    replay = [
        "replay",
        str(bundle),
        str(faces),
        "--format",
        "folders",
        "--pattern",
        PATTERN,
        "--workers",
        "0",
    ]
    assert main([*replay, "-o", str(tmp_path / "refused")]) == 16
    err = capsys.readouterr().err
    assert "--allow-unfaithful" in err
    assert not (tmp_path / "refused").exists()  # refused before anything is written

    preds = tmp_path / "preds"
    assert main([*replay, "-o", str(preds), "--allow-unfaithful"]) == 0
    capsys.readouterr()
    run = json.loads((preds / "run.json").read_text())
    assert run["settings"]["allow_unfaithful"] is True
    assert run["bundles"][0]["fidelity"] == "failed"
    part = sorted(preds.glob("part-*.parquet"))[0]
    meta = pl.read_parquet_metadata(part)
    name = load_bundle(bundle).bundle.name
    assert json.loads(meta["replaybench.unfaithful_bundles"]) == [name]
    assert json.loads(meta["replaybench.allow_unfaithful"]) is True
    assert pl.read_parquet(part).height == 6


def test_the_right_spec_given_by_hand_passes(tmp_path, capsys):
    spec_file = tmp_path / "right.json"
    spec_file.write_text(sample_app.APP_PREPROCESS.model_dump_json())
    out = tmp_path / "extract"
    argv = ["extract", str(SAMPLE / "sample.apk"), "--trace", str(SAMPLE / "trace"), "-o", str(out), "--json"]
    assert main([*argv, "--preprocess", f"fa_decrypted.tflite={spec_file}"]) == 0
    doc = json.loads(capsys.readouterr().out)
    entry = next(m for m in doc["models"] if m["origin"] == "trace_dump")
    assert entry["status"] == "converted" and entry["fidelity"]["verdict"] == "passed"


def test_admission_refuses_only_failed_fidelity(faithful):
    out, result = faithful
    ran = next(m for m in result.models if m.origin == "trace_dump")
    bundle = load_bundle(out / str(ran.bundle)).bundle
    assert check_bundle_admissible(bundle, allow_unfaithful=False, accept_unresolved=False) == []
    assert bundle.fidelity is not None
    failed = bundle.model_copy(
        update={
            "fidelity": bundle.fidelity.model_copy(update={"verdict": "failed", "reason": "output y off"})
        }
    )
    with pytest.raises(UnfaithfulBundleError, match="output y off"):
        check_bundle_admissible(failed, allow_unfaithful=False, accept_unresolved=False)
    notes = check_bundle_admissible(failed, allow_unfaithful=True, accept_unresolved=False)
    assert len(notes) == 1 and "--allow-unfaithful" in notes[0]
    unchecked = bundle.model_copy(update={"fidelity": None})
    assert check_bundle_admissible(unchecked, allow_unfaithful=False, accept_unresolved=False) == []


@pytest.mark.parametrize("colour", ["RGB", "BGR"])
def test_decoded_fields_are_compared_where_the_bundle_has_decoders(faithful, tmp_path, colour):
    """The app's decoding (index 0 is male, as examples/postprocess-gender.json) applied to both sides."""
    import shutil

    out, result = faithful
    ran = next(m for m in result.models if m.origin == "trace_dump")
    folder = tmp_path / "bundle"
    shutil.copytree(out / str(ran.bundle), folder)
    lb = load_bundle(folder)
    output = lb.bundle.io.outputs[0].name
    post = PostprocessSpec(
        task="classification",
        decoders=[
            Decoder(output=output, field="gender_pred", kind="softmax_argmax", labels=["male", "female"]),
            Decoder(output=output, field="p_raw_female", kind="scale", index=1),
        ],
    )
    assert lb.bundle.preprocess is not None
    pre = lb.bundle.preprocess.model_copy(update={"color_order": colour})
    lb.bundle.model_copy(update={"postprocess": post, "preprocess": pre}).write(folder)
    invokes = traced_invokes(read_trace(SAMPLE / "trace"))[ran.sha256]
    report = check_fidelity(folder, invokes)
    fields = {f.field: f for f in report.fields}
    assert set(fields) == {"gender_pred", "p_raw_female"}
    assert all(f.total == 6 for f in fields.values())
    assert fields["gender_pred"].kind == "label" and fields["p_raw_female"].kind == "number"
    if colour == "RGB":
        assert report.verdict == "passed" and all(f.passed and f.agreed == 6 for f in fields.values())
    else:  # the swapped colour order moves the probabilities far beyond tolerance
        assert report.verdict == "failed" and not fields["p_raw_female"].passed
        assert fields["p_raw_female"].max_abs_diff > fields["p_raw_female"].tolerance  # type: ignore[operator]


def test_demo_trace_holds_what_android_computes():
    """The sample trace's input tensors are Skia's createScaledBitmap of its bitmaps, normalised as
    NormalizeOp(127.5f, 127.5f) does: made by the references, not by replaybench's kernels."""
    import numpy as np

    calls = next(iter(traced_invokes(read_trace(SAMPLE / "trace")).values()))
    assert len(calls) == 6
    for call in calls:
        assert call.bitmap is not None
        scaled = create_scaled_bitmap(call.bitmap, 64, 64, filter=True).astype(np.float32)
        expected = (scaled - np.float32(127.5)) / np.float32(127.5)
        np.testing.assert_array_equal(call.inputs[0].array[0], expected)
