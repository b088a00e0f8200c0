"""Concept / demographic associations for multi-label outputs (hundreds of concepts).

Per concept and demographic group: the detection rate (with a Wilson interval), a 2x2 test of the group
against everyone else (chi-square with Yates' correction; Fisher's exact test where an expected count is
below 5), the odds ratio with a Woolf interval (Haldane's +0.5 on every cell when a cell is zero), and
Benjamini-Hochberg q-values across every concept x group test. Concepts a researcher lists as ones that
should be unrelated to demographics are marked ``spurious`` where their association is significant.

Attribute edits: where the same identities appear unedited and edited (sunglasses, beard, lipstick), the
change in each concept's rate the edit causes, paired by identity, per group.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from replaybench.errors import EvaluationError, InputNotFoundError
from replaybench.evaluate import messages as msg
from replaybench.evaluate.predictions import CONCEPT_PREFIX, concept_columns

FISHER_MIN_EXPECTED = 5.0
OVERALL = "overall"


@dataclass(frozen=True)
class Detections:
    """A boolean detection matrix (items x concepts) and which cells were observed at all."""

    concepts: list[str]
    detected: np.ndarray  # (n, K) bool
    observed: np.ndarray  # (n, K) bool: False where a score column was null


def detections(df: pl.DataFrame, *, threshold: float | None = None, top_k: int | None = None) -> Detections:
    """Detections from ``concept__<name>`` score columns (score >= threshold, default 0.5) or from a
    ``concepts`` list of {label, score} (presence in the list; optionally only the first ``top_k``
    entries, and only scores >= ``threshold``)."""
    cols = concept_columns(df)
    n = df.height
    if cols:
        scores = df.select(pl.col(c).cast(pl.Float64) for c in cols).to_numpy()
        observed = np.isfinite(scores)
        thr = 0.5 if threshold is None else threshold
        with np.errstate(invalid="ignore"):
            det = np.where(observed, scores >= thr, False)
        return Detections([c[len(CONCEPT_PREFIX) :] for c in cols], det, observed)
    if "concepts" not in df.columns:
        raise EvaluationError(msg.NO_CONCEPTS)
    long = (
        df.select(pl.int_range(n).alias("_row"), pl.col("concepts"))
        .explode("concepts")
        .drop_nulls("concepts")
        .with_columns(pl.int_range(pl.len()).over("_row").alias("_rank"))
        .unnest("concepts")
    )
    if top_k is not None:
        long = long.filter(pl.col("_rank") < top_k)
    if threshold is not None:
        long = long.filter(pl.col("score") >= threshold)
    names = sorted(set(long["label"].to_list()))
    code = {c: i for i, c in enumerate(names)}
    det = np.zeros((n, len(names)), dtype=bool)
    det[long["_row"].to_numpy(), np.array([code[c] for c in long["label"].to_list()], dtype=np.int64)] = True
    # a row with a null list was not scored at all: it must not count as "nothing detected"
    scored = df["concepts"].is_not_null().to_numpy()
    return Detections(names, det, np.repeat(scored[:, None], len(names), axis=1))


def wilson(k: np.ndarray, n: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for k successes of n."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        den = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    # clipped: floating-point noise must not put a bound past the rate it brackets at 0 or 1
    return np.clip(np.minimum(centre - half, p), 0, 1), np.clip(np.maximum(centre + half, p), 0, 1)


def odds_ratio(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, z: float):
    """Odds ratio a*d/(b*c) with Woolf CI; Haldane-Anscombe +0.5 on all cells of a table with a zero."""
    cells = np.stack([a, b, c, d]).astype(np.float64)
    cells = cells + 0.5 * (cells == 0).any(axis=0)
    a_, b_, c_, d_ = cells
    log_or = np.log(a_ * d_ / (b_ * c_))
    se = np.sqrt(1 / a_ + 1 / b_ + 1 / c_ + 1 / d_)
    return np.exp(log_or), np.exp(log_or - z * se), np.exp(log_or + z * se)


def two_by_two_pvalues(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """p-values of independence for many 2x2 tables [[a, b], [c, d]], and the test used per table.

    Chi-square with Yates' correction (what ``scipy.stats.chi2_contingency`` does for one degree of
    freedom), vectorised; Fisher's exact test where any expected count is below 5. A table with an empty
    row or column carries no evidence: p = 1.
    """
    from scipy import stats

    obs = np.stack([a, b, c, d], axis=-1).astype(np.float64)  # (..., 4)
    r1, r2 = a + b, c + d
    c1, c2 = a + c, b + d
    tot = r1 + r2
    with np.errstate(divide="ignore", invalid="ignore"):
        exp = np.stack([r1 * c1, r1 * c2, r2 * c1, r2 * c2], axis=-1) / tot[..., None]
    degenerate = (np.minimum(np.minimum(r1, r2), np.minimum(c1, c2)) == 0) | (tot == 0)
    diff = exp - obs
    adj = obs + np.minimum(0.5, np.abs(diff)) * np.sign(diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi = np.where(degenerate, 0.0, np.nansum((adj - exp) ** 2 / exp, axis=-1))
    p = stats.chi2.sf(chi, 1)
    test = np.where(degenerate, "none", "chi2").astype(object)
    small = ~degenerate & (exp.min(axis=-1) < FISHER_MIN_EXPECTED)
    for i in np.flatnonzero(small):
        table = [[int(a.flat[i]), int(b.flat[i])], [int(c.flat[i]), int(d.flat[i])]]
        p.flat[i] = stats.fisher_exact(table).pvalue
        test.flat[i] = "fisher"
    p = np.where(degenerate, 1.0, p)
    return p, test


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted q-values (NaN p-values are left out and stay NaN)."""
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        from scipy.stats import false_discovery_control

        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def read_concept_list(path: Path) -> list[str]:
    """A list of concept names, one a line; blank lines and ``#`` comments ignored."""
    if not Path(path).is_file():
        raise InputNotFoundError(msg.SPURIOUS_FILE_NOT_FOUND.format(path=path))
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def _group_columns(df: pl.DataFrame, by: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for f in by:
        out[f] = np.array(df[f].cast(pl.String).to_list(), dtype=object)
    if len(by) > 1:
        # one intersection (of the first two features): deeper ones fragment into tiny groups
        pair = list(by[:2])
        joined = [
            None if any(v is None for v in vals) else " / ".join(vals)
            for vals in zip(*(out[f] for f in pair), strict=True)
        ]
        out["+".join(pair)] = np.array(joined, dtype=object)
    return out


def concept_associations(
    df: pl.DataFrame,
    by: Sequence[str],
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    alpha: float = 0.05,
    ci: float = 0.95,
    spurious: Iterable[str] = (),
    min_group_size: int = 30,
) -> pl.DataFrame:
    """One row per (concept, grouping, group): n, detected, rate (+ Wilson CI), rate among everyone else,
    odds ratio (+ CI), test, p, BH q across all rows, ``significant`` (q < alpha), ``spurious``, flags."""
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - ci) / 2))
    det = detections(df, threshold=threshold, top_k=top_k)
    spurious_set = set(spurious)
    parts = []
    for grouping, col in _group_columns(df, by).items():
        known = np.array([v is not None for v in col])
        obs = det.observed & known[:, None]
        n_tot = obs.sum(axis=0)
        k_tot = (det.detected & obs).sum(axis=0)
        for g in sorted({v for v in col if v is not None}):
            m = (col == g)[:, None] & obs
            n_g = m.sum(axis=0)
            k_g = (det.detected & m).sum(axis=0)
            a, b, c, d = k_g, n_g - k_g, k_tot - k_g, (n_tot - n_g) - (k_tot - k_g)
            p, test = two_by_two_pvalues(a, b, c, d)
            or_, or_lo, or_hi = odds_ratio(a, b, c, d, z)
            r_lo, r_hi = wilson(k_g.astype(float), n_g.astype(float), z)
            with np.errstate(divide="ignore", invalid="ignore"):
                rate, rest = k_g / n_g, (k_tot - k_g) / (n_tot - n_g)
            parts.append(
                pl.DataFrame(
                    {
                        "concept": det.concepts,
                        "grouping": grouping,
                        "group": g,
                        "n": n_g.astype(np.int64),
                        "detected": k_g.astype(np.int64),
                        "rate": rate,
                        "rate_ci_low": r_lo,
                        "rate_ci_high": r_hi,
                        "rate_rest": rest,
                        "rate_overall": k_tot / np.maximum(n_tot, 1),
                        "odds_ratio": or_,
                        "or_ci_low": or_lo,
                        "or_ci_high": or_hi,
                        "test": test.astype(str),
                        "p_value": p,
                    },
                    strict=False,
                )
            )
    if not parts:
        return _empty_associations()
    out = pl.concat(parts).with_columns(pl.col(pl.Float64).fill_nan(None))
    q = benjamini_hochberg(out["p_value"].fill_null(float("nan")).to_numpy())
    out = out.with_columns(pl.Series("q_value", q).fill_nan(None))
    sig = (pl.col("q_value") < alpha).fill_null(False)
    return out.with_columns(
        sig.alias("significant"),
        (sig & pl.col("concept").is_in(list(spurious_set))).alias("spurious"),
        pl.when(pl.col("n") < min_group_size)
        .then(pl.lit(["small_group"]))
        .otherwise(pl.lit([], dtype=pl.List(pl.String)))
        .alias("flags"),
    )


def _empty_associations() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "concept": pl.String,
            "grouping": pl.String,
            "group": pl.String,
            "n": pl.Int64,
            "detected": pl.Int64,
            "rate": pl.Float64,
            "p_value": pl.Float64,
            "q_value": pl.Float64,
            "significant": pl.Boolean,
            "spurious": pl.Boolean,
        }
    )


def edit_effects(
    df: pl.DataFrame,
    by: Sequence[str],
    *,
    identity: str = "identity",
    edit: str = "edit",
    baseline: str = "none",
    threshold: float | None = None,
    top_k: int | None = None,
    ci: float = 0.95,
) -> pl.DataFrame:
    """Change in each concept's detection rate caused by each edit, paired by identity, per group.

    For identity i and edit e: delta_i = rate(i, e) - rate(i, baseline) (a rate because an identity may
    have several images per edit). Reported per group (the identity's group) and overall: n identities
    with both, mean baseline rate, mean edited rate, mean delta and a normal-approximation CI.
    Returns an empty frame when the columns are absent.
    """
    if identity not in df.columns or edit not in df.columns:
        return pl.DataFrame()
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - ci) / 2))
    det = detections(df, threshold=threshold, top_k=top_k)
    names = [f"_c{i}" for i in range(len(det.concepts))]
    valued = np.where(det.observed, det.detected.astype(np.float64), np.nan)
    table = pl.DataFrame({n: valued[:, i] for i, n in enumerate(names)}).with_columns(
        df[identity].cast(pl.String).alias("_identity"),
        df[edit].cast(pl.String).alias("_edit"),
        *(df[f].cast(pl.String) for f in by),
    )
    per = table.group_by("_identity", "_edit").agg(
        *(pl.col(n).mean() for n in names), *(pl.col(f).first() for f in by)
    )
    base = per.filter(pl.col("_edit") == baseline)
    parts = []
    for e in sorted(set(per["_edit"].to_list()) - {baseline}):
        pair = base.join(per.filter(pl.col("_edit") == e), on="_identity", suffix="_e")
        if pair.height == 0:
            continue
        b = pair.select(names).to_numpy()
        x = pair.select(f"{n}_e" for n in names).to_numpy()
        delta = x - b
        groupings: list[tuple[str, str, np.ndarray]] = [(OVERALL, OVERALL, np.ones(pair.height, dtype=bool))]
        for f in by:
            col = np.array(pair[f].to_list(), dtype=object)
            groupings += [(f, g, col == g) for g in sorted({v for v in col if v is not None})]
        for grouping, g, mask in groupings:
            dm = delta[mask]
            n_id = np.isfinite(dm).sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"), _quiet():
                mean = np.nanmean(dm, axis=0)
                sd = np.nanstd(dm, axis=0, ddof=1)
                half = z * sd / np.sqrt(n_id)
                parts.append(
                    pl.DataFrame(
                        {
                            "edit": e,
                            "concept": det.concepts,
                            "grouping": grouping,
                            "group": g,
                            "n_identities": n_id.astype(np.int64),
                            "rate_baseline": np.nanmean(b[mask], axis=0),
                            "rate_edited": np.nanmean(x[mask], axis=0),
                            "delta": mean,
                            "ci_low": mean - half,
                            "ci_high": mean + half,
                        }
                    )
                )
    return pl.concat(parts).with_columns(pl.col(pl.Float64).fill_nan(None)) if parts else pl.DataFrame()


@contextmanager
def _quiet() -> Iterator[None]:
    """Groups where every identity lacks a score give all-NaN means: expected, reported as null."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
