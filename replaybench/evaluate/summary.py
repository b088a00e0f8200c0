"""The evaluate stage's result document (``summary.json``): typed, strict, the headline numbers.

Every renderer (the CLI table, ``--json``, the HTML report) reads this one document. Undefined numbers
(a metric on a group with no positives, a CI of a one-group grouping) are ``null``, never a made-up value.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2  # 2: skipped rows counted apart from errors (n_skipped, skipped_by_bundle)


def num(x: float | None) -> float | None:
    """A float for JSON: NaN and infinities become None."""
    return None if x is None or not math.isfinite(x) else float(x)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricValue(_Strict):
    name: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int
    #: for a rate, how many items it is a rate of (e.g. minors for minors_as_adults@18)
    n_eff: int | None = None
    description: str = ""


class DisparitySummary(_Strict):
    """Between-group spread of one metric in one grouping (flagged groups excluded and listed)."""

    metric: str
    grouping: str
    difference: float | None
    difference_ci: tuple[float | None, float | None]
    ratio: float | None
    ratio_ci: tuple[float | None, float | None]
    worst_group: str | None
    worst_value: float | None
    best_group: str | None
    n_groups: int
    excluded_groups: list[str] = Field(default_factory=list)


class TaskSummary(_Strict):
    """One task (age, gender, classification, score) evaluated on one bundle's predictions."""

    bundle: str
    task: str
    n_items: int
    n_missing_prediction: int
    group_columns: list[str]
    headline: list[MetricValue]
    disparities: list[DisparitySummary]
    #: fairlearn's names: demographic_parity_difference / equalized_odds_difference per grouping
    fairness: dict[str, float | None] = Field(default_factory=dict)


class Association(_Strict):
    concept: str
    grouping: str
    group: str
    n: int
    rate: float | None
    rate_rest: float | None
    odds_ratio: float | None
    q_value: float | None
    spurious: bool


class EditEffect(_Strict):
    edit: str
    concept: str
    grouping: str
    group: str
    n_identities: int
    delta: float | None
    ci_low: float | None
    ci_high: float | None


class ConceptSummary(_Strict):
    bundle: str
    source: str  # 'concepts' (multi-label scores) or 'label_pred' (predicted classes without truth)
    n_items: int
    n_concepts: int
    n_tests: int
    n_significant: int
    alpha: float
    spurious: list[Association]
    strongest: list[Association]
    edit_effects: list[EditEffect] = Field(default_factory=list)


class FieldAgreement(_Strict):
    field: str
    kind: str
    n: int
    agreement: float | None = None
    kappa: float | None = None
    mean_abs_diff: float | None = None
    max_abs_diff: float | None = None
    worst_group: str | None = None
    worst_group_value: float | None = None
    route: str | None = None  # where this run's numbers came from: in_app, offline (unrecorded: older)
    route_other: str | None = None  # and the other run's


class ComparisonSummary(_Strict):
    other: str
    fields: list[FieldAgreement]
    route: str | None = None  # the routes of the two runs (in_app vs offline: the phone vs the workstation)
    route_other: str | None = None


class BundleParity(_Strict):
    """A replayed bundle's parity as its bundle.json records it (from the replay run's run.json)."""

    passed: bool | None = None  # None: the bundle has no parity block
    reference: str | None = None  # original | rewritten | None (bundle older than schema 2)
    reference_runtime: str | None = None
    reference_reason: str | None = None


class EvaluationSummary(_Strict):
    """``summary.json``: what was evaluated, the headline metrics and disparities, and where the report is."""

    schema_version: int = SCHEMA_VERSION
    predictions: str
    report: str
    n_rows: int
    n_ok: int
    n_error: int
    errors_by_bundle: dict[str, int]
    #: rows the run filtered on purpose (status skipped: no face, not one face, not applicable in-app);
    #: not errors, and not evaluated
    n_skipped: int = 0
    skipped_by_bundle: dict[str, int] = Field(default_factory=dict)
    group_columns: list[str]
    ci: float
    seed: int
    n_boot: int
    min_group_size: int
    min_denominator: int = 10
    tasks: list[TaskSummary] = Field(default_factory=list)
    concepts: list[ConceptSummary] = Field(default_factory=list)
    comparison: ComparisonSummary | None = None
    #: bundle name -> its parity (what the converted model was checked against); empty without run.json
    bundle_parity: dict[str, BundleParity] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
