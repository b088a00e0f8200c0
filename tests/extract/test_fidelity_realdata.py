"""Real data: end-to-end fidelity of a real quantised app model (GuessMyAge's uint8 age classifier).

What the app computes is made here by the references, never by replaybench: Skia draws
``createScaledBitmap(photo, 224, 224, true)`` (skia-python, as Android does), the raw uint8 RGB goes into
the ORIGINAL .tflite run by ai-edge-litert (PROVENANCE.txt: IMAGE_MEAN 0, IMAGE_STD 1). The bundle is the
converted ONNX model with replay's preprocessing; its outputs are uint8, compared in quantisation steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replaybench.bundle import PreprocessSpec, ResizeSpec, load_bundle
from replaybench.extract.fidelity import QUANT_STEPS, check_fidelity
from replaybench.extract.trace import Quantization
from replaybench.extract.trace_match import TracedInvoke, TracedTensor
from tests.fixtures.cache import cached_build
from tests.fixtures.references import create_scaled_bitmap

MODEL = "age_classifier_quant_radualexandrub/AndroidAge_quant.tflite"
RIGHT = PreprocessSpec(
    resize=ResizeSpec(width=224, height=224, method="bilinear_android"),
    dtype="uint8",
    scale=[1.0],
    offset=[0.0],
)


def _convert(folder: Path, tflite: str) -> None:
    from replaybench.extract.convert import convert_model

    convert_model(Path(tflite), folder / "bundle", preprocess=RIGHT)


@pytest.fixture(scope="module")
def age_bundle(realdata, tmp_path_factory) -> Path:
    tflite = realdata / MODEL
    if not tflite.is_file():
        pytest.skip(f"{MODEL} not in the real data")
    cached = cached_build("fidelity-age-quant", _convert, tflite=str(tflite))
    folder = tmp_path_factory.mktemp("age") / "bundle"
    shutil.copytree(cached / "bundle", folder)
    return folder


def _tensor(io: str, detail: dict, arr: np.ndarray, seq: int) -> TracedTensor:
    scale, zero = detail["quantization"]
    return TracedTensor(
        io,
        0,
        detail["name"],
        list(arr.shape),
        str(arr.dtype),
        Quantization(scale=scale, zero_point=zero),
        seq,
        arr,
    )


@pytest.fixture(scope="module")
def app_invokes(realdata) -> list[TracedInvoke]:
    """Four UTKFace photos as the app feeds them, with the app's own input and output tensors."""
    from ai_edge_litert.interpreter import Interpreter

    photos = sorted((realdata / "utkface_300" / "images").glob("*.jpg"))[::75][:4]
    interp = Interpreter(model_path=str(realdata / MODEL))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    invokes = []
    for seq, path in enumerate(photos):
        photo = np.asarray(Image.open(path).convert("RGB"))
        x = create_scaled_bitmap(photo, 224, 224, filter=True)[None].astype(np.uint8)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"]).copy()
        invokes.append(
            TracedInvoke(
                seq=seq,
                model_sha256=None,
                model_handle=None,
                interpreter=None,
                inputs=[_tensor("input", inp, x, seq)],
                outputs=[_tensor("output", out, y, seq)],
                bitmap=photo,
            )
        )
    return invokes


def test_quantised_real_model_is_faithful_with_the_apps_preprocessing(age_bundle, app_invokes):
    report = check_fidelity(age_bundle, app_invokes)
    assert report.verdict == "passed", report.reason
    assert report.invokes_checked == 4
    assert report.input_max_abs_diff == 0  # replay's uint8 tensor is the app's, bit for bit
    (o,) = report.outputs
    # integer outputs are compared in quantisation steps, never tighter than conversion parity allowed
    parity = load_bundle(age_bundle).bundle.parity
    assert parity is not None
    assert o.tolerance == max(QUANT_STEPS, parity.outputs[0].tolerance)
    assert o.max_quant_steps is not None and o.max_quant_steps <= o.tolerance


@pytest.mark.parametrize(
    "wrong", [{"color_order": "BGR"}, {"resize": ResizeSpec(width=224, height=224, method="nearest")}]
)
def test_quantised_real_model_fails_with_a_wrong_spec(age_bundle, app_invokes, tmp_path, wrong):
    folder = tmp_path / "bundle"
    shutil.copytree(age_bundle, folder)
    lb = load_bundle(folder)
    lb.bundle.model_copy(update={"preprocess": RIGHT.model_copy(update=wrong)}).write(folder)
    report = check_fidelity(folder, app_invokes)
    assert report.verdict == "failed"
    (o,) = report.outputs
    assert o.max_quant_steps is not None and o.max_quant_steps > o.tolerance
