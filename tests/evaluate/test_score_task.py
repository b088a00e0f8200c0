"""The score task: a student bundle's 0-10 score per post, per group of the posts' labels; expected values
computed here with numpy/scipy, independently of replaybench's metrics."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from scipy import stats

from replaybench.bundle import Decoder
from replaybench.evaluate.evaluation import evaluate_predictions
from replaybench.replay.decoders import output_columns
from tests.evaluate.synth import write_v2_parts

ACCOUNTS = ["brand", "creator", "personal"]
N = 450
N_BOOT = 2000


def _posts(seed: int = 0) -> pl.DataFrame:
    """Student scores that run higher for 'creator' accounts; a teacher's score on ~80% of the posts."""
    rng = np.random.default_rng(seed)
    account = rng.choice(ACCOUNTS, N, p=[0.25, 0.4, 0.35])
    teacher = np.clip(np.round(rng.normal(5, 2.5, N)), 0, 10)
    student = np.clip(teacher + rng.normal(0, 1.2, N) + np.where(account == "creator", 1.5, 0.0), 0, 10)
    has_teacher = rng.random(N) < 0.8
    status = np.where(rng.random(N) < 0.03, "error", "ok")
    return pl.DataFrame(
        {
            "item_id": [f"post{i}" for i in range(N)],
            "post_id": [f"post{i}" for i in range(N)],
            "caption": ["a caption"] * N,
            "bundle": ["student"] * N,
            "status": status.tolist(),
            "account": account.tolist(),
            "likes": rng.integers(0, 10_000, N),  # a count: no grouping
            "label__score": [float(t) if h else None for t, h in zip(teacher, has_teacher, strict=True)],
            "score": [float(s) if st == "ok" else None for s, st in zip(student, status, strict=True)],
        }
    )


STUDENT = output_columns(
    "student", [Decoder(output="score", field="score", kind="scale")], {"score": 1}, None
)
LABELS = {"account": "str", "likes": "int", "score": "float"}


def _bucket(s: np.ndarray) -> np.ndarray:
    """0-3, 4-6, 7-10 by the score rounded half up (the student's reporting buckets)."""
    r = np.floor(s + 0.5)
    return np.select([r <= 3, r <= 6], [0, 1], 2)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    df = _posts()
    folder = tmp_path_factory.mktemp("score")
    preds = write_v2_parts(df, folder / "preds", LABELS, STUDENT, posts=True)
    summary = evaluate_predictions(preds, folder / "report", n_boot=N_BOOT, seed=1)
    metrics = pl.read_parquet(folder / "report" / "metrics.parquet")
    return df.filter(pl.col("status") == "ok"), summary, metrics, folder / "report"


def _value(metrics: pl.DataFrame, metric: str, grouping: str, group: str) -> dict:
    rows = metrics.filter(
        (pl.col("task") == "score")
        & (pl.col("metric") == metric)
        & (pl.col("grouping") == grouping)
        & (pl.col("group") == group)
    )
    assert rows.height == 1, (metric, grouping, group)
    return rows.row(0, named=True)


def test_the_score_task_groups_by_the_posts_labels(evaluated):
    _, summary, _, _ = evaluated
    (task,) = summary.tasks
    assert (task.bundle, task.task, task.group_columns) == ("student", "score", ["account"])
    assert [m.name for m in task.headline] == [
        "mean_score",
        "share[0-3]",
        "share[4-6]",
        "share[7-10]",
        "mae",
        "bias",
    ]
    assert summary.n_error == int((_posts()["status"] == "error").sum())


@pytest.mark.parametrize("group", [None, *ACCOUNTS])
def test_mean_share_mae_bias_per_group_match_numpy(evaluated, group):
    ok, _, metrics, _ = evaluated
    rows = ok if group is None else ok.filter(pl.col("account") == group)
    grouping, label = ("overall", "overall") if group is None else ("account", group)
    s = rows["score"].to_numpy()
    ref = rows["label__score"].fill_null(np.nan).to_numpy()
    has = np.isfinite(ref)

    mean = _value(metrics, "mean_score", grouping, label)
    assert mean["value"] == pytest.approx(s.mean(), rel=1e-12) and mean["n"] == len(s)
    for i, b in enumerate(["0-3", "4-6", "7-10"]):
        assert _value(metrics, f"share[{b}]", grouping, label)["value"] == pytest.approx(
            np.mean(_bucket(s) == i), rel=1e-12
        )
    mae = _value(metrics, "mae", grouping, label)
    assert mae["value"] == pytest.approx(np.abs(s[has] - ref[has]).mean(), rel=1e-12)
    assert mae["n_eff"] == int(has.sum()) and mae["n"] == len(s)
    bias = _value(metrics, "bias", grouping, label)
    assert bias["value"] == pytest.approx((s[has] - ref[has]).mean(), rel=1e-12)

    # the bootstrap CI of the mean against scipy's percentile bootstrap (different draws: close, not equal)
    ref_ci = stats.bootstrap(
        (s,), np.mean, n_resamples=N_BOOT, method="percentile", random_state=np.random.default_rng(7)
    ).confidence_interval
    width = ref_ci.high - ref_ci.low
    assert abs(mean["ci_low"] - ref_ci.low) < 0.1 * width
    assert abs(mean["ci_high"] - ref_ci.high) < 0.1 * width


def test_the_bucket_confusion_against_the_reference(evaluated):
    ok, _, _, report = evaluated
    conf = pl.read_parquet(report / "confusion.parquet").filter(
        (pl.col("task") == "score") & (pl.col("grouping") == "overall")
    )
    s = ok["score"].to_numpy()
    ref = ok["label__score"].fill_null(np.nan).to_numpy()
    has = np.isfinite(ref)
    names = ["0-3", "4-6", "7-10"]
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (_bucket(ref[has]), _bucket(s[has])), 1)
    got = {(r["true"], r["pred"]): r["count"] for r in conf.iter_rows(named=True)}
    assert {(names[i], names[j]): int(expected[i, j]) for i in range(3) for j in range(3)} == got


def test_the_score_task_is_in_the_report(evaluated):
    _, _, _, report = evaluated
    page = (report / "index.html").read_text()
    assert "student — score" in page and "share[7-10]" in page and "score buckets" in page
    doc = json.loads((report / "summary.json").read_text())
    assert doc["tasks"][0]["task"] == "score"
    creator = next(
        d for d in doc["tasks"][0]["disparities"] if d["metric"] == "mae" and d["grouping"] == "account"
    )
    assert creator["worst_group"] == "creator"  # the planted offset: the student over-scores creators


def test_without_a_reference_score_only_the_distribution_is_reported(tmp_path):
    df = _posts(seed=3).drop("label__score")
    preds = write_v2_parts(df, tmp_path / "p", {"account": "str", "likes": "int"}, STUDENT, posts=True)
    s = evaluate_predictions(preds, tmp_path / "r", n_boot=50, by=["account"])
    (task,) = s.tasks
    assert [m.name for m in task.headline] == ["mean_score", "share[0-3]", "share[4-6]", "share[7-10]"]
    ok = df.filter(pl.col("status") == "ok")
    assert task.headline[0].value == pytest.approx(ok["score"].mean(), rel=1e-12)
    assert not (tmp_path / "r" / "confusion.parquet").exists()
