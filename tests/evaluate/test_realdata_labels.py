"""The report end to end on REAL label distributions: UTKFace-300 labels (../shared/realdata/utkface_300)
with a deterministic SIMULATED predictor (no model is run here; tests/evaluate/test_realdata_models.py
runs real models).

The simulated predictor, per image, seeded by the sha256 of its file name (so it is stable across runs
and machines):
- age: regression towards the dataset mean, as real age regressors do (young faces over-aged, old faces
  under-aged): ``0.8 * age + 0.2 * 33 + N(0, 3 + 0.08 * age)``, floored at 1;
- gender: logit +2.5 for female and -2.5 for male, shrunk to 30% for children under 13 (whose gender
  real models get wrong far more often), plus N(0, 1.2); ``p_female = sigmoid(logit)``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from replaybench.evaluate.evaluation import evaluate_predictions


def _simulate(labels: pl.DataFrame) -> pl.DataFrame:
    ages, p_female = [], []
    for file, age, gender in labels.select("file", "age", "gender").iter_rows():
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(file.encode()).digest()[:8], "little"))
        ages.append(max(1.0, 0.8 * age + 0.2 * 33 + rng.normal(0, 3 + 0.08 * age)))
        logit = (2.5 if gender == "female" else -2.5) * (0.3 if age < 13 else 1.0) + rng.normal(0, 1.2)
        p_female.append(1 / (1 + np.exp(-logit)))
    base = labels.select(
        pl.col("file").alias("item_id"), pl.col("file").alias("source_path"), "age", "gender", "race"
    ).with_columns(pl.lit("ok").alias("status"), pl.lit(None, dtype=pl.String).alias("error"))
    age_rows = base.with_columns(pl.lit("sim-age").alias("bundle"), pl.Series("age_pred", ages))
    pf = pl.Series("p_female", p_female)
    gender_rows = base.with_columns(
        pl.lit("sim-gender").alias("bundle"),
        pf,
        pl.when(pf >= 0.5).then(pl.lit("female")).otherwise(pl.lit("male")).alias("gender_pred"),
    )
    return pl.concat([age_rows, gender_rows], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def utk(realdata: Path) -> pl.DataFrame:
    path = realdata / "utkface_300" / "labels.csv"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return pl.read_csv(path)


def test_report_on_utkface_label_distribution(utk, tmp_path):
    preds = _simulate(utk)
    (tmp_path / "preds").mkdir()
    preds.write_parquet(tmp_path / "preds" / "part-00000.parquet")
    s = evaluate_predictions(
        tmp_path / "preds", tmp_path / "report", by=["race", "gender"], n_boot=300, seed=0
    )

    assert s.n_rows == 2 * utk.height and s.n_error == 0
    age = next(t for t in s.tasks if t.task == "age")
    gender = next(t for t in s.tasks if t.task == "gender")
    m = pl.read_parquet(tmp_path / "report" / "metrics.parquet")
    # group sizes are the real ones: 60 images per race
    sizes = m.filter((pl.col("task") == "age") & (pl.col("grouping") == "race") & (pl.col("metric") == "mae"))
    assert dict(zip(sizes["race"], sizes["n"], strict=True)) == {r: 60 for r in utk["race"].unique()}

    a = preds.filter(pl.col("bundle") == "sim-age")
    t, p = a["age"].to_numpy().astype(float), a["age_pred"].to_numpy()
    race = np.array(a["race"].to_list())
    assert next(x for x in age.headline if x.name == "mae").value == pytest.approx(np.mean(np.abs(p - t)))
    for r in ("White", "Black", "Asian", "Indian", "Others"):
        mask = (race == r) & (t < 18)
        row = m.filter(
            (pl.col("task") == "age")
            & (pl.col("grouping") == "race")
            & (pl.col("race") == r)
            & (pl.col("metric") == "minors_as_adults@18")
        ).row(0, named=True)
        assert row["value"] == pytest.approx(np.mean(p[mask] >= 18))
        assert row["n"] == 60 and row["ci_low"] <= row["value"] <= row["ci_high"]
    # regression to the mean makes the bias positive for the young and negative for the old
    bias_young = np.mean((p - t)[t < 13])
    assert bias_young > 0 and np.mean((p - t)[t >= 60]) < 0

    g = preds.filter(pl.col("bundle") == "sim-gender")
    acc = np.mean(g["gender"].to_numpy() == g["gender_pred"].to_numpy())
    assert gender.headline[0].value == pytest.approx(acc)
    assert (tmp_path / "report" / "index.html").stat().st_size > 50_000
