"""Concept associations: detections in both layouts, tests and odds ratios against scipy and by hand,
BH q-values recomputed, spurious marking, and attribute-edit effects."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from replaybench.errors import EvaluationError, InputNotFoundError
from replaybench.evaluate import messages as msg
from replaybench.evaluate.concepts import (
    benjamini_hochberg,
    concept_associations,
    detections,
    edit_effects,
    odds_ratio,
    read_concept_list,
    two_by_two_pvalues,
)
from tests.evaluate.synth import CONCEPTS, concept_predictions


@pytest.fixture(scope="module")
def columns_df():
    return concept_predictions(n=600, seed=4, layout="columns")


def test_list_and_column_layouts_agree(columns_df):
    lists = concept_predictions(n=600, seed=4, layout="list")
    a = detections(columns_df)
    b = detections(lists)
    order = [b.concepts.index(c) for c in a.concepts if c in b.concepts]
    assert set(b.concepts) <= set(a.concepts)
    present = [a.concepts.index(c) for c in b.concepts]
    np.testing.assert_array_equal(a.detected[:, present], b.detected)
    assert order  # the synthetic data detects most concepts


def test_top_k_keeps_only_first_entries():
    df = pl.DataFrame(
        {
            "concepts": [
                [{"label": "x", "score": 0.9}, {"label": "y", "score": 0.8}],
                [{"label": "y", "score": 0.4}],
                None,
            ]
        }
    )
    d = detections(df, top_k=1)
    assert d.concepts == ["x", "y"]
    assert d.detected.tolist() == [[True, False], [False, True], [False, False]]
    assert d.observed[:, 0].tolist() == [True, True, False]  # the null list was not scored
    d = detections(df, threshold=0.5)
    assert d.detected.tolist() == [[True, True], [False, False], [False, False]]


def test_pvalues_match_scipy():
    rng = np.random.default_rng(0)
    tables = rng.integers(0, 60, size=(200, 4))
    tables[:5] = [[1, 2, 3, 40], [0, 5, 9, 30], [2, 0, 0, 2], [0, 0, 5, 5], [30, 30, 30, 30]]
    p, test = two_by_two_pvalues(*tables.T)
    for (a, b, c, d), pv, kind in zip(tables, p, test, strict=True):
        t = np.array([[a, b], [c, d]])
        if (t.sum(0) == 0).any() or (t.sum(1) == 0).any():
            assert kind == "none" and pv == 1.0
            continue
        expected = stats.contingency.expected_freq(t)
        if expected.min() < 5:
            assert kind == "fisher"
            assert pv == pytest.approx(stats.fisher_exact(t).pvalue)
        else:
            assert kind == "chi2"
            assert pv == pytest.approx(stats.chi2_contingency(t, correction=True).pvalue)


def test_odds_ratio_haldane():
    or_, lo, hi = odds_ratio(np.array([10, 0]), np.array([5, 10]), np.array([2, 4]), np.array([8, 6]), 1.96)
    assert or_[0] == pytest.approx(10 * 8 / (5 * 2))
    assert or_[1] == pytest.approx((0.5 * 6.5) / (10.5 * 4.5))  # +0.5 on every cell of a table with a zero
    se = np.sqrt(1 / 10 + 1 / 5 + 1 / 2 + 1 / 8)
    assert lo[0] == pytest.approx(np.exp(np.log(8) - 1.96 * se))
    assert hi[0] == pytest.approx(np.exp(np.log(8) + 1.96 * se))


def test_bh_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.5, np.nan])
    # sorted 0.01, 0.03, 0.04, 0.5 -> p*m/rank = .04, .06, .0533, .5 -> monotone from the top: .04, .0533, .0533, .5
    q = benjamini_hochberg(p)
    np.testing.assert_allclose(q[:4], [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert np.isnan(q[4])


def test_associations_find_the_planted_ones(columns_df):
    res = concept_associations(
        columns_df, ["gender", "race"], spurious=["lipstick", "dog"], min_group_size=30
    )
    gender = res.filter(pl.col("grouping") == "gender")
    lip = gender.filter((pl.col("concept") == "lipstick") & (pl.col("group") == "female")).row(0, named=True)
    female = np.array(columns_df["gender"].to_list()) == "female"
    det = columns_df["concept__lipstick"].to_numpy() >= 0.5
    assert lip["n"] == female.sum() and lip["detected"] == (det & female).sum()
    assert lip["rate"] == pytest.approx(det[female].mean())
    assert lip["rate_rest"] == pytest.approx(det[~female].mean())
    assert lip["significant"] and lip["spurious"] and lip["odds_ratio"] > 10
    tie = gender.filter((pl.col("concept") == "tie") & (pl.col("group") == "male")).row(0, named=True)
    assert tie["significant"] and not tie["spurious"]  # not on the spurious list
    assert not res.filter(pl.col("concept") == "dog")["significant"].any()
    # q-values are BH over every concept x group row
    np.testing.assert_allclose(
        res["q_value"].to_numpy(), stats.false_discovery_control(res["p_value"].to_numpy())
    )
    assert res.height == len(CONCEPTS) * (2 + 5 + 10)  # gender, race, race+gender groups
    assert (res["rate_ci_low"] <= res["rate"]).all() and (res["rate"] <= res["rate_ci_high"]).all()


def test_edit_effects_paired_by_identity():
    df = concept_predictions(n=400, seed=2, edits=True)
    eff = edit_effects(df, ["gender"])
    c0 = eff.filter((pl.col("concept") == "c000") & (pl.col("grouping") == "overall")).row(0, named=True)
    assert c0["edit"] == "sunglasses" and c0["n_identities"] == 200
    assert c0["delta"] == pytest.approx(1.0) and c0["rate_baseline"] == 0.0
    lip = eff.filter((pl.col("concept") == "lipstick") & (pl.col("grouping") == "overall")).row(0, named=True)
    # recompute by hand: edited minus unedited detection for each identity
    s = df["concept__lipstick"].to_numpy() >= 0.5
    assert lip["delta"] == pytest.approx(np.mean(s[1::2].astype(float) - s[0::2]))
    by_gender = eff.filter((pl.col("concept") == "c000") & (pl.col("grouping") == "gender"))
    assert sorted(by_gender["group"].to_list()) == ["female", "male"]
    assert by_gender["n_identities"].sum() == 200
    assert edit_effects(df.drop("identity"), ["gender"]).height == 0


def test_bad_inputs(tmp_path):
    with pytest.raises(EvaluationError) as e:
        detections(pl.DataFrame({"x": [1]}))
    assert str(e.value) == msg.NO_CONCEPTS
    with pytest.raises(InputNotFoundError) as e2:
        read_concept_list(tmp_path / "none.txt")
    assert str(e2.value) == msg.SPURIOUS_FILE_NOT_FOUND.format(path=tmp_path / "none.txt")
    f = tmp_path / "s.txt"
    f.write_text("# unrelated to demographics\nlipstick\n\n dog  # pets\n")
    assert read_concept_list(f) == ["lipstick", "dog"]
