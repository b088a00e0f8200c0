"""Reading the predictions contract: Parquet parts, one row per (item, bundle), and what can be evaluated.

Rows are counted by status: ``ok`` rows are evaluated; ``error`` rows (a corrupt or missing input, a
failed inference) and ``skipped`` rows (filtered on purpose: no face found, not exactly one face with
``--one-face``, an in-app result the hook marked not applicable) are counted per bundle and never enter a
metric. Skipped rows are not errors.

Tasks: parts of schema version 2 (``replaybench.predictions``) say which task each decoded column feeds
and which bundles fill it; parts without a schema (version 1, written before it) are read by column
names: ``age_pred`` -> age, ``gender_pred`` -> gender, ``label_pred`` -> classification, a ``concepts``
list or ``concept__<name>`` columns -> concepts. Either way a task runs only on a bundle whose rows hold
values for it, so one predictions folder holding an age bundle and a gender bundle yields both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from replaybench.errors import CorruptInputError, EvaluationError, InputNotFoundError
from replaybench.evaluate import messages as msg
from replaybench.predictions import STATUSES, TASK_FIELDS, TASKS, PredictionsSchema, read_schema

REQUIRED_COLUMNS = ("item_id", "bundle", "status")
CONCEPT_PREFIX = "concept__"
#: The dataset label a student's score is checked against, where the dataset carries it (a teacher's
#: score; ``label__score`` in the predictions, since the student's own column is ``score``).
SCORE_REFERENCE_KEY = "score"
#: Group columns used when the caller names none, in this order, where present with labels.
DEFAULT_GROUPS = ("race", "gender", "age_group")
#: A label column with more distinct values than this is no grouping (an id, a count, a date).
MAX_GROUP_VALUES = 20
#: Coarse age groups for grouping (not for scoring): minors, young adults, adults, older adults.
AGE_GROUPS: tuple[tuple[int, int, str], ...] = (
    (0, 12, "0-12"),
    (13, 17, "13-17"),
    (18, 29, "18-29"),
    (30, 49, "30-49"),
    (50, 69, "50-69"),
    (70, 200, "70+"),
)
_BIN = re.compile(r"^\s*\(?\s*(\d+)\s*(?:-|,|to)\s*(\d+)\s*\)?\s*$")
_PLUS = re.compile(r"^\s*(\d+)\s*\+\s*$")
_OPEN_TOP = 200


@dataclass(frozen=True)
class Predictions:
    """Loaded predictions: ``ok`` rows to evaluate, the error and skipped rows counted per bundle, and
    the schema the parts record (None: version 1, read by column names)."""

    path: Path
    ok: pl.DataFrame
    n_rows: int
    errors_by_bundle: dict[str, int]
    skipped_by_bundle: dict[str, int]
    schema: PredictionsSchema | None

    @property
    def n_error(self) -> int:
        return sum(self.errors_by_bundle.values())

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped_by_bundle.values())

    @property
    def bundles(self) -> list[str]:
        return sorted(self.ok["bundle"].unique().to_list())

    def tasks(self, bundle: str, rows: pl.DataFrame) -> list[str]:
        """The tasks evaluable on ``bundle``'s ok ``rows``: those its decoders feed (version 2) or its
        column names suggest (version 1), where the rows hold values for them."""
        if self.schema is None:
            return detect_tasks(rows)
        return [t for t in self.schema.tasks_of(bundle) if _has(rows, TASK_FIELDS[t][0])]

    def declared_without_values(self, bundle: str, rows: pl.DataFrame) -> list[str]:
        """Tasks ``bundle``'s decoders feed but no ok row holds a value for (version 2 only)."""
        if self.schema is None:
            return []
        return [t for t in self.schema.tasks_of(bundle) if not _has(rows, TASK_FIELDS[t][0])]

    def score_reference(self) -> str | None:
        """The label column holding a reference score (a teacher's) to check a student against."""
        if self.schema is None:
            return None
        col = self.schema.label_column(SCORE_REFERENCE_KEY)
        return col.name if col is not None and col.kind in ("float", "int") else None

    def label_groups(self, exclude: tuple[str | None, ...] = ()) -> list[str]:
        """Label columns usable as groups: text or yes/no labels with 2 to ``MAX_GROUP_VALUES`` values
        (version 2 only: without a schema, labels cannot be told from other columns)."""
        if self.schema is None:
            return []
        out = []
        for col in self.schema.with_role("label"):
            if col.kind in ("str", "bool") and col.name not in exclude and col.name in self.ok.columns:
                n = self.ok[col.name].drop_nulls().n_unique()
                if 2 <= n <= MAX_GROUP_VALUES and col.name not in RESERVED:
                    out.append(col.name)
        return out


def _by_bundle(df: pl.DataFrame) -> dict[str, int]:
    counts = df.group_by("bundle").len()
    return {
        str(b): int(n)
        for b, n in sorted(zip(counts["bundle"].to_list(), counts["len"].to_list(), strict=True))
    }


def load_predictions(path: Path) -> Predictions:
    """Read a predictions folder (``part-*.parquet``) or a single ``.parquet`` file, with its schema.

    Raises ``CorruptInputError`` for unreadable parts, parts that disagree on their schema (or mix
    schema versions), a schema newer than this replaybench reads, or (version 2) a status outside the
    contract's."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(msg.PREDICTIONS_NOT_FOUND.format(path=path))
    files = [path] if path.is_file() else sorted(path.glob("part-*.parquet"))
    if not files:
        raise EvaluationError(msg.NO_PARQUET_PARTS.format(path=path))
    schema = read_schema(files)
    try:
        df = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    except Exception as e:  # polars raises several types for truncated or non-Parquet files
        raise CorruptInputError(
            msg.UNREADABLE_PARQUET.format(path=path, reason=str(e).splitlines()[0])
        ) from e
    for col in REQUIRED_COLUMNS:
        if col not in df.columns:
            raise EvaluationError(msg.MISSING_REQUIRED_COLUMN.format(column=col))
    df = df.with_columns(
        pl.col("bundle").cast(pl.String), pl.col("item_id").cast(pl.String), pl.col("status").cast(pl.String)
    )
    status = pl.col("status")
    if schema is not None:
        odd = df.filter(~status.is_in(STATUSES) | status.is_null())["status"].unique().to_list()
        if odd:
            raise CorruptInputError(msg.UNKNOWN_STATUS.format(values=odd[:5], allowed=list(STATUSES)))
    # version 1 wrote no other status either; an unknown one there is counted as an error, as before
    is_ok, is_skipped = status == "ok", status == "skipped"
    errors = _by_bundle(df.filter(~is_ok & ~is_skipped))
    skipped = _by_bundle(df.filter(is_skipped))
    ok = df.filter(is_ok)
    if ok.height == 0:
        raise EvaluationError(
            msg.NO_OK_ROWS.format(n_error=sum(errors.values()), n_skipped=sum(skipped.values()))
        )
    return Predictions(
        path=path,
        ok=_with_age_group(ok),
        n_rows=df.height,
        errors_by_bundle=errors,
        skipped_by_bundle=skipped,
        schema=schema,
    )


def parse_age(value: object, column: str = "age") -> tuple[float, float]:
    """An age label as an interval [low, high]: ``34`` -> (34, 34), ``'20-29'`` -> (20, 29), ``'70+'``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (math.nan, math.nan)
    if isinstance(value, int | float | np.number):
        return (float(value), float(value))
    s = str(value)
    if m := _BIN.match(s):
        return (float(m[1]), float(m[2]))
    if m := _PLUS.match(s):
        return (float(m[1]), float(_OPEN_TOP))
    try:
        v = float(s)
    except ValueError as e:
        raise EvaluationError(msg.UNPARSEABLE_AGE.format(value=value, column=column)) from e
    return (v, v)


def age_intervals(series: pl.Series) -> np.ndarray:
    """``(n, 2)`` array of [low, high] for an age label column (numbers or bin strings)."""
    if series.dtype.is_numeric():
        a = series.cast(pl.Float64).fill_null(float("nan")).to_numpy()
        return np.column_stack([a, a])
    mapping = {v: parse_age(v, series.name) for v in series.unique().to_list()}
    return np.array([mapping[v] for v in series.to_list()], dtype=np.float64).reshape(-1, 2)


def predicted_ages(series: pl.Series) -> np.ndarray:
    """Predicted ages as numbers; a predicted bin (an age-group classifier) counts as its midpoint."""
    if series.dtype.is_numeric():
        return series.cast(pl.Float64).fill_null(float("nan")).to_numpy()
    iv = age_intervals(series)
    # an open top bin ('70+') has no midpoint; its lower edge is the most defensible single age
    return np.where(iv[:, 1] >= _OPEN_TOP, iv[:, 0], iv.mean(axis=1))


def _with_age_group(df: pl.DataFrame) -> pl.DataFrame:
    if "age" not in df.columns or "age_group" in df.columns:
        return df
    try:
        iv = age_intervals(df["age"])
    except EvaluationError:
        return df  # unparseable ages are reported by the age task itself
    groups = []
    for lo, hi in iv:
        label = None
        for glo, ghi, name in AGE_GROUPS:
            if glo <= lo and hi <= ghi:
                label = name
                break
        groups.append(label)  # a label straddling two groups (FairFace '10-19') gets none: not guessed
    return df.with_columns(pl.Series("age_group", groups, dtype=pl.String))


def concept_columns(df: pl.DataFrame) -> list[str]:
    """The ``concept__<name>`` score columns with at least one value."""
    return [c for c in df.columns if c.startswith(CONCEPT_PREFIX) and df[c].null_count() < df.height]


def _has(df: pl.DataFrame, col: str) -> bool:
    """Whether ``col`` holds at least one value (NaN is no value: a failed decode is not a prediction)."""
    if col not in df.columns:
        return False
    s = df[col]
    if s.dtype.is_float():
        return bool(s.is_not_nan().fill_null(False).any())
    return s.null_count() < df.height


def detect_tasks(df: pl.DataFrame) -> list[str]:
    """Tasks evaluable from one bundle's rows by column names (predictions of schema version 1)."""
    tasks = []
    if _has(df, "age_pred"):
        tasks.append("age")
    if _has(df, "gender_pred"):
        tasks.append("gender")
    if _has(df, "label_pred"):
        tasks.append("classification")
    if _has(df, "concepts") or concept_columns(df):
        tasks.append("concepts")
    return tasks


def check_task(df: pl.DataFrame, task: str, label_column: str | None = None) -> None:
    """Raise ``EvaluationError`` when ``df`` lacks what ``task`` needs."""
    if task not in TASKS:
        raise EvaluationError(msg.UNKNOWN_TASK.format(task=task, allowed=list(TASKS)))
    needs = {
        "age": [("age", "label"), ("age_pred", "prediction")],
        "gender": [("gender", "label"), ("gender_pred", "prediction")],
        "classification": [(label_column or "label", "label"), ("label_pred", "prediction")],
        "concepts": [],
        "score": [("score", "prediction")],  # a reference score is optional
    }[task]
    for col, kind in needs:
        if not _has(df, col):
            tmpl = msg.MISSING_LABEL_COLUMN if kind == "label" else msg.MISSING_PREDICTION_COLUMN
            raise EvaluationError(tmpl.format(task=task, column=col))
    if task == "concepts" and not (_has(df, "concepts") or concept_columns(df)):
        raise EvaluationError(msg.NO_CONCEPTS)


#: The tidy metrics table (metrics.parquet): these columns, with the group columns after "group".
METRIC_KEYS = ("bundle", "task", "metric", "grouping", "group")
METRIC_VALUES = ("value", "ci_low", "ci_high", "n", "n_eff", "n_missing", "flags")
#: Column names a group column must not take.
RESERVED = frozenset(METRIC_KEYS + METRIC_VALUES)
LABELLED_GROUP_CANDIDATES = ("race", "gender", "age_group", "ethnicity", "skin_tone", "attribute")


def resolve_groups(df: pl.DataFrame, by: list[str] | None) -> list[str]:
    """The group columns: those asked for (each must exist), else the default ones found."""
    if by:
        for col in by:
            if col in RESERVED:
                raise EvaluationError(msg.RESERVED_GROUP_NAME.format(column=col))
            if col not in df.columns:
                available = [c for c in LABELLED_GROUP_CANDIDATES if c in df.columns]
                raise EvaluationError(msg.GROUP_COLUMN_ABSENT.format(column=col, available=available))
        return list(by)
    return [c for c in DEFAULT_GROUPS if _has(df, c)]
