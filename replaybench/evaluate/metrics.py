"""Disaggregated metrics with bootstrap confidence intervals, shaped like fairlearn's ``MetricFrame``.

A ``Metric`` is defined by per-row statistics and a function that combines their column means (or the
median of one column). That one shape covers accuracy, rates such as recall or FPR (a ratio of two means),
balanced accuracy (the mean of per-class ratios), MAE and signed bias, and lets the bootstrap run as one
matrix product per group: resample counts ``C`` (replicates x rows) times the statistics matrix ``S``
gives every replicate's means at once. Plain ``f(y_true, y_pred) -> float`` callables are accepted too
(fairlearn's interface); they are bootstrapped by a loop, which is slower but exact.

Example::

    frame = MetricFrame(
        metrics=classification_metrics(["female", "male"]),
        y_true=df["gender"], y_pred=df["gender_pred"],
        sensitive_features=df.select("race", "gender"),
        seed=0,
    )
    frame.overall["accuracy"]; frame.by_group; frame.difference(grouping="race")["accuracy"]

Results carry ``n`` (rows in the group) and ``n_eff`` (for a rate, the rows it is a rate of: the minors
in ``minors_as_adults@18``, the true females in ``recall[female]``); a rate over fewer than
``min_denominator`` items is flagged ``small_denominator`` and, like a small group, never ranked.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from replaybench.errors import EvaluationError
from replaybench.evaluate import messages as msg

Better = Literal["higher", "lower", "zero", "none"]
Reduce = Literal["mean", "median", "callable"]
AggregationMethod = Literal["between_groups", "to_overall"]
AGGREGATION_METHODS: tuple[str, ...] = ("between_groups", "to_overall")

OVERALL = "overall"
#: Flags a result row can carry. A flagged group is reported but never ranked in a disparity.
FLAG_SMALL = "small_group"
FLAG_EMPTY = "empty"
FLAG_UNDEFINED = "undefined"
FLAG_MISSING = "missing_excluded"
FLAG_CI_PARTIAL = "ci_partial"
FLAG_UNKNOWN = "unknown_group"  # a group whose label is missing: reported, never ranked
# a rate whose denominator is tiny (3 minors in a group of 60): reported, not ranked
FLAG_SMALL_DENOMINATOR = "small_denominator"

#: FairFace's age bins, the common currency of face-dataset age labels.
AGE_BINS: tuple[tuple[int, int], ...] = (
    (0, 2),
    (3, 9),
    (10, 19),
    (20, 29),
    (30, 39),
    (40, 49),
    (50, 59),
    (60, 69),
    (70, 200),
)
#: Age-assurance thresholds (COPPA 13, many platforms 16, adulthood 18).
AGE_THRESHOLDS: tuple[int, ...] = (13, 16, 18)

_MISSING_GROUP = "(missing)"
_CELLS_PER_CHUNK = 4_000_000  # resample-count cells held at once: bounds memory at ~32 MB


@dataclass(frozen=True)
class Metric:
    """A metric from per-row statistics.

    ``stats(y_true, y_pred)`` returns an ``(n, k)`` float array; for ``reduce="mean"`` the metric is
    ``combine(column_means)`` (``combine`` works on any leading shape, so it runs on all bootstrap
    replicates at once); for ``reduce="median"`` it is the median of the single column; for
    ``reduce="callable"`` ``fn(y_true, y_pred)`` is called directly. ``better`` says which direction is
    good, which picks the worst group in a disparity.
    """

    name: str
    stats: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    combine: Callable[[np.ndarray], np.ndarray] | None = None
    better: Better = "higher"
    reduce: Reduce = "mean"
    fn: Callable[[np.ndarray, np.ndarray], float] | None = None
    description: str = ""
    #: for a rate, the column of ``stats`` counting the items it is a rate of (``n_eff`` in the results)
    denominator: int | None = None


def _first(m: np.ndarray) -> np.ndarray:
    return m[..., 0]


def _ratio(m: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m[..., 1] > 0, m[..., 0] / np.where(m[..., 1] > 0, m[..., 1], 1.0), np.nan)


def _col(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1, 1)


def _pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.column_stack([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)])


# Per-class rates, generated for every class from this table: name -> (numerator, denominator, better).
# Each takes (y_true, y_pred, cls) and returns a boolean mask.
_ClassMask = Callable[[np.ndarray, np.ndarray, Any], np.ndarray]
CLASS_RATES: dict[str, tuple[_ClassMask, _ClassMask, Better, str]] = {
    "precision": (
        lambda t, p, c: (p == c) & (t == c),
        lambda t, p, c: p == c,
        "higher",
        "of items predicted {c}, the share truly {c}",
    ),
    "recall": (
        lambda t, p, c: (p == c) & (t == c),
        lambda t, p, c: t == c,
        "higher",
        "of items truly {c}, the share predicted {c}",
    ),
    "fpr": (
        lambda t, p, c: (p == c) & (t != c),
        lambda t, p, c: t != c,
        "lower",
        "of items not {c}, the share predicted {c}",
    ),
    "fnr": (
        lambda t, p, c: (p != c) & (t == c),
        lambda t, p, c: t == c,
        "lower",
        "of items truly {c}, the share predicted otherwise",
    ),
    "selection_rate": (
        lambda t, p, c: p == c,
        lambda t, p, c: np.ones(len(p), dtype=bool),
        "none",
        "share of items predicted {c}",
    ),
}

# Age-assurance error rates, generated for every threshold. Truth is an interval [low, high] so that
# binned labels (FairFace '10-19') count only where the whole bin lies on one side of the threshold.
_AgeMask = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]
THRESHOLD_RATES: dict[str, tuple[_AgeMask, _AgeMask, str]] = {
    "minors_as_adults": (
        lambda lo, hi, p, t: (hi < t) & (p >= t),
        lambda lo, hi, p, t: hi < t,
        "of people under {t}, the share predicted {t} or older",
    ),
    "adults_as_minors": (
        lambda lo, hi, p, t: (lo >= t) & (p < t),
        lambda lo, hi, p, t: lo >= t,
        "of people {t} or older, the share predicted under {t}",
    ),
}


def _class_rate(name: str, cls: Any) -> Metric:
    num, den, better, desc = CLASS_RATES[name]
    return Metric(
        name=f"{name}[{cls}]",
        stats=lambda t, p: _pair(num(t, p, cls), den(t, p, cls)),
        combine=_ratio,
        better=better,
        description=desc.format(c=cls),
        denominator=1,
    )


def _balanced_accuracy(classes: Sequence[Any]) -> Metric:
    def stats(t: np.ndarray, p: np.ndarray) -> np.ndarray:
        cols = []
        for c in classes:
            cols += [(t == c) & (p == c), t == c]
        return np.column_stack(cols).astype(np.float64)

    def combine(m: np.ndarray) -> np.ndarray:
        tp, pos = m[..., 0::2], m[..., 1::2]
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = np.where(pos > 0, tp / np.where(pos > 0, pos, 1.0), np.nan)
        present = np.isfinite(recall)
        # mean recall over the classes present in this sample (sklearn's definition)
        return np.where(
            present.any(axis=-1), np.nansum(recall, axis=-1) / np.maximum(present.sum(axis=-1), 1), np.nan
        )

    return Metric(
        "balanced_accuracy", stats, combine, "higher", description="mean recall over the true classes"
    )


def classification_metrics(classes: Sequence[Any]) -> dict[str, Metric]:
    """Accuracy, balanced accuracy and, for every class, every rate in ``CLASS_RATES``."""
    out = {
        "accuracy": Metric(
            "accuracy", lambda t, p: _col(t == p), _first, "higher", description="share predicted correctly"
        ),
        "balanced_accuracy": _balanced_accuracy(classes),
    }
    for cls in classes:
        for name in CLASS_RATES:
            m = _class_rate(name, cls)
            out[m.name] = m
    return out


def age_bin_index(age: np.ndarray, bins: Sequence[tuple[int, int]] = AGE_BINS) -> np.ndarray:
    """Index of the bin holding each age (a fractional age belongs to the year it has completed)."""
    lows = np.array([lo for lo, _ in bins], dtype=np.float64)
    return np.clip(np.searchsorted(lows, np.floor(age), side="right") - 1, 0, len(bins) - 1)


def _threshold_stats(num: _AgeMask, den: _AgeMask, th: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def stats(t: np.ndarray, p: np.ndarray) -> np.ndarray:
        return _pair(num(t[:, 0], t[:, 1], p, th), den(t[:, 0], t[:, 1], p, th))

    return stats


def age_metrics(
    *,
    exact_truth: bool,
    thresholds: Sequence[int] = AGE_THRESHOLDS,
    bins: Sequence[tuple[int, int]] = AGE_BINS,
) -> dict[str, Metric]:
    """Age metrics. ``y_true`` is an ``(n, 2)`` array of [low, high] (equal for exact ages).

    With exact truth: MAE, median absolute error, signed bias (prediction minus truth). Always: accuracy
    of age bins and, per threshold, minors predicted as adults and adults predicted as minors.
    """
    out: dict[str, Metric] = {}
    if exact_truth:
        out["mae"] = Metric(
            "mae", lambda t, p: _col(np.abs(p - t[:, 0])), _first, "lower", description="mean |error| (years)"
        )
        out["median_ae"] = Metric(
            "median_ae",
            lambda t, p: _col(np.abs(p - t[:, 0])),
            None,
            "lower",
            reduce="median",
            description="median |error| (years)",
        )
        out["bias"] = Metric(
            "bias",
            lambda t, p: _col(p - t[:, 0]),
            _first,
            "zero",
            description="mean signed error (years; + means predicted older)",
        )
    out["age_bin_accuracy"] = Metric(
        "age_bin_accuracy",
        lambda t, p: _col(age_bin_index(t[:, 0], bins) == age_bin_index(p, bins)),
        _first,
        "higher",
        description="share whose predicted age falls in the true age bin",
    )
    for t_ in thresholds:
        for name, (num, den, desc) in THRESHOLD_RATES.items():
            out[f"{name}@{t_}"] = Metric(
                f"{name}@{t_}",
                _threshold_stats(num, den, t_),
                _ratio,
                "lower",
                description=desc.format(t=t_),
                denominator=1,
            )
    return out


def _in_bucket(i: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from replaybench.distill.metrics import bucket_index

    return lambda t, p: _col(bucket_index(p) == i)


def score_metrics(*, reference: bool) -> dict[str, Metric]:
    """A student's 0-10 score per post. ``y_pred`` is the score; ``y_true`` an ``(n, 2)`` array of
    [has_reference, reference] (0 where the post has no reference score, so that no post is left out of
    the mean for lacking one).

    Always: the mean score and, per bucket of the rounded score (0-3, 4-6, 7-10, as the student's
    training reports them), the share of posts in it. With ``reference``: MAE and signed bias against
    the reference score, each over the posts that have one (``n_eff``).
    """
    from replaybench.distill.metrics import BUCKETS

    out: dict[str, Metric] = {
        "mean_score": Metric(
            "mean_score", lambda t, p: _col(p), _first, "none", description="mean score (0-10)"
        )
    }
    for i, name in enumerate(BUCKETS):
        out[f"share[{name}]"] = Metric(
            f"share[{name}]",
            _in_bucket(i),
            _first,
            "none",
            description=f"share of posts whose rounded score is {name}",
        )
    if reference:
        out["mae"] = Metric(
            "mae",
            lambda t, p: _pair(t[:, 0] * np.abs(p - t[:, 1]), t[:, 0]),
            _ratio,
            "lower",
            description="mean |score - reference score| over the posts with a reference",
            denominator=1,
        )
        out["bias"] = Metric(
            "bias",
            lambda t, p: _pair(t[:, 0] * (p - t[:, 1]), t[:, 0]),
            _ratio,
            "zero",
            description="mean score - reference score (+ means scored higher than the reference)",
            denominator=1,
        )
    return out


# ------------------------------------------------------------------------------------------ the frame


@dataclass(frozen=True)
class Disparity:
    """How far apart the groups of one grouping are on one metric, with bootstrap CIs."""

    metric: str
    grouping: str
    difference: float
    difference_ci: tuple[float, float]
    ratio: float
    ratio_ci: tuple[float, float]
    worst_group: str | None
    best_group: str | None
    worst_value: float
    n_groups: int
    excluded_groups: tuple[str, ...] = field(default_factory=tuple)


def _is_missing(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "fc":
        return np.isnan(a).any(axis=1) if a.ndim == 2 else np.isnan(a)
    if a.dtype.kind == "O":
        flat = [v is None or (isinstance(v, float) and math.isnan(v)) for v in a.reshape(len(a), -1)[:, 0]]
        return np.array(flat, dtype=bool)
    return np.zeros(len(a), dtype=bool)


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, pl.Series):
        if x.dtype == pl.String or x.dtype == pl.Categorical or x.dtype == pl.Enum:
            return np.array(x.cast(pl.String).to_list(), dtype=object)
        if x.dtype.is_numeric():
            return x.cast(pl.Float64).fill_null(float("nan")).to_numpy()
        return np.array(x.to_list(), dtype=object)
    a = np.asarray(x)
    if a.dtype.kind in "US":
        a = a.astype(object)
    return a


def _features(sf: Any, n: int) -> dict[str, np.ndarray]:
    if isinstance(sf, pl.DataFrame):
        cols = {c: sf[c] for c in sf.columns}
    elif isinstance(sf, Mapping):
        cols = dict(sf)
    elif isinstance(sf, pl.Series):
        cols = {sf.name or "sensitive_feature_0": sf}
    else:
        cols = {"sensitive_feature_0": sf}
    if not cols:
        raise EvaluationError(msg.NO_SENSITIVE_FEATURES)
    out = {}
    for name, col in cols.items():
        values = col.to_list() if isinstance(col, pl.Series) else list(np.asarray(col, dtype=object))
        if len(values) != n:
            raise EvaluationError(msg.LENGTH_MISMATCH.format(n_true=n, what=f"'{name}'", n_other=len(values)))
        out[name] = np.array(
            [
                _MISSING_GROUP if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                for v in values
            ],
            dtype=object,
        )
    return out


class MetricFrame:
    """Metrics overall and per group (single features and their intersections), with bootstrap CIs.

    Keyword-only, like fairlearn: ``metrics`` (a ``Metric``, a callable ``f(y_true, y_pred)``, or a
    dict of either), ``y_true``, ``y_pred``, ``sensitive_features`` (a polars DataFrame, a dict of
    columns, or one column). Rows whose label or prediction is missing (None/NaN) are left out and counted
    per group (flag ``missing_excluded``); groups smaller than ``min_group_size`` are reported with the flag
    ``small_group`` and are not ranked by ``difference``/``ratio``/``group_min``/``group_max`` unless
    ``include_small=True``. ``overall`` is always a dict keyed by metric name (fairlearn returns a scalar
    for a single metric; one return type spares callers a type switch).
    """

    def __init__(
        self,
        *,
        metrics: Metric | Callable[[np.ndarray, np.ndarray], float] | Mapping[str, Any],
        y_true: Any,
        y_pred: Any,
        sensitive_features: Any,
        ci: float | None = 0.95,
        n_boot: int = 1000,
        seed: int = 0,
        min_group_size: int = 30,
        min_denominator: int = 10,
        max_intersection: int | None = None,
    ) -> None:
        self.metrics = _normalise_metrics(metrics)
        if ci is not None and not 0 < ci < 1:
            raise EvaluationError(msg.BAD_CI.format(ci=ci))
        yt, yp = _as_array(y_true), _as_array(y_pred)
        if len(yp) != len(yt):
            raise EvaluationError(msg.LENGTH_MISMATCH.format(n_true=len(yt), what="y_pred", n_other=len(yp)))
        feats = _features(sensitive_features, len(yt))
        self.ci, self.n_boot, self.seed, self.min_group_size = ci, n_boot, seed, min_group_size
        self.min_denominator = min_denominator
        self.features = list(feats)
        valid = ~(_is_missing(yt) | _is_missing(yp))
        if not valid.any():
            raise EvaluationError(msg.NOT_ENOUGH_ROWS.format(n=len(yt)))
        self.n_rows, self.n_valid = len(yt), int(valid.sum())
        yt, yp = yt[valid], yp[valid]
        if yt.dtype == object and all(isinstance(v, int | float | np.number) for v in yt[:1]):
            yt = yt.astype(np.float64)
        if yp.dtype == object and all(isinstance(v, int | float | np.number) for v in yp[:1]):
            yp = yp.astype(np.float64)

        # statistics matrix: one block of columns per mean-reduced metric, one column per median metric
        self._blocks: dict[str, slice] = {}
        blocks = []
        start = 0
        for name, m in self.metrics.items():
            if m.reduce == "callable":
                continue
            assert m.stats is not None
            s = np.asarray(m.stats(yt, yp), dtype=np.float64).reshape(len(yt), -1)
            self._blocks[name] = slice(start, start + s.shape[1])
            start += s.shape[1]
            blocks.append(s)
        self._S = np.column_stack(blocks) if blocks else np.zeros((len(yt), 0))
        self._yt, self._yp = yt, yp

        k = (
            len(self.features)
            if max_intersection is None
            else max(1, min(max_intersection, len(self.features)))
        )
        self.groupings: list[tuple[str, ...]] = [
            combo for r in range(1, k + 1) for combo in itertools.combinations(self.features, r)
        ]
        self._default = (
            self.groupings[-1] if len(self.groupings[-1]) == len(self.features) else self.groupings[0]
        )
        rows: list[dict[str, Any]] = []
        self._replicates: dict[tuple[str, str, str], np.ndarray] = {}
        self._overall_row = self._evaluate_group(
            OVERALL, {}, np.arange(self.n_valid), n_missing=self.n_rows - self.n_valid, key=(0,), rows=rows
        )
        for gi, grouping in enumerate(self.groupings, start=1):
            gname = "+".join(grouping)
            all_keys = np.array(["\x1f".join(v) for v in zip(*(feats[f] for f in grouping), strict=True)])
            keys_valid = all_keys[valid]
            for vi, key in enumerate(sorted(set(all_keys.tolist()))):
                members = np.flatnonzero(keys_valid == key)
                values = dict(zip(grouping, key.split("\x1f"), strict=True))
                n_missing = int((all_keys[~valid] == key).sum())
                self._evaluate_group(gname, values, members, n_missing=n_missing, key=(gi, vi), rows=rows)
        self._results = pl.DataFrame(
            rows,
            schema={
                "grouping": pl.String,
                "group": pl.String,
                **{f: pl.String for f in self.features},
                "metric": pl.String,
                "value": pl.Float64,
                "ci_low": pl.Float64,
                "ci_high": pl.Float64,
                "n": pl.Int64,
                "n_eff": pl.Int64,
                "n_missing": pl.Int64,
                "flags": pl.List(pl.String),
            },
        )

    # -- computation

    def _evaluate_group(
        self,
        grouping: str,
        values: dict[str, str],
        members: np.ndarray,
        *,
        n_missing: int,
        key: tuple[int, ...],
        rows: list[dict[str, Any]],
    ) -> dict[str, float]:
        n = len(members)
        label = OVERALL if grouping == OVERALL else " / ".join(values.values())
        point: dict[str, float] = {}
        reps: dict[str, np.ndarray] = {}
        n_eff: dict[str, int] = {}
        if n:
            S = self._S[members]
            for name, m in self.metrics.items():
                if m.denominator is not None and name in self._blocks:
                    n_eff[name] = int(round(S[:, self._blocks[name].start + m.denominator].sum()))
            means = S.mean(axis=0)
            for name, m in self.metrics.items():
                point[name] = float(self._point(m, name, S, means, members))
            if self.ci is not None and self.n_boot > 0:
                reps = self._bootstrap(S, members, np.random.default_rng([self.seed, *key]))
        alpha = (1 - (self.ci or 0.95)) / 2
        for name in self.metrics:
            value = point.get(name, float("nan"))
            flags = []
            if n == 0:
                flags.append(FLAG_EMPTY)
            elif n < self.min_group_size:
                flags.append(FLAG_SMALL)
            if n and not math.isfinite(value):
                flags.append(FLAG_UNDEFINED)
            elif n >= self.min_group_size and n_eff.get(name, n) < self.min_denominator:
                flags.append(FLAG_SMALL_DENOMINATOR)
            if n_missing:
                flags.append(FLAG_MISSING)
            if _MISSING_GROUP in values.values():
                flags.append(FLAG_UNKNOWN)
            lo = hi = float("nan")
            r = reps.get(name)
            if r is not None and math.isfinite(value):
                finite = r[np.isfinite(r)]
                if len(finite) < 0.95 * len(r):
                    flags.append(FLAG_CI_PARTIAL)
                if len(finite):
                    lo, hi = (float(v) for v in np.quantile(finite, [alpha, 1 - alpha]))
                self._replicates[(grouping, label, name)] = r
            rows.append(
                {
                    "grouping": grouping,
                    "group": label,
                    **{f: values.get(f) for f in self.features},
                    "metric": name,
                    "value": value,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n": n,
                    "n_eff": n_eff.get(name, n),
                    "n_missing": n_missing,
                    "flags": flags,
                }
            )
        return point

    def _point(self, m: Metric, name: str, S: np.ndarray, means: np.ndarray, members: np.ndarray) -> float:
        if m.reduce == "callable":
            assert m.fn is not None
            return float(m.fn(self._yt[members], self._yp[members]))
        block = self._blocks[name]
        if m.reduce == "median":
            return float(np.median(S[:, block.start]))
        assert m.combine is not None
        return float(m.combine(means[block]))

    def _bootstrap(
        self, S: np.ndarray, members: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Every metric's value on ``n_boot`` resamples (with replacement) of this group's rows."""
        n, B = len(members), self.n_boot
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.metrics}
        medians = {
            name: np.argsort(S[:, b.start], kind="stable")
            for name, b in self._blocks.items()
            if self.metrics[name].reduce == "median"
        }
        chunk = max(1, _CELLS_PER_CHUNK // max(n, 1))
        for b0 in range(0, B, chunk):
            nb = min(chunk, B - b0)
            draws = rng.integers(0, n, size=(nb, n))
            counts = np.bincount((draws + (np.arange(nb) * n)[:, None]).ravel(), minlength=nb * n).reshape(
                nb, n
            )
            means = (counts @ S) / n if S.shape[1] else np.zeros((nb, 0))
            for name, m in self.metrics.items():
                if m.reduce == "mean":
                    assert m.combine is not None
                    out[name].append(np.asarray(m.combine(means[:, self._blocks[name]]), dtype=np.float64))
                elif m.reduce == "median":
                    order = medians[name]
                    v = S[order, self._blocks[name].start]
                    cum = np.cumsum(counts[:, order], axis=1)
                    k1 = np.argmax(cum >= (n + 1) // 2, axis=1)
                    k2 = np.argmax(cum >= n // 2 + 1, axis=1)
                    out[name].append((v[k1] + v[k2]) / 2)
                else:
                    assert m.fn is not None
                    fn = m.fn
                    yt, yp = self._yt[members], self._yp[members]
                    vals = [
                        fn(yt[np.repeat(np.arange(n), c)], yp[np.repeat(np.arange(n), c)]) for c in counts
                    ]
                    out[name].append(np.asarray(vals, dtype=np.float64))
        return {name: np.concatenate(parts) for name, parts in out.items()}

    # -- views

    @property
    def overall(self) -> dict[str, float]:
        """Each metric on all (valid) rows."""
        return dict(self._overall_row)

    @property
    def results(self) -> pl.DataFrame:
        """The tidy table: grouping, group, one column per feature, metric, value, CI, n, flags."""
        return self._results

    @property
    def by_group(self) -> pl.DataFrame:
        """Wide table for the default grouping (the intersection of all features, as fairlearn)."""
        return self.by_grouping("+".join(self._default))

    def by_grouping(self, grouping: str) -> pl.DataFrame:
        """Wide table (one row per group, one column per metric) for one grouping such as ``'race'``."""
        self._check_grouping(grouping)
        feats = grouping.split("+")
        long = self._results.filter(pl.col("grouping") == grouping)
        return long.pivot(
            on="metric", index=[*feats, "n"], values="value", aggregate_function="first"
        ).select([*feats, "n", *self.metrics])

    @property
    def group_sizes(self) -> dict[str, int]:
        """Rows per group (labels joined by ' / ') for the default grouping."""
        g = "+".join(self._default)
        t = self._results.filter(pl.col("grouping") == g).unique("group", maintain_order=True)
        return dict(zip(t["group"].to_list(), t["n"].to_list(), strict=True))

    def _check_grouping(self, grouping: str) -> None:
        allowed = ["+".join(g) for g in self.groupings]
        if grouping not in allowed:
            raise EvaluationError(msg.UNKNOWN_GROUPING.format(grouping=grouping, allowed=allowed))

    def _eligible(self, grouping: str | None, include_small: bool) -> tuple[str, pl.DataFrame, pl.DataFrame]:
        """Rows of one grouping that may be ranked, and those that may not (both per metric)."""
        g = grouping or "+".join(self._default)
        self._check_grouping(g)
        t = self._results.filter(pl.col("grouping") == g)
        bad = [FLAG_EMPTY, FLAG_UNDEFINED, FLAG_UNKNOWN]
        bad += [] if include_small else [FLAG_SMALL, FLAG_SMALL_DENOMINATOR]
        flagged = pl.col("flags").list.eval(pl.element().is_in(bad)).list.any()
        return g, t.filter(~flagged), t.filter(flagged)

    def _aggregate(self, how: str, grouping: str | None, include_small: bool) -> dict[str, float]:
        _, t, _ = self._eligible(grouping, include_small)
        out = {}
        for name in self.metrics:
            v = t.filter(pl.col("metric") == name)["value"].to_numpy()
            out[name] = float(getattr(np, how)(v)) if len(v) else float("nan")
        return out

    def group_min(self, grouping: str | None = None, *, include_small: bool = False) -> dict[str, float]:
        """Smallest group value per metric (flagged groups left out)."""
        return self._aggregate("min", grouping, include_small)

    def group_max(self, grouping: str | None = None, *, include_small: bool = False) -> dict[str, float]:
        """Largest group value per metric (flagged groups left out)."""
        return self._aggregate("max", grouping, include_small)

    def difference(
        self,
        method: AggregationMethod = "between_groups",
        grouping: str | None = None,
        *,
        include_small: bool = False,
    ) -> dict[str, float]:
        """Max minus min over groups, or (``to_overall``) the largest |group - overall|."""
        return {d.metric: d.difference for d in self._disparities(method, grouping, include_small)}

    def ratio(
        self,
        method: AggregationMethod = "between_groups",
        grouping: str | None = None,
        *,
        include_small: bool = False,
    ) -> dict[str, float]:
        """Min over max across groups, or (``to_overall``) the smallest of group/overall and its inverse."""
        return {d.metric: d.ratio for d in self._disparities(method, grouping, include_small)}

    def disparities(self, grouping: str | None = None, *, include_small: bool = False) -> list[Disparity]:
        """Between-group difference and ratio per metric with bootstrap CIs and the worst group."""
        return self._disparities("between_groups", grouping, include_small)

    def _disparities(self, method: str, grouping: str | None, include_small: bool) -> list[Disparity]:
        if method not in AGGREGATION_METHODS:
            raise EvaluationError(msg.UNKNOWN_METHOD.format(method=method, allowed=list(AGGREGATION_METHODS)))
        g, t, flagged = self._eligible(grouping, include_small)
        alpha = (1 - (self.ci or 0.95)) / 2
        out = []
        for name, m in self.metrics.items():
            rows = t.filter(pl.col("metric") == name)
            labels, v = rows["group"].to_list(), rows["value"].to_numpy()
            overall = self._overall_row.get(name, float("nan"))
            excluded = flagged.filter(pl.col("metric") == name)["group"].to_list()
            diff, rat = _diff_ratio(v[None, :], overall, method)
            reps = [self._replicates.get((g, lab, name)) for lab in labels]
            d_ci = r_ci = (float("nan"), float("nan"))
            if len(labels) >= 2 and all(r is not None for r in reps):
                R = np.column_stack([r for r in reps if r is not None])
                o = self._replicates.get((OVERALL, OVERALL, name))
                dr, rr = _diff_ratio(R, o if o is not None else np.full(len(R), overall), method)
                d_ci, r_ci = _quantiles(dr, alpha), _quantiles(rr, alpha)
            if m.better == "zero":
                # a signed quantity (bias) has no meaningful ratio: -2 / 3 says nothing
                rat, r_ci = np.array([np.nan]), (float("nan"), float("nan"))
            worst = best = None
            worst_value = float("nan")
            if len(v) >= 2 and m.better != "none":  # with one group there is nothing to be worst against
                score = {"higher": -v, "lower": v, "zero": np.abs(v)}[m.better]
                worst, best = labels[int(np.argmax(score))], labels[int(np.argmin(score))]
                worst_value = float(v[int(np.argmax(score))])
            out.append(
                Disparity(
                    metric=name,
                    grouping=g,
                    difference=float(diff[0]) if len(v) >= 2 else float("nan"),
                    difference_ci=d_ci,
                    ratio=float(rat[0]) if len(v) >= 2 else float("nan"),
                    ratio_ci=r_ci,
                    worst_group=worst,
                    best_group=best,
                    worst_value=worst_value,
                    n_groups=len(v),
                    excluded_groups=tuple(excluded),
                )
            )
        return out


def _diff_ratio(v: np.ndarray, overall: Any, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise difference and ratio over the group columns of ``v`` (replicates x groups)."""
    if v.shape[1] == 0:
        empty = np.full(v.shape[0], np.nan)
        return empty, empty.copy()
    with np.errstate(divide="ignore", invalid="ignore"), _quiet_nan():
        if method == "between_groups":
            hi, lo = np.nanmax(v, axis=1), np.nanmin(v, axis=1)
            return hi - lo, np.where(hi != 0, lo / np.where(hi != 0, hi, 1), np.nan)
        o = np.asarray(overall, dtype=np.float64).reshape(-1, 1)
        diff = np.nanmax(np.abs(v - o), axis=1)
        r = np.minimum(v / o, o / v)
        return diff, np.nanmin(np.where(np.isfinite(r), r, np.nan), axis=1)


@contextmanager
def _quiet_nan() -> Iterator[None]:
    """All-NaN slices are expected in replicates of tiny groups; keep them from warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _quantiles(r: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = r[np.isfinite(r)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _normalise_metrics(metrics: Any) -> dict[str, Metric]:
    if metrics is None or (isinstance(metrics, Mapping) and not metrics):
        raise EvaluationError(msg.METRICS_EMPTY)
    items = metrics.items() if isinstance(metrics, Mapping) else [(None, metrics)]
    out: dict[str, Metric] = {}
    for name, m in items:
        if isinstance(m, Metric):
            out[str(name or m.name)] = m
        elif callable(m):
            key = str(name or getattr(m, "__name__", "metric"))
            out[key] = Metric(key, reduce="callable", fn=m, better="none")
        else:
            raise EvaluationError(msg.METRICS_EMPTY)
    return out


def confusion_by_group(
    y_true: Any, y_pred: Any, sensitive_features: Any, labels: Sequence[Any] | None = None
) -> pl.DataFrame:
    """Tidy confusion counts: grouping ('overall' or a feature), group, true, pred, count (all cells)."""
    yt, yp = _as_array(y_true), _as_array(y_pred)
    feats = _features(sensitive_features, len(yt))
    valid = ~(_is_missing(yt) | _is_missing(yp))
    yt, yp = yt[valid], yp[valid]
    labs = list(labels) if labels is not None else sorted({*yt.tolist(), *yp.tolist()}, key=str)
    rows = []
    groups = [(OVERALL, OVERALL, np.ones(len(yt), dtype=bool))]
    for f, col in feats.items():
        col = col[valid]
        groups += [(f, g, col == g) for g in sorted(set(col.tolist()))]
    for grouping, group, mask in groups:
        for a in labs:
            for b in labs:
                rows.append(
                    {
                        "grouping": grouping,
                        "group": group,
                        "true": str(a),
                        "pred": str(b),
                        "count": int(((yt == a) & (yp == b) & mask).sum()),
                    }
                )
    return pl.DataFrame(
        rows,
        schema={
            "grouping": pl.String,
            "group": pl.String,
            "true": pl.String,
            "pred": pl.String,
            "count": pl.Int64,
        },
    )
