"""Agreement between two prediction runs over the same items (trace vs replay, fp32 vs int8, teacher vs
student, in the app vs on the workstation): label agreement and Cohen's kappa for categorical fields, mean
absolute difference for numbers, overall and per group. Every row says which route (``in_app``,
``offline``) the numbers of each run came from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from replaybench.errors import EvaluationError
from replaybench.evaluate import messages as msg
from replaybench.evaluate.predictions import CONCEPT_PREFIX

#: Fields compared when both runs have them (decoded outputs, not raw tensors).
_SKIP = {"item_id", "source_path", "bundle", "status", "error", "route", "raw_result"}
OVERALL = "overall"
#: The route of predictions written before the route column existed.
UNRECORDED = "unrecorded"


def routes(df: pl.DataFrame) -> str:
    """The route(s) a set of prediction rows came from: ``in_app``, ``offline``, both joined by ``+``."""
    if "route" not in df.columns:
        return UNRECORDED
    found = sorted({str(v) for v in df["route"].to_list() if v is not None})
    return "+".join(found) or UNRECORDED


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two label arrays (1.0 when both are constant and equal)."""
    if len(a) == 0:
        return float("nan")
    labels = sorted({*a.tolist(), *b.tolist()}, key=str)
    idx = {v: i for i, v in enumerate(labels)}
    k = len(labels)
    cm = np.zeros((k, k))
    np.add.at(cm, (np.array([idx[v] for v in a]), np.array([idx[v] for v in b])), 1)
    n = cm.sum()
    po = np.trace(cm) / n
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / n**2
    return 1.0 if pe == 1 else float((po - pe) / (1 - pe))


def _fields(a: pl.DataFrame, b: pl.DataFrame, labels: set[str]) -> list[str]:
    shared = [c for c in a.columns if c in b.columns and c not in _SKIP and c not in labels]
    return [
        c
        for c in shared
        if not c.startswith("raw__")
        and (c.endswith("_pred") or c.startswith("p_") or c.startswith(CONCEPT_PREFIX))
        and (a[c].dtype.is_numeric() or a[c].dtype == pl.String)
    ]


def _raw_fields(a: pl.DataFrame, b: pl.DataFrame) -> list[str]:
    """Raw output tensors both runs hold (the same model in two runtimes, or two formats of it)."""
    return [
        c
        for c in a.columns
        if c.startswith("raw__") and c in b.columns and isinstance(a[c].dtype, pl.List | pl.Array)
    ]


def _tensor_rows(
    joined: pl.DataFrame, field: str, groups: list[tuple[str, str, np.ndarray]]
) -> list[dict[str, object]]:
    """Per item, the largest |a - b| over the tensor's elements; ``agreement``: the share of items whose
    tensors agree within 1e-3 of the value range (float noise between engines; the same rule as
    preprocessing fidelity for float tensors)."""
    x = [np.asarray(v, dtype=np.float64) for v in joined[field].to_list()]
    y = [np.asarray(v, dtype=np.float64) for v in joined["_b"].to_list()]
    per_item = np.array(
        [np.max(np.abs(u - v)) if u.shape == v.shape else np.inf for u, v in zip(x, y, strict=True)]
    )
    span = max((float(np.ptp(u)) for u in x + y if u.size), default=0.0) or 1.0
    rows = []
    for grouping, group, m in groups:
        d = per_item[m]
        rows.append(
            _row(
                field,
                grouping,
                group,
                int(m.sum()),
                "tensor",
                agreement=float(np.mean(d <= 1e-3 * span)),
                mad=float(np.mean(d)),
                max_diff=float(np.max(d)),
            )
        )
    return rows


def compare_predictions(
    a: pl.DataFrame, b: pl.DataFrame, by: Sequence[str], *, label_columns: Sequence[str] = ()
) -> pl.DataFrame:
    """One row per (field, grouping, group): n, kind ('label', 'numeric' or 'tensor' for raw outputs),
    agreement, kappa, mean_abs_diff, max_abs_diff, and the routes the compared numbers came from
    (``route`` for ``a``, ``route_other`` for ``b``).

    Rows are joined on ``item_id``, and on ``bundle`` too when the two runs name the same bundles (the
    same bundles replayed twice); otherwise each run is expected to hold one bundle per field.
    """
    same_bundles = set(a["bundle"].unique().to_list()) == set(b["bundle"].unique().to_list())
    keys = ["item_id", "bundle"] if same_bundles else ["item_id"]
    fields = _fields(a, b, set(label_columns)) + _raw_fields(a, b)
    if not fields:
        raise EvaluationError(msg.COMPARE_NO_FIELDS)
    rows: list[dict[str, object]] = []
    for field in fields:
        route_a = [pl.col("route").alias("_route_a")] if "route" in a.columns else []
        route_b = [pl.col("route").alias("_route_b")] if "route" in b.columns else []
        left = a.filter(pl.col(field).is_not_null()).select(
            *keys, field, *[g for g in by if g in a.columns], *route_a
        )
        right = b.filter(pl.col(field).is_not_null()).select(*keys, pl.col(field).alias("_b"), *route_b)
        joined = left.join(right, on=keys, how="inner")
        if joined.height == 0:
            continue
        where = {
            "route": routes(joined.select(pl.col("_route_a").alias("route")) if route_a else pl.DataFrame()),
            "route_other": routes(
                joined.select(pl.col("_route_b").alias("route")) if route_b else pl.DataFrame()
            ),
        }
        first_row = len(rows)
        groups: list[tuple[str, str, np.ndarray]] = [(OVERALL, OVERALL, np.ones(joined.height, dtype=bool))]
        for g in by:
            if g in joined.columns:
                col = np.array(joined[g].cast(pl.String).to_list(), dtype=object)
                groups += [(g, v, col == v) for v in sorted({v for v in col if v is not None})]
        if field.startswith("raw__"):
            rows += [r | where for r in _tensor_rows(joined, field, groups)]
            continue
        numeric = joined[field].dtype.is_numeric()
        x, y = joined[field].to_numpy(), joined["_b"].to_numpy()
        for grouping, group, m in groups:
            xs, ys = x[m], y[m]
            if numeric:
                xs, ys = xs.astype(np.float64), ys.astype(np.float64)
                diff = np.abs(xs - ys)
                rows.append(
                    _row(
                        field,
                        grouping,
                        group,
                        int(m.sum()),
                        "numeric",
                        mad=float(np.nanmean(diff)),
                        max_diff=float(np.nanmax(diff)),
                    )
                )
            else:
                rows.append(
                    _row(
                        field,
                        grouping,
                        group,
                        int(m.sum()),
                        "label",
                        agreement=float(np.mean(xs == ys)),
                        kappa=cohen_kappa(xs, ys),
                    )
                )
        rows[first_row:] = [r | where for r in rows[first_row:]]
    if not rows:
        raise EvaluationError(msg.COMPARE_NO_OVERLAP)
    return pl.DataFrame(rows)


def _row(field: str, grouping: str, group: str, n: int, kind: str, **vals: float) -> dict[str, object]:
    return {
        "field": field,
        "grouping": grouping,
        "group": group,
        "n": n,
        "kind": kind,
        "agreement": vals.get("agreement"),
        "kappa": vals.get("kappa"),
        "mean_abs_diff": vals.get("mad"),
        "max_abs_diff": vals.get("max_diff"),
    }
