"""Real data: a real app's gender model (TFLite -> ONNX with tf2onnx) replayed over utkface_300.

The decoded outputs must equal the TFLite interpreter's own outputs on the same preprocessed images,
per item (the bundle is faithful), with the preprocessing of its PROVENANCE.txt: RGB, bilinear resize to
128x128 (TFLite support ResizeOp = tf.image.resize bilinear), pixel/255; output index 0 = male, 1 = female.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from replaybench.bundle import Decoder, PreprocessSpec, ResizeSpec
from replaybench.replay.decode import decode_image
from replaybench.replay.preprocess import apply_preprocess
from replaybench.replay.runner import ReplayOptions, replay
from tests.fixtures.cache import cached_build
from tests.replay.helpers import tflite_to_onnx, write_bundle

MODEL = "agegender_tflite_shubham0204/model_lite_gender_nonq.tflite"
SPEC = PreprocessSpec(
    resize=ResizeSpec(width=128, height=128, method="bilinear_tf"), scale=[1 / 255.0], offset=[0.0]
)


@pytest.fixture(scope="module")
def gender_bundle(realdata, tmp_path_factory) -> Path:
    tflite = realdata / MODEL
    if not tflite.is_file():
        pytest.skip(f"{MODEL} not in the real data")
    onnx_dir = cached_build("tf2onnx-lite-gender", tflite_to_onnx, tflite=str(tflite))
    import onnx

    outputs = [o.name for o in onnx.load(str(onnx_dir / "model.onnx")).graph.output]
    folder = tmp_path_factory.mktemp("bundles") / "gender"
    return write_bundle(
        folder,
        (onnx_dir / "model.onnx").read_bytes(),
        "lite_gender",
        SPEC,
        [Decoder(output=outputs[0], field="gender_pred", kind="softmax_argmax", labels=["male", "female"])],
    )


def test_replay_matches_tflite_interpreter_per_item(realdata, gender_bundle, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    res = replay(
        [gender_bundle], realdata / "utkface_300", tmp_path / "p", ReplayOptions(workers=2, batch_size=32)
    )
    assert res.items_ok == 300 and res.items_error == 0
    assert res.bundles[0].batch_mode in ("dynamic", "made_dynamic")  # batched, not one call per image
    df = pl.read_parquet(tmp_path / "p" / "*.parquet").sort("item_id")
    assert df.height == 300

    interp = Interpreter(model_path=str(realdata / MODEL))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    raw_col = next(c for c in df.columns if c.startswith("raw__"))
    worst = 0.0
    for row in df.iter_rows(named=True):
        x = apply_preprocess(decode_image(Path(row["source_path"])), SPEC)[None]
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        ref = interp.get_tensor(out["index"])[0]
        worst = max(worst, float(np.abs(np.asarray(row[raw_col]) - ref).max()))
        assert row["gender_pred"] == ("male" if ref[0] > ref[1] else "female")
        assert row["p_female"] == pytest.approx(float(ref[1]), abs=1e-4)
    assert worst < 1e-4
    # the model is UTKFace-trained: PROVENANCE reports ~95% gender accuracy on the crops
    accuracy = (df["gender_pred"] == df["gender"]).mean()
    assert accuracy > 0.85
