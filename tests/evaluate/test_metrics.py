"""MetricFrame: every expected value recomputed independently on boolean masks, and cross-checked
against fairlearn itself on the same data."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from replaybench.errors import EvaluationError
from replaybench.evaluate import messages as msg
from replaybench.evaluate.metrics import (
    FLAG_CI_PARTIAL,
    FLAG_EMPTY,
    FLAG_MISSING,
    FLAG_SMALL,
    FLAG_SMALL_DENOMINATOR,
    FLAG_UNDEFINED,
    Metric,
    MetricFrame,
    age_metrics,
    classification_metrics,
    confusion_by_group,
)

RACES = np.array(["White", "Black", "Asian", "Indian", "Others"])


@pytest.fixture(scope="module")
def gender_data():
    rng = np.random.default_rng(7)
    n = 2000
    race = rng.choice(RACES, n, p=[0.4, 0.25, 0.2, 0.14, 0.01])
    gender = rng.choice(["male", "female"], n)
    err = rng.random(n) < np.where(race == "Black", 0.25, 0.1)
    pred = np.where(err, np.where(gender == "male", "female", "male"), gender)
    return race, gender, pred


@pytest.fixture(scope="module")
def gender_frame(gender_data):
    race, gender, pred = gender_data
    return MetricFrame(
        metrics=classification_metrics(["female", "male"]),
        y_true=gender,
        y_pred=pred,
        sensitive_features={"race": race, "gender": gender},
        n_boot=300,
        seed=3,
    )


def _value(frame, grouping, group, metric):
    r = frame.results.filter(
        (pl.col("grouping") == grouping) & (pl.col("group") == group) & (pl.col("metric") == metric)
    )
    assert r.height == 1
    return r.row(0, named=True)


def test_by_group_recomputed_on_masks(gender_frame, gender_data):
    race, gender, pred = gender_data
    for g in RACES:
        m = race == g
        t, p = gender[m], pred[m]
        assert _value(gender_frame, "race", g, "accuracy")["value"] == pytest.approx(np.mean(t == p))
        assert _value(gender_frame, "race", g, "recall[female]")["value"] == pytest.approx(
            np.sum((t == "female") & (p == "female")) / np.sum(t == "female")
        )
        assert _value(gender_frame, "race", g, "precision[male]")["value"] == pytest.approx(
            np.sum((t == "male") & (p == "male")) / np.sum(p == "male")
        )
        assert _value(gender_frame, "race", g, "fpr[female]")["value"] == pytest.approx(
            np.sum((t == "male") & (p == "female")) / np.sum(t == "male")
        )
        assert _value(gender_frame, "race", g, "n" if False else "accuracy")["n"] == int(m.sum())
    m = (race == "Black") & (gender == "female")
    assert _value(gender_frame, "race+gender", "Black / female", "fnr[female]")["value"] == pytest.approx(
        np.mean(pred[m] != "female")
    )


def test_matches_fairlearn(gender_frame, gender_data):
    from fairlearn.metrics import (
        MetricFrame as FLMetricFrame,
    )
    from fairlearn.metrics import (
        demographic_parity_difference,
        equalized_odds_difference,
    )
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    race, gender, pred = gender_data
    fl = FLMetricFrame(
        metrics={"accuracy": accuracy_score, "balanced_accuracy": balanced_accuracy_score},
        y_true=gender,
        y_pred=pred,
        sensitive_features=race,
    )
    ours = gender_frame.by_grouping("race")
    for row in ours.iter_rows(named=True):
        assert row["accuracy"] == pytest.approx(fl.by_group.loc[row["race"], "accuracy"])
        assert row["balanced_accuracy"] == pytest.approx(fl.by_group.loc[row["race"], "balanced_accuracy"])
    # fairlearn ranks every group; ours leaves the small 'Others' group out unless asked
    diff = gender_frame.difference(grouping="race", include_small=True)
    assert diff["accuracy"] == pytest.approx(fl.difference()["accuracy"])
    assert gender_frame.ratio(grouping="race", include_small=True)["accuracy"] == pytest.approx(
        fl.ratio()["accuracy"]
    )
    assert gender_frame.difference("to_overall", grouping="race", include_small=True)[
        "accuracy"
    ] == pytest.approx(fl.difference(method="to_overall")["accuracy"])
    y, yp = (gender == "female").astype(int), (pred == "female").astype(int)
    assert diff["selection_rate[female]"] == pytest.approx(
        demographic_parity_difference(y, yp, sensitive_features=race)
    )
    assert max(diff["recall[female]"], diff["fpr[female]"]) == pytest.approx(
        equalized_odds_difference(y, yp, sensitive_features=race)
    )


def test_mae_matches_fairlearn():
    from fairlearn.metrics import MetricFrame as FLMetricFrame
    from sklearn.metrics import mean_absolute_error, median_absolute_error

    rng = np.random.default_rng(1)
    n = 500
    age = rng.integers(1, 80, n).astype(float)
    pred = age + rng.normal(1, 4, n)
    race = rng.choice(RACES[:3], n)
    ours = MetricFrame(
        metrics=age_metrics(exact_truth=True),
        y_true=np.column_stack([age, age]),
        y_pred=pred,
        sensitive_features={"race": race},
        n_boot=0,
    )
    fl = FLMetricFrame(
        metrics={"mae": mean_absolute_error, "median_ae": median_absolute_error},
        y_true=age,
        y_pred=pred,
        sensitive_features=race,
    )
    for row in ours.by_group.iter_rows(named=True):
        assert row["mae"] == pytest.approx(fl.by_group.loc[row["race"], "mae"])
        assert row["median_ae"] == pytest.approx(fl.by_group.loc[row["race"], "median_ae"])
        m = race == row["race"]
        assert row["bias"] == pytest.approx(np.mean(pred[m] - age[m]))


def test_age_threshold_metrics_on_masks():
    age = np.array([10, 12, 15, 17, 17, 20, 30, 40, 16, 13], dtype=float)
    pred = np.array([19, 11, 18, 16, 13, 17, 31, 12, 16.5, 12.9])
    f = MetricFrame(
        metrics=age_metrics(exact_truth=True),
        y_true=np.column_stack([age, age]),
        y_pred=pred,
        sensitive_features={"all": ["a"] * len(age)},
        n_boot=0,
        min_group_size=1,
    )
    o = f.overall
    for t in (13, 16, 18):
        minors, adults = age < t, age >= t
        assert o[f"minors_as_adults@{t}"] == pytest.approx(np.sum(minors & (pred >= t)) / minors.sum())
        assert o[f"adults_as_minors@{t}"] == pytest.approx(np.sum(adults & (pred < t)) / adults.sum())
    # bins: 10-19 -> [10,12,15,17,17,16,13], pred bins: 19->10-19, 11->10-19, 18, 16, 13, 17(20->10-19 wrong)...
    true_bin = np.searchsorted([0, 3, 10, 20, 30, 40, 50, 60, 70], age, side="right")
    pred_bin = np.searchsorted([0, 3, 10, 20, 30, 40, 50, 60, 70], np.floor(pred), side="right")
    assert o["age_bin_accuracy"] == pytest.approx(np.mean(true_bin == pred_bin))


def test_binned_truth_counts_only_unambiguous_bins():
    # FairFace-style truth: '10-19' straddles 13/16/18, so those rows count for no threshold metric
    lo = np.array([0, 3, 10, 20, 30], dtype=float)
    hi = np.array([2, 9, 19, 29, 39], dtype=float)
    pred = np.array([20.0, 5, 25, 15, 40])
    f = MetricFrame(
        metrics=age_metrics(exact_truth=False),
        y_true=np.column_stack([lo, hi]),
        y_pred=pred,
        sensitive_features={"all": ["a"] * 5},
        n_boot=0,
    )
    assert "mae" not in f.metrics
    assert f.overall["minors_as_adults@18"] == pytest.approx(1 / 2)  # rows 0, 1 are minors; row 0 wrong
    assert f.overall["adults_as_minors@18"] == pytest.approx(1 / 2)  # rows 3, 4 adults; row 3 wrong
    assert f.overall["age_bin_accuracy"] == pytest.approx(1 / 5)  # only 5 lands in its bin (3-9)


def test_vectorised_bootstrap_equals_explicit_resampling(gender_data):
    """The counts-matrix bootstrap gives the same replicates as calling the metric on each resample."""
    race, gender, pred = gender_data
    rng = np.random.default_rng(0)
    age = rng.integers(1, 80, len(race)).astype(float)
    agepred = age + rng.normal(0, 5, len(race))
    am = age_metrics(exact_truth=True)
    f = MetricFrame(
        metrics={
            "mae": am["mae"],
            "median_ae": am["median_ae"],
            "mae_loop": lambda t, p: float(np.mean(np.abs(p - t[:, 0]))),
            "median_loop": lambda t, p: float(np.median(np.abs(p - t[:, 0]))),
        },
        y_true=np.column_stack([age, age]),
        y_pred=agepred,
        sensitive_features={"race": race},
        n_boot=200,
        seed=11,
    )
    for key in [("overall", "overall"), ("race", "Black")]:
        np.testing.assert_allclose(f._replicates[(*key, "mae")], f._replicates[(*key, "mae_loop")])
        np.testing.assert_allclose(f._replicates[(*key, "median_ae")], f._replicates[(*key, "median_loop")])
    row = _value(f, "race", "Black", "mae")
    assert row["ci_low"] < row["value"] < row["ci_high"]


def test_bootstrap_is_seeded(gender_data):
    race, gender, pred = gender_data
    kw = dict(
        metrics=classification_metrics(["female", "male"]),
        y_true=gender,
        y_pred=pred,
        sensitive_features={"race": race},
        n_boot=100,
    )
    a, b, c = MetricFrame(seed=1, **kw), MetricFrame(seed=1, **kw), MetricFrame(seed=2, **kw)
    assert a.results.equals(b.results)
    assert not a.results["ci_low"].equals(c.results["ci_low"])


def test_small_groups_flagged_not_ranked(gender_frame):
    others = _value(gender_frame, "race", "Others", "accuracy")
    assert others["n"] < 30 and FLAG_SMALL in others["flags"]
    d = {x.metric: x for x in gender_frame.disparities(grouping="race")}["accuracy"]
    assert "Others" in d.excluded_groups and d.n_groups == 4
    assert d.worst_group == "Black"
    lo, hi = d.difference_ci
    assert lo <= d.difference <= hi
    ranked = gender_frame.by_grouping("race").filter(pl.col("race") != "Others")["accuracy"]
    assert gender_frame.group_min(grouping="race")["accuracy"] == pytest.approx(ranked.min())
    assert gender_frame.group_max(grouping="race")["accuracy"] == pytest.approx(ranked.max())


def test_nan_predictions_left_out_and_counted():
    t = np.array(["male", "female", "male", "female", "male", "female"], dtype=object)
    p = np.array(["male", None, "female", "female", None, "female"], dtype=object)
    g = ["a", "a", "a", "b", "b", "b"]
    f = MetricFrame(
        metrics=classification_metrics(["female", "male"]),
        y_true=t,
        y_pred=p,
        sensitive_features={"g": g},
        n_boot=50,
        min_group_size=1,
    )
    a = _value(f, "g", "a", "accuracy")
    assert a["value"] == pytest.approx(1 / 2) and a["n"] == 2 and a["n_missing"] == 1
    assert FLAG_MISSING in a["flags"]
    # group b has no true males: recall[male] is undefined there, flagged, not zero
    rb = _value(f, "g", "b", "recall[male]")
    assert rb["n"] == 2 and np.isnan(rb["value"]) and FLAG_UNDEFINED in rb["flags"]
    assert f.n_valid == 4


def test_empty_group_flagged():
    t = np.array([30.0, 40, 50, 60])
    p = np.array([31.0, np.nan, 52, np.nan])
    f = MetricFrame(
        metrics={"mae": age_metrics(exact_truth=True)["mae"]},
        y_true=np.column_stack([t, t]),
        y_pred=p,
        sensitive_features={"g": ["a", "b", "a", "b"]},
        n_boot=20,
        min_group_size=1,
    )
    b = _value(f, "g", "b", "mae")
    assert b["n"] == 0 and FLAG_EMPTY in b["flags"] and np.isnan(b["value"])
    assert _value(f, "g", "a", "mae")["value"] == pytest.approx(1.5)
    assert np.isnan(f.difference(grouping="g")["mae"])  # one rankable group: no difference


def test_ci_partial_when_replicates_undefined():
    t = np.array(["male"] * 40 + ["female"], dtype=object)
    f = MetricFrame(
        metrics=classification_metrics(["female", "male"]),
        y_true=t,
        y_pred=t,
        sensitive_features={"g": ["a"] * 41},
        n_boot=200,
        seed=0,
    )
    r = _value(f, "overall", "overall", "recall[female]")
    assert r["value"] == 1.0 and FLAG_CI_PARTIAL in r["flags"]


def test_confusion_by_group_counts():
    t = ["male", "female", "male", "female"]
    p = ["male", "male", "female", "female"]
    c = confusion_by_group(t, p, {"race": ["A", "A", "B", "B"]}, labels=["female", "male"])
    row = c.filter((pl.col("group") == "A") & (pl.col("true") == "female") & (pl.col("pred") == "male"))
    assert row["count"].to_list() == [1]
    assert c.filter(pl.col("grouping") == "overall")["count"].sum() == 4


def test_error_messages_are_constants():
    with pytest.raises(EvaluationError) as e:
        MetricFrame(metrics={}, y_true=[1], y_pred=[1], sensitive_features={"g": ["a"]})
    assert str(e.value) == msg.METRICS_EMPTY
    with pytest.raises(EvaluationError) as e:
        MetricFrame(
            metrics=classification_metrics(["a"]),
            y_true=["a", "a"],
            y_pred=["a"],
            sensitive_features={"g": ["x", "y"]},
        )
    assert str(e.value) == msg.LENGTH_MISMATCH.format(n_true=2, what="y_pred", n_other=1)
    with pytest.raises(EvaluationError) as e:
        MetricFrame(metrics=classification_metrics(["a"]), y_true=["a"], y_pred=["a"], sensitive_features={})
    assert str(e.value) == msg.NO_SENSITIVE_FEATURES
    with pytest.raises(EvaluationError) as e:
        MetricFrame(
            metrics=classification_metrics(["a"]),
            y_true=["a"],
            y_pred=[None],
            sensitive_features={"g": ["x"]},
        )
    assert str(e.value) == msg.NOT_ENOUGH_ROWS.format(n=1)
    f = MetricFrame(
        metrics=classification_metrics(["a"]),
        y_true=["a"],
        y_pred=["a"],
        sensitive_features={"g": ["x"]},
        n_boot=0,
    )
    with pytest.raises(EvaluationError) as e:
        f.difference(method="max")  # type: ignore[arg-type]
    assert str(e.value) == msg.UNKNOWN_METHOD.format(method="max", allowed=["between_groups", "to_overall"])
    with pytest.raises(EvaluationError) as e:
        f.by_grouping("race")
    assert str(e.value) == msg.UNKNOWN_GROUPING.format(grouping="race", allowed=["g"])
    with pytest.raises(EvaluationError) as e:
        MetricFrame(
            metrics=classification_metrics(["a"]),
            y_true=["a"],
            y_pred=["a"],
            sensitive_features={"g": ["x"]},
            ci=1.5,
        )
    assert str(e.value) == msg.BAD_CI.format(ci=1.5)


def test_custom_metric_object():
    within5 = Metric(
        "within_5y", lambda t, p: (np.abs(p - t[:, 0]) <= 5).astype(float).reshape(-1, 1), lambda m: m[..., 0]
    )
    t = np.array([10.0, 20, 30, 40])
    p = np.array([12.0, 29, 31, 33])
    f = MetricFrame(
        metrics=within5,
        y_true=np.column_stack([t, t]),
        y_pred=p,
        sensitive_features={"g": ["a", "a", "b", "b"]},
        n_boot=10,
        min_group_size=1,
    )
    assert f.overall == {"within_5y": 0.5}
    assert f.by_group["within_5y"].to_list() == [0.5, 0.5]


def test_rate_over_few_items_flagged_small_denominator():
    """A group of 40 with 3 minors: minors_as_adults is reported with n_eff=3 and is not ranked."""
    rng = np.random.default_rng(0)
    age = np.concatenate([rng.integers(20, 60, 37), [10, 12, 15], rng.integers(5, 30, 40)]).astype(float)
    pred = age + 3
    pred[37:40] = 25  # all three minors of group a predicted adult
    g = ["a"] * 40 + ["b"] * 40
    f = MetricFrame(
        metrics=age_metrics(exact_truth=True),
        y_true=np.column_stack([age, age]),
        y_pred=pred,
        sensitive_features={"g": g},
        n_boot=50,
    )
    a = _value(f, "g", "a", "minors_as_adults@18")
    assert a["value"] == 1.0 and a["n"] == 40 and a["n_eff"] == 3
    assert FLAG_SMALL_DENOMINATOR in a["flags"]
    b = _value(f, "g", "b", "minors_as_adults@18")
    assert b["n_eff"] == int(np.sum(age[40:] < 18)) and FLAG_SMALL_DENOMINATOR not in b["flags"]
    d = {x.metric: x for x in f.disparities(grouping="g")}["minors_as_adults@18"]
    assert d.n_groups == 1 and d.excluded_groups == ("a",)
    assert _value(f, "g", "a", "mae")["n_eff"] == 40
