"""Agreement between student and teacher scores (0-10): MAE, within +-1/+-2, correlations, buckets."""

from __future__ import annotations

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
