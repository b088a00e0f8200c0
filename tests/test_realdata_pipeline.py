"""Real models, real faces, through the CLI: convert -> replay -> evaluate on utkface_300."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from replaybench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_real_age_gender_models_over_utkface(realdata, tmp_path, capsys):
    models = realdata / "agegender_tflite_shubham0204"
    examples = ROOT / "examples"
    age, gender = tmp_path / "bundles" / "age", tmp_path / "bundles" / "gender"
    post_age = str(examples / "postprocess-age-regression.json")
    assert (
        main(
            ["convert", str(models / "model_lite_age_nonq.tflite"), "--postprocess", post_age, "-o", str(age)]
        )
        == 0
    )
    post_gender = str(examples / "postprocess-gender.json")
    assert (
        main(
            [
                "convert",
                str(models / "model_lite_gender_nonq.tflite"),
                "--postprocess",
                post_gender,
                "-o",
                str(gender),
            ]
        )
        == 0
    )
    preds = tmp_path / "preds"
    faces = realdata / "utkface_300" / "images"
    assert (
        main(["replay", str(age), str(gender), str(faces), "--format", "utkface", "-o", str(preds), "--json"])
        == 0
    )
    df = pl.read_parquet(preds / "*.parquet")
    assert df.height == 600 and set(df["status"]) == {"ok"}
    truth = pl.read_csv(realdata / "utkface_300" / "labels.csv")
    assert df.filter(pl.col("bundle") == "model_lite_gender_nonq").height == truth.height
    capsys.readouterr()
    assert (
        main(["evaluate", str(preds), "--by", "race,gender", "-o", str(tmp_path / "report"), "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    tasks = {t["task"]: t for t in summary["tasks"]}
    acc = next(m for m in tasks["gender"]["headline"] if m["name"] == "accuracy")
    mae = next(m for m in tasks["age"]["headline"] if m["name"] == "mae")
    assert acc["value"] > 0.9 and acc["ci_low"] < acc["value"] < acc["ci_high"]
    assert 3.0 < mae["value"] < 10.0
    minors = next(m for m in tasks["age"]["headline"] if m["name"] == "minors_as_adults@18")
    assert minors["n_eff"] == int((truth["age"] < 18).sum())
    metrics = pl.read_parquet(tmp_path / "report" / "metrics.parquet")
    assert {"White", "Black", "Asian", "Indian", "Others"} <= set(metrics["race"].drop_nulls())
