"""The demo: the whole pipeline on the embedded sample finds the planted disparity."""

from __future__ import annotations

import json

import polars as pl
import pytest

from replaybench.cli import main


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "-o", str(out), "--faces", "400", "--posts", "30", "--json"]) == 0
    return out


def test_demo_runs_every_stage_and_finds_the_planted_disparity(demo_out):
    doc = json.loads((demo_out / "demo.json").read_text())
    assert [s["name"] for s in doc["steps"]] == ["scan", "extract", "replay", "evaluate", "distill"]
    assert doc["disparity_found"] is True
    # the sample model learned skin tone as a shortcut for gender: dark-skinned women pay for it
    assert doc["worst_group"] == "dark / female"
    assert doc["accuracy_gap"] > 0.15
    # the figures are the predictions' own: per-group accuracy recomputed here from predictions.parquet
    preds = pl.read_parquet(demo_out / "predictions" / "*.parquet")
    acc = (
        preds.with_columns(hit=(pl.col("gender_pred") == pl.col("gender")).cast(pl.Float64))
        .group_by("skin_tone", "gender")
        .agg(pl.col("hit").mean())
        .sort("hit")
    )
    assert acc.height == 4
    worst, best = acc.row(0, named=True), acc.row(-1, named=True)
    assert f"{worst['skin_tone']} / {worst['gender']}" == doc["worst_group"]
    assert doc["worst_group_accuracy"] == pytest.approx(worst["hit"])
    assert doc["accuracy_gap"] == pytest.approx(best["hit"] - worst["hit"])


def test_demo_artefacts(demo_out):
    assert (demo_out / "report" / "index.html").is_file()
    extract = json.loads((demo_out / "extract" / "extract.json").read_text())
    ran = [m for m in extract["models"] if m["ran_in_trace"]]
    assert any(m["origin"] == "trace_dump" and m["preprocess_from"] == "trace" for m in ran)
    preds = pl.read_parquet(demo_out / "predictions" / "*.parquet")
    assert preds.height == 400 and set(preds["status"]) == {"ok"}
    assert {"skin_tone", "gender", "gender_pred", "p_female"} <= set(preds.columns)
    scores = pl.read_parquet(demo_out / "distill" / "scores" / "*.parquet")
    assert scores.height == 30 and scores["score"].is_between(0, 10).all()
