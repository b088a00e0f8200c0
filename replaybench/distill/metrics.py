"""Agreement between student and teacher scores (0-10): MAE, within +-1/+-2, correlations, buckets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BUCKETS = ("0-3", "4-6", "7-10")


def bucket_of(score: float) -> str:
    """The score bucket, by the rounded score: 0-3, 4-6 or 7-10."""
    r = np.floor(float(score) + 0.5)  # half up (Python's round() would send 6.5 to 6)
    return BUCKETS[0] if r <= 3 else BUCKETS[1] if r <= 6 else BUCKETS[2]


def bucket_index(scores: np.ndarray) -> np.ndarray:
    r = np.floor(np.asarray(scores, dtype=np.float64) + 0.5)
    return np.where(r <= 3, 0, np.where(r <= 6, 1, 2))


def agreement(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """MAE, within +-1 and +-2, Pearson and Spearman, and the 3x3 bucket confusion (rows: teacher)."""
    from scipy.stats import pearsonr, spearmanr

    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    err = np.abs(t - p)
    const = t.std() == 0 or p.std() == 0 or len(t) < 2
    confusion = np.zeros((3, 3), dtype=np.int64)
    np.add.at(confusion, (bucket_index(t), bucket_index(p)), 1)
    return {
        "n": len(t),
        "mae": float(err.mean()) if len(t) else float("nan"),
        "within_1": float((err <= 1.0).mean()) if len(t) else float("nan"),
        "within_2": float((err <= 2.0).mean()) if len(t) else float("nan"),
        "pearson": None if const else float(pearsonr(t, p).statistic),
        "spearman": None if const else float(spearmanr(t, p).statistic),
        "buckets": list(BUCKETS),
        "confusion": confusion.tolist(),
    }


def score_summary(predictions: Path) -> dict[str, Any]:
    """The score distribution over every part of a predictions folder (all student bundles' rows):
    counts and shares per bucket, mean, std, quantiles, and the error rows."""
    import polars as pl

    from replaybench.replay.sink import existing_parts

    parts = existing_parts(predictions)
    df = (
        pl.concat([pl.read_parquet(p, columns=["status", "score"]) for p in parts])
        if parts
        else pl.DataFrame({"status": [], "score": []}, schema={"status": pl.String, "score": pl.Float64})
    )
    s = df.filter((pl.col("status") == "ok") & pl.col("score").is_not_null())["score"].to_numpy()
    s = s.astype(np.float64)
    counts = np.bincount(bucket_index(s), minlength=3) if len(s) else np.zeros(3, np.int64)
    return {
        "rows": df.height,
        "ok": len(s),
        "errors": int((df["status"] == "error").sum()),
        "buckets": {
            b: {"count": int(c), "share": float(c) / len(s) if len(s) else 0.0}
            for b, c in zip(BUCKETS, counts, strict=True)
        },
        "mean": float(s.mean()) if len(s) else None,
        "std": float(s.std()) if len(s) else None,
        "quantiles": {q: float(np.quantile(s, float(q))) for q in ("0.1", "0.5", "0.9")} if len(s) else {},
    }
