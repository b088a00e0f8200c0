"""The evaluate stage on REAL model outputs: the shubham0204 age and gender TFLite models (from an Android
app, ../shared/realdata/agegender_tflite_shubham0204) run with their own runtime (ai-edge-litert) over
the 300 real UTKFace crops, with the app's pre/post-processing (bilinear resize of the crop, pixel/255;
age = out * 116; index 1 = female). The predictions are written in the predictions contract, as replay
will, then evaluated; fp32 and fp16 gender models are compared with ``compare``.

This stands in for the replay stage (built in parallel) so that the report is exercised on real outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from replaybench.evaluate.evaluation import evaluate_predictions

MODELS = "agegender_tflite_shubham0204"


def _run(model: Path, images: list[np.ndarray]) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for x in images:
        it.set_tensor(inp["index"], x[None])
        it.invoke()
        outs.append(it.get_tensor(out["index"])[0].copy())
    return np.stack(outs)


def _images(folder: Path, files: list[str], size: int) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for f in files:
        with Image.open(folder / f) as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0)
    return out


@pytest.fixture(scope="module")
def real_preds(realdata: Path, tmp_path_factory) -> tuple[Path, Path]:
    utk, models = realdata / "utkface_300", realdata / MODELS
    if not (utk / "labels.csv").exists() or not models.is_dir():
        pytest.skip("utkface_300 or the shubham0204 models are absent from the real-data folder")
    labels = pl.read_csv(utk / "labels.csv")
    files = labels["file"].to_list()
    base = labels.select(
        pl.col("file").alias("item_id"), pl.col("file").alias("source_path"), "age", "gender", "race"
    ).with_columns(pl.lit("ok").alias("status"), pl.lit(None, dtype=pl.String).alias("error"))
    age_out = _run(models / "model_lite_age_nonq.tflite", _images(utk, files, 200))
    g128 = _images(utk, files, 128)
    folders = []
    for name in ("model_lite_gender_nonq", "model_lite_gender_q"):
        g = _run(models / f"{name}.tflite", g128)
        rows = [
            base.with_columns(
                pl.lit("lite_age_nonq").alias("bundle"),
                pl.Series("age_pred", age_out[:, 0].astype(np.float64) * 116),
            ),
            base.with_columns(
                pl.lit("lite_gender").alias("bundle"),
                pl.Series("p_female", g[:, 1].astype(np.float64)),
                pl.Series("gender_pred", np.where(g[:, 1] > g[:, 0], "female", "male").tolist()),
                pl.Series("raw__output", g.astype(np.float64).tolist()),
            ),
        ]
        folder = tmp_path_factory.mktemp(name) / "preds"
        folder.mkdir()
        pl.concat(rows, how="diagonal_relaxed").write_parquet(folder / "part-00000.parquet")
        folders.append(folder)
    return folders[0], folders[1]


def test_real_models_report(real_preds, tmp_path):
    fp32, fp16 = real_preds
    s = evaluate_predictions(
        fp32, tmp_path / "report", by=["race", "gender"], compare=fp16, n_boot=500, seed=0
    )
    age = next(t for t in s.tasks if t.task == "age")
    gender = next(t for t in s.tasks if t.task == "gender")
    head = {m.name: m for m in [*age.headline, *gender.headline]}
    # the provenance sanity check saw accuracy .93-.97 and MAE 4.9-6.5 on these models (598 images)
    assert head["accuracy"].value > 0.85
    assert 3 < head["mae"].value < 10
    assert head["minors_as_adults@18"].n == 300
    agree = {f.field: f for f in s.comparison.fields}
    assert agree["gender_pred"].agreement > 0.95  # fp16 weights barely change decisions
    assert agree["p_female"].mean_abs_diff < 0.05
    # the key table for the lead: printed with -s
    print("\nmetric                    value   CI               worst group (race)")
    for d in [*age.disparities, *gender.disparities]:
        if d.grouping == "race" and d.metric in (
            "mae",
            "minors_as_adults@18",
            "adults_as_minors@18",
            "accuracy",
        ):
            m = head[d.metric]
            print(
                f"{d.metric:24s} {m.value:6.3f}  [{m.ci_low:.3f}, {m.ci_high:.3f}]  {d.worst_group} {d.worst_value:.3f}"
            )
