"""Agreement between two prediction runs, checked against sklearn's kappa and by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from replaybench.errors import EvaluationError
from replaybench.evaluate import messages as msg
from replaybench.evaluate.compare import cohen_kappa, compare_predictions
from tests.evaluate.synth import age_gender_predictions


def test_kappa_matches_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a = rng.choice(["x", "y", "z"], 300)
    b = np.where(rng.random(300) < 0.7, a, rng.choice(["x", "y", "z"], 300))
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa(np.array(["m", "m"]), np.array(["m", "m"])) == 1.0


def test_compare_runs():
    a = age_gender_predictions(n=300, seed=1, n_errors=0)
    rng = np.random.default_rng(5)
    gp = a["gender_pred"].to_numpy().copy()
    flip = (rng.random(a.height) < 0.1) & (a["bundle"] == "gender-model").to_numpy()
    gp[flip] = np.where(gp[flip] == "male", "female", "male")
    b = a.with_columns(pl.Series("gender_pred", gp), pl.col("age_pred") + 1.0)
    t = compare_predictions(a, b, ["race"], label_columns=["age", "gender", "race"])
    g = t.filter((pl.col("field") == "gender_pred") & (pl.col("grouping") == "overall")).row(0, named=True)
    ga = a.filter(pl.col("bundle") == "gender-model")
    gb = b.filter(pl.col("bundle") == "gender-model")
    assert g["n"] == 300
    assert g["agreement"] == pytest.approx(
        np.mean(ga["gender_pred"].to_numpy() == gb["gender_pred"].to_numpy())
    )
    age = t.filter((pl.col("field") == "age_pred") & (pl.col("grouping") == "overall")).row(0, named=True)
    assert age["kind"] == "numeric" and age["mean_abs_diff"] == pytest.approx(1.0)
    asian = t.filter((pl.col("field") == "gender_pred") & (pl.col("group") == "Asian")).row(0, named=True)
    m = (ga["race"] == "Asian").to_numpy()
    assert asian["n"] == m.sum()


def test_compare_errors():
    a = age_gender_predictions(n=20, seed=1, n_errors=0)
    with pytest.raises(EvaluationError) as e:
        compare_predictions(a.select("item_id", "bundle"), a.select("item_id", "bundle"), [])
    assert str(e.value) == msg.COMPARE_NO_FIELDS
    b = a.with_columns(pl.col("item_id") + "-other")
    with pytest.raises(EvaluationError) as e:
        compare_predictions(a, b, [])
    assert str(e.value) == msg.COMPARE_NO_OVERLAP


def test_compare_raw_tensors_of_two_runtimes():
    """The same model replayed in two engines: per item, the largest element difference of each output."""
    ids = ["a", "b", "c"]
    x = [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    y = [[0.0, 1.0, 2.0], [3.0, 4.5, 5.0], [6.0, 7.0, 8.0 + 1e-5]]
    a = pl.DataFrame({"item_id": ids, "bundle": ["onnx"] * 3, "raw__scores": x, "status": ["ok"] * 3})
    b = pl.DataFrame({"item_id": ids, "bundle": ["ncnn"] * 3, "raw__scores": y, "status": ["ok"] * 3})
    row = compare_predictions(a, b, []).row(0, named=True)
    assert row["field"] == "raw__scores" and row["kind"] == "tensor" and row["n"] == 3
    assert row["max_abs_diff"] == pytest.approx(0.5)
    assert row["mean_abs_diff"] == pytest.approx((0.0 + 0.5 + 1e-5) / 3)
    assert row["agreement"] == pytest.approx(2 / 3)  # within 1e-3 of the range 8: items a and c
