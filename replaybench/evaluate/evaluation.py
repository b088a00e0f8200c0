"""``evaluate_predictions``: predictions in, report folder and ``EvaluationSummary`` out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from replaybench._console import NullProgress, Progress
from replaybench.errors import EvaluationError
from replaybench.evaluate import messages as msg
from replaybench.evaluate.concepts import concept_associations, edit_effects, read_concept_list
from replaybench.evaluate.metrics import (
    OVERALL,
    MetricFrame,
    age_bin_index,
    age_metrics,
    classification_metrics,
    confusion_by_group,
    score_metrics,
)
from replaybench.evaluate.predictions import (
    TASKS,
    Predictions,
    age_intervals,
    check_task,
    load_predictions,
    predicted_ages,
    resolve_groups,
)
from replaybench.evaluate.summary import (
    Association,
    BundleParity,
    ComparisonSummary,
    ConceptSummary,
    DisparitySummary,
    EditEffect,
    EvaluationSummary,
    FieldAgreement,
    MetricValue,
    TaskSummary,
    num,
)

#: Metrics shown first (tables, bars, the CLI) per task; everything is in metrics.parquet.
HEADLINE = {
    "gender": ["accuracy", "balanced_accuracy", "recall[female]", "recall[male]", "selection_rate[female]"],
    "age": [
        "mae",
        "median_ae",
        "bias",
        "age_bin_accuracy",
        "minors_as_adults@13",
        "minors_as_adults@16",
        "minors_as_adults@18",
        "adults_as_minors@13",
        "adults_as_minors@16",
        "adults_as_minors@18",
    ],
    "classification": ["accuracy", "balanced_accuracy"],
    "score": ["mean_score", "share[0-3]", "share[4-6]", "share[7-10]", "mae", "bias"],
}
POSITIVE_GENDER = "female"


@dataclass
class TaskResult:
    """Everything one task on one bundle produced, for the summary and the report."""

    summary: TaskSummary
    frame: MetricFrame
    confusion: pl.DataFrame | None = None
    age_error: pl.DataFrame | None = None
    bins: list[str] = field(default_factory=list)


@dataclass
class ConceptResult:
    summary: ConceptSummary
    associations: pl.DataFrame
    edits: pl.DataFrame


def evaluate_predictions(
    preds: Path,
    out: Path,
    *,
    task: str | None = None,
    by: Sequence[str] | None = None,
    ci: float = 0.95,
    seed: int = 0,
    n_boot: int = 1000,
    min_group_size: int = 30,
    min_denominator: int = 10,
    compare: Path | None = None,
    spurious: Path | None = None,
    label_column: str = "label",
    concept_threshold: float | None = None,
    top_k: int | None = None,
    alpha: float = 0.05,
    progress: Progress | None = None,
) -> EvaluationSummary:
    """Evaluate a predictions folder and write the report folder ``out``.

    ``task`` None evaluates every task each bundle's decoders feed (schema version 2) or its columns
    suggest (version 1: age from ``age_pred``, gender from ``gender_pred``, classification from
    ``label_pred``, concepts from ``concepts``/``concept__*``); a student's ``score`` is the score task.
    ``by`` None groups by the race/gender/age-group columns present (the score task, where there are
    none, by the posts' own text labels). Error rows and skipped rows (filtered by the run: no face, not
    one face) are counted per bundle, separately, and left out. Writes ``index.html``,
    ``metrics.parquet``, ``summary.json`` (+ ``concepts.parquet``, ``confusion.parquet``,
    ``comparison.parquet`` where they apply).

    Example::

        summary = evaluate_predictions(Path("preds"), Path("report"), by=["race", "gender"], seed=0)
        summary.tasks[0].headline[0].value
    """
    from replaybench.evaluate.report import write_report

    progress = progress or NullProgress()
    if task is not None and task not in TASKS:
        raise EvaluationError(msg.UNKNOWN_TASK.format(task=task, allowed=list(TASKS)))
    if not 0 < ci < 1:
        raise EvaluationError(msg.BAD_CI.format(ci=ci))
    if Path(out).is_file():
        raise EvaluationError(msg.REPORT_PATH_IS_FILE.format(path=out))
    predictions = load_predictions(preds)
    groups = resolve_groups(predictions.ok, list(by) if by else None)
    spurious_list = read_concept_list(spurious) if spurious else []
    warnings: list[str] = []
    if predictions.n_error:
        warnings.append(
            f"{predictions.n_error} error rows left out of every metric: {predictions.errors_by_bundle}"
        )

    plan = []
    for bundle in predictions.bundles:
        rows = predictions.ok.filter(pl.col("bundle") == bundle)
        found = predictions.tasks(bundle, rows)
        for t in predictions.declared_without_values(bundle, rows):
            warnings.append(f"bundle {bundle}: its decoders feed the {t} task, but no ok row holds a value")
        # a named task runs on the bundles that predict it (an age bundle has no gender_pred)
        plan += [(bundle, t, rows) for t in found if task is None or t == task]
    reference = predictions.score_reference()
    score_groups = groups
    if not groups and any(t == "score" for _, t, _ in plan):
        score_groups = predictions.label_groups(exclude=(reference,))
    if not groups:
        warnings.append(
            "no group columns (race, gender, age) found: metrics are overall only"
            + (
                f", but for the score task, grouped by the posts' labels {score_groups}"
                if score_groups
                else ""
            )
        )
    if not plan and (compare is None or task is not None):  # a comparison alone needs no task
        if task is not None:
            check_task(predictions.ok, task, label_column)  # raises the message naming what is missing
        raise EvaluationError(msg.NO_TASK_DETECTED)
    progress.start(len(plan), "evaluating")
    task_results: list[TaskResult] = []
    concept_results: list[ConceptResult] = []
    for bundle, t, rows in plan:
        if t == "concepts":
            check_task(rows, t)
            concept_results.append(
                _concepts(
                    bundle,
                    rows,
                    groups,
                    "concepts",
                    concept_threshold,
                    top_k,
                    alpha,
                    ci,
                    spurious_list,
                    min_group_size,
                )
            )
        elif t == "classification" and task is None and label_column not in rows.columns:
            # no ground truth: how often each class is predicted per group is the finding (the paper's method)
            onehot = rows.with_columns(pl.col("label_pred").cast(pl.String).alias("_lp")).to_dummies(
                "_lp", separator="__"
            )
            renamed = onehot.rename(
                {c: "concept__" + c[len("_lp__") :] for c in onehot.columns if c.startswith("_lp__")}
            )
            concept_results.append(
                _concepts(
                    bundle,
                    renamed.drop("concepts", strict=False),
                    groups,
                    "label_pred",
                    0.5,
                    None,
                    alpha,
                    ci,
                    spurious_list,
                    min_group_size,
                )
            )
        else:
            check_task(rows, t, label_column)
            task_results.append(
                _task(
                    bundle,
                    t,
                    rows,
                    score_groups if t == "score" else groups,
                    ci,
                    seed,
                    n_boot,
                    min_group_size,
                    label_column,
                    min_denominator,
                    reference=reference,
                )
            )
        progress.advance()
    progress.close()

    comparison = comparison_table = None
    if compare is not None:
        from replaybench.evaluate.compare import compare_predictions

        other = load_predictions(compare)
        label_cols = [c for c in ("age", "gender", "race", label_column) if c in predictions.ok.columns]
        comparison_table = compare_predictions(predictions.ok, other.ok, groups, label_columns=label_cols)
        from replaybench.evaluate.compare import routes

        comparison = ComparisonSummary(
            other=str(compare),
            fields=_agreements(comparison_table),
            route=routes(predictions.ok),
            route_other=routes(other.ok),
        )

    bundle_parity = _bundle_parity(Path(preds), predictions.bundles)
    warnings += _parity_warnings(bundle_parity)
    out = Path(out)
    summary = EvaluationSummary(
        predictions=str(preds),
        report=str(out),
        n_rows=predictions.n_rows,
        n_ok=predictions.ok.height,
        n_error=predictions.n_error,
        errors_by_bundle=predictions.errors_by_bundle,
        n_skipped=predictions.n_skipped,
        skipped_by_bundle=predictions.skipped_by_bundle,
        group_columns=groups,
        ci=ci,
        seed=seed,
        n_boot=n_boot,
        min_group_size=min_group_size,
        min_denominator=min_denominator,
        tasks=[r.summary for r in task_results],
        concepts=[r.summary for r in concept_results],
        comparison=comparison,
        bundle_parity=bundle_parity,
        warnings=warnings,
    )
    write_report(out, summary, task_results, concept_results, comparison_table, predictions)
    return summary


def _task(
    bundle: str,
    task: str,
    rows: pl.DataFrame,
    groups: list[str],
    ci: float,
    seed: int,
    n_boot: int,
    min_group_size: int,
    label_column: str,
    min_denominator: int = 10,
    reference: str | None = None,
) -> TaskResult:
    sf = rows.select(groups) if groups else pl.DataFrame({"all": ["all"] * rows.height})
    confusion = age_error = None
    bins: list[str] = []
    y_true: Any
    y_pred: Any
    if task == "age":
        y_true = age_intervals(rows["age"])
        y_pred = predicted_ages(rows["age_pred"])
        exact = bool(np.all(np.isnan(y_true[:, 0]) | (y_true[:, 0] == y_true[:, 1])))
        metrics = age_metrics(exact_truth=exact)
        from replaybench.evaluate.metrics import AGE_BINS

        bins = [f"{lo}-{hi}" if hi < 200 else f"{lo}+" for lo, hi in AGE_BINS]
        ok = ~(np.isnan(y_true[:, 0]) | np.isnan(y_pred))
        labels_true = np.array(bins, dtype=object)[age_bin_index(np.nan_to_num(y_true[:, 0]))]
        labels_pred = np.array(bins, dtype=object)[age_bin_index(np.nan_to_num(y_pred))]
        confusion = confusion_by_group(
            np.where(ok, labels_true, None), np.where(ok, labels_pred, None), sf, labels=bins
        )
        if exact:
            age_error = (
                pl.DataFrame({"age": y_true[:, 0], "error": y_pred - y_true[:, 0]})
                .with_columns(sf)
                .filter(pl.col("error").is_not_nan())
            )
    elif task == "score":
        from replaybench.distill.metrics import BUCKETS, bucket_index

        y_pred = rows["score"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        ref = (
            rows[reference].cast(pl.Float64).fill_null(float("nan")).to_numpy()
            if reference is not None and reference in rows.columns
            else np.full(rows.height, np.nan)
        )
        has = np.isfinite(ref)
        # [has_reference, reference]: never missing, so a post without a reference still counts in the mean
        y_true = np.column_stack([has.astype(np.float64), np.where(has, ref, 0.0)])
        metrics = score_metrics(reference=bool(has.any()))
        if has.any():  # where the reference's bucket and the student's differ, per group
            bins = list(BUCKETS)
            both = has & np.isfinite(y_pred)
            names = np.array(bins, dtype=object)
            confusion = confusion_by_group(
                np.where(both, names[bucket_index(np.nan_to_num(ref))], None),
                np.where(both, names[bucket_index(np.nan_to_num(y_pred))], None),
                sf,
                labels=bins,
            )
    else:
        true_col = "gender" if task == "gender" else label_column
        pred_col = "gender_pred" if task == "gender" else "label_pred"
        y_true = rows[true_col].cast(pl.String)
        y_pred = rows[pred_col].cast(pl.String)
        if task == "gender":
            # FairFace writes 'Male', apps write 'MALE': case is not a disagreement
            y_true = y_true.str.strip_chars().str.to_lowercase()
            y_pred = y_pred.str.strip_chars().str.to_lowercase()
        seen_true, seen_pred = set(y_true.drop_nulls().to_list()), set(y_pred.drop_nulls().to_list())
        if seen_true and seen_pred and not seen_true & seen_pred:
            # disjoint vocabularies ('0'/'1' vs 'male'/'female') would score 0% accuracy: a wrong number
            raise EvaluationError(
                msg.LABELS_DISJOINT.format(
                    label=true_col,
                    prediction=pred_col,
                    true=sorted(seen_true)[:5],
                    pred=sorted(seen_pred)[:5],
                )
            )
        classes = sorted(seen_true | seen_pred)
        metrics = classification_metrics(classes)
        confusion = confusion_by_group(y_true, y_pred, sf, labels=classes)
    frame = MetricFrame(
        metrics=metrics,
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=sf,
        ci=ci,
        n_boot=n_boot,
        seed=seed,
        min_group_size=min_group_size,
        min_denominator=min_denominator,
        max_intersection=2,
    )
    res = frame.results.filter(pl.col("grouping") == OVERALL)
    headline_names = [m for m in HEADLINE.get(task, []) if m in frame.metrics] or list(frame.metrics)[:4]
    headline = []
    for name in headline_names:
        r = res.filter(pl.col("metric") == name).row(0, named=True)
        headline.append(
            MetricValue(
                name=name,
                value=num(r["value"]),
                ci_low=num(r["ci_low"]),
                ci_high=num(r["ci_high"]),
                n=r["n"],
                n_eff=r["n_eff"],
                description=frame.metrics[name].description,
            )
        )
    disparities = []
    fairness: dict[str, float | None] = {}
    for grouping in ("+".join(g) for g in frame.groupings):
        for d in frame.disparities(grouping):
            if d.metric in headline_names:
                disparities.append(
                    DisparitySummary(
                        metric=d.metric,
                        grouping=d.grouping,
                        difference=num(d.difference),
                        difference_ci=(num(d.difference_ci[0]), num(d.difference_ci[1])),
                        ratio=num(d.ratio),
                        ratio_ci=(num(d.ratio_ci[0]), num(d.ratio_ci[1])),
                        worst_group=d.worst_group,
                        worst_value=num(d.worst_value),
                        best_group=d.best_group,
                        n_groups=d.n_groups,
                        excluded_groups=list(d.excluded_groups),
                    )
                )
        if task == "gender" and POSITIVE_GENDER in classes:
            diff = frame.difference(grouping=grouping)
            fairness[f"demographic_parity_difference[{grouping}]"] = num(
                diff[f"selection_rate[{POSITIVE_GENDER}]"]
            )
            fairness[f"equalized_odds_difference[{grouping}]"] = num(
                max(diff[f"recall[{POSITIVE_GENDER}]"], diff[f"fpr[{POSITIVE_GENDER}]"])
            )
    n_missing = int(res["n_missing"][0]) if res.height else 0
    summary = TaskSummary(
        bundle=bundle,
        task=task,
        n_items=rows.height,
        n_missing_prediction=n_missing,
        group_columns=groups,
        headline=headline,
        disparities=disparities,
        fairness=fairness,
    )
    return TaskResult(summary, frame, confusion, age_error, bins)


def _concepts(
    bundle: str,
    rows: pl.DataFrame,
    groups: list[str],
    source: str,
    threshold: float | None,
    top_k: int | None,
    alpha: float,
    ci: float,
    spurious: list[str],
    min_group_size: int,
) -> ConceptResult:
    assoc = concept_associations(
        rows,
        groups,
        threshold=threshold,
        top_k=top_k,
        alpha=alpha,
        ci=ci,
        spurious=spurious,
        min_group_size=min_group_size,
    )
    edits = edit_effects(rows, groups, threshold=threshold, top_k=top_k, ci=ci)

    def assoc_model(r: dict) -> Association:
        return Association(
            concept=r["concept"],
            grouping=r["grouping"],
            group=r["group"],
            n=r["n"],
            rate=num(r["rate"]),
            rate_rest=num(r.get("rate_rest")),
            odds_ratio=num(r.get("odds_ratio")),
            q_value=num(r["q_value"]),
            spurious=bool(r["spurious"]),
        )

    sig = assoc.filter(pl.col("significant"))
    strongest = sig.sort("q_value", "p_value").head(20)
    edit_models = []
    if edits.height:
        top = edits.filter(pl.col("grouping") == OVERALL).with_columns(pl.col("delta").abs().alias("_a"))
        for r in top.sort("_a", descending=True, nulls_last=True).head(20).iter_rows(named=True):
            edit_models.append(
                EditEffect(
                    edit=r["edit"],
                    concept=r["concept"],
                    grouping=r["grouping"],
                    group=r["group"],
                    n_identities=r["n_identities"],
                    delta=num(r["delta"]),
                    ci_low=num(r["ci_low"]),
                    ci_high=num(r["ci_high"]),
                )
            )
    summary = ConceptSummary(
        bundle=bundle,
        source=source,
        n_items=rows.height,
        n_concepts=assoc["concept"].n_unique(),
        n_tests=assoc.height,
        n_significant=sig.height,
        alpha=alpha,
        spurious=[
            assoc_model(r) for r in sig.filter(pl.col("spurious")).sort("q_value").iter_rows(named=True)
        ],
        strongest=[assoc_model(r) for r in strongest.iter_rows(named=True)],
        edit_effects=edit_models,
    )
    return ConceptResult(summary, assoc.with_columns(pl.lit(bundle).alias("bundle")), edits)


def _agreements(table: pl.DataFrame) -> list[FieldAgreement]:
    out = []
    for fld in table["field"].unique(maintain_order=True).to_list():
        rows = table.filter(pl.col("field") == fld)
        overall = rows.filter(pl.col("grouping") == OVERALL).row(0, named=True)
        per = rows.filter(pl.col("grouping") != OVERALL)
        worst = worst_v = None
        if per.height:
            key = "agreement" if overall["kind"] == "label" else "mean_abs_diff"
            w = per.sort(key, descending=overall["kind"] != "label", nulls_last=True).row(0, named=True)
            worst, worst_v = w["group"], num(w[key])
        out.append(
            FieldAgreement(
                field=fld,
                kind=overall["kind"],
                n=overall["n"],
                agreement=num(overall["agreement"]),
                kappa=num(overall["kappa"]),
                mean_abs_diff=num(overall["mean_abs_diff"]),
                max_abs_diff=num(overall["max_abs_diff"]),
                worst_group=worst,
                worst_group_value=worst_v,
                route=overall.get("route"),
                route_other=overall.get("route_other"),
            )
        )
    return out


def load(preds: Path) -> Predictions:
    """Load predictions (re-exported for callers that want the rows without a report)."""
    return load_predictions(preds)


def _bundle_parity(preds: Path, bundles: list[str]) -> dict[str, BundleParity]:
    """Each evaluated bundle's parity from the replay run's ``run.json`` (none for a bare Parquet file
    or a run written before replay recorded it)."""
    import json

    from replaybench.replay.sink import RUN_MANIFEST

    doc = (preds if preds.is_dir() else preds.parent) / RUN_MANIFEST
    if not doc.is_file():
        return {}
    from pydantic import ValidationError

    try:
        recorded = json.loads(doc.read_text(encoding="utf-8")).get("bundle_parity") or {}
        if not isinstance(recorded, dict):
            return {}
        return {
            name: BundleParity.model_validate(recorded[name] or {}) for name in bundles if name in recorded
        }
    except (ValueError, AttributeError, ValidationError):  # a foreign run.json: the report just lacks it
        return {}


def _parity_warnings(bundle_parity: dict[str, BundleParity]) -> list[str]:
    """Warnings for bundles whose numbers may not be what the app computes."""
    out = []
    for name, p in bundle_parity.items():
        if p.passed is False:
            out.append(
                f"bundle {name}: parity FAILED against {p.reference_runtime}; its outputs may differ from the app's"
            )
        if p.reference == "rewritten":
            out.append(
                f"bundle {name}: parity was measured against a rewritten model, not the original "
                f"({p.reference_reason})"
            )
    return out
