"""Real third-party models (../shared/realdata), driven by tests/extract/convert_expectations.py.

Each model is converted once per session (1 random input) and the outcome shared by the assertions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replaybench.errors import ReplaybenchError
from replaybench.extract.convert import convert_model
from tests.extract.convert_expectations import EXPECTATIONS

_CACHE: dict[str, object] = {}


@pytest.fixture(scope="session")
def converted(realdata: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("realdata-bundles")

    def get(rel: str) -> object:
        """The Bundle (or the ReplaybenchError) for ``rel``; the bundle folder is ``get.out / key``."""
        if rel not in _CACHE:
            exp = EXPECTATIONS[rel]
            src = realdata / rel
            if not src.exists():
                pytest.skip(f"{rel} not in this copy of realdata")
            try:
                _CACHE[rel] = convert_model(
                    src,
                    out / rel.replace("/", "__"),
                    n_random=1,
                    tolerance=exp.get("tolerance"),
                    input_shape=exp.get("input_shape"),
                )
            except ReplaybenchError as e:
                _CACHE[rel] = e
        return _CACHE[rel]

    get.out = out  # type: ignore[attr-defined]
    return get


CASES = [
    pytest.param(k, marks=pytest.mark.skip(reason=v["disabled"])) if "disabled" in v else k
    for k, v in EXPECTATIONS.items()
]


@pytest.mark.parametrize("rel", CASES)
def test_realdata_conversion_verdict(rel, converted):
    exp = EXPECTATIONS[rel]
    result = converted(rel)
    if exp["verdict"] == "error":
        assert isinstance(result, ReplaybenchError), f"{rel} converted but should fail"
        assert type(result).__name__ == exp["error"]
        assert exp["match"] in result.message
        return
    assert not isinstance(result, Exception), f"{rel}: {result}"
    if exp["verdict"] == "native":
        assert result.runtime.name == exp["runtime"] and exp["match"] in (result.runtime.reason or "")
        assert result.parity is None  # nothing was converted: the original runs in its own engine
        return
    assert result.runtime.name == "onnxruntime"
    assert result.parity is not None
    failing = [(o.name, o.max_abs_diff, o.max_quant_steps) for o in result.parity.outputs if not o.passed]
    assert result.parity.passed, f"{rel} parity failed: {failing}"
    assert all(o.shape_match and o.dtype_match for o in result.parity.outputs)
    assert result.parity.reference == exp.get("reference", "original")
    assert (result.parity.reference_reason is not None) == (result.parity.reference == "rewritten")
    assert result.conversion is not None
    if exp["verdict"] == "cut":
        assert result.conversion.cut_at == exp["cut_at"]
        assert (
            result.conversion.cut_tensors
            and [o.name for o in result.io.outputs] == result.conversion.cut_tensors
        )
    else:
        assert result.conversion.cut_at == []
    if "note" in exp:
        assert any(exp["note"] in n for n in result.conversion.notes)
    if "labels" in exp:
        assert result.postprocess.labels is not None and len(result.postprocess.labels) == exp["labels"]


def test_mediapipe_normalisation_from_metadata(converted):
    from replaybench.bundle import Provenance

    b = converted("mediapipe_0.10.14_face_tflite/face_detection_short_range.tflite")
    assert not isinstance(b, Exception)
    assert b.preprocess is not None and b.preprocess.provenance["scale"] == Provenance.METADATA
    # MediaPipe BlazeFace: mean 127.5, std 127.5 -> [-1, 1]
    assert b.preprocess.scale[0] == pytest.approx(1 / 127.5)
    assert b.preprocess.offset[0] == pytest.approx(-1.0)


def test_quantised_ssd_keeps_uint8_io(converted):
    b = converted("quant_ssd_detect_aamba/detect.tflite")
    assert not isinstance(b, Exception)
    inp = b.io.inputs[0]
    assert inp.dtype == "uint8" and inp.quantization is not None
    assert inp.quantization.scale == pytest.approx(0.0078125) and inp.quantization.zero_point == 128
    assert b.runtime.name == "tflite"  # the whole model, post-processing op included


def test_quantised_parity_records_the_closer_onnxruntime_mode(converted):
    # AndroidAge_quant: ORT's fused QLinear kernels are tens of steps off TFLite; the unfused QDQ graph is
    # within a few steps, so parity passes and tells replay to run the bundle unoptimised.
    b = converted("age_classifier_quant_radualexandrub/AndroidAge_quant.tflite")
    assert not isinstance(b, Exception)
    assert b.parity is not None and b.parity.passed
    assert b.parity.onnxruntime_optimization == "disabled"


def test_selfie_segmentation_masks_are_meaningful(converted, realdata):
    """The Convolution2DTransposeBias rewrite is checked by meaning, not only by parity against the
    rewritten TFLite model: a face photo is mostly 'person', a flat grey image is not."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    rel = "mediapipe_0.10.14_face_tflite/selfie_segmentation.tflite"
    b = converted(rel)
    assert not isinstance(b, Exception)
    s = ort.InferenceSession(str(converted.out / rel.replace("/", "__") / "model.onnx"))
    name = s.get_inputs()[0].name
    faces = sorted((realdata / "utkface_300").rglob("*.jpg"))[:3]
    if not faces:
        pytest.skip("no utkface_300 images")
    for f in faces:
        x = np.asarray(Image.open(f).convert("RGB").resize((256, 256)), dtype=np.float32)[None] / 255.0
        mask = s.run(None, {name: x})[0][0, :, :, 0]
        assert mask[96:160, 96:160].mean() > 0.9, f.name
    grey = s.run(None, {name: np.full((1, 256, 256, 3), 0.5, np.float32)})[0]
    assert grey.mean() < 0.1


def test_sparse_mediapipe_bundle_computes_what_the_original_computes(realdata, converted):
    """The densified MediaPipe detector against the original sparse .tflite run in LiteRT directly, on
    an input parity never saw (the interpreter-read DENSIFY values were off by up to 93 on it)."""
    import numpy as np
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    rel = "mediapipe_0.10.14_face_tflite/face_detection_full_range_sparse.tflite"
    b = converted(rel)
    assert not isinstance(b, Exception), b
    x = np.random.default_rng(123).uniform(-1, 1, (1, 192, 192, 3)).astype(np.float32)
    it = Interpreter(
        model_path=str(realdata / rel),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    want = [np.array(it.get_tensor(d["index"])) for d in it.get_output_details()]
    s = ort.InferenceSession(str(converted.out / rel.replace("/", "__") / "model.onnx"))
    got = s.run(None, {s.get_inputs()[0].name: x})
    for g, w in zip(sorted(got, key=lambda a: a.shape), sorted(want, key=lambda a: a.shape), strict=True):
        np.testing.assert_allclose(g.reshape(w.shape), w, atol=1e-3 * max(1.0, float(np.abs(w).max())))
