"""The report folder: a self-contained ``index.html`` (plots embedded as PNG data URIs, readable offline),
``metrics.parquet`` (tidy), ``summary.json``, and the detail tables as Parquet."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from replaybench.evaluate.metrics import FLAG_SMALL, FLAG_SMALL_DENOMINATOR, OVERALL
from replaybench.evaluate.predictions import METRIC_KEYS, METRIC_VALUES
from replaybench.evaluate.summary import EvaluationSummary

if TYPE_CHECKING:
    from replaybench.evaluate.evaluation import ConceptResult, TaskResult
    from replaybench.evaluate.predictions import Predictions

BAR_METRICS = {
    "gender": ["accuracy", "recall[female]", "recall[male]"],
    "age": ["mae", "bias", "minors_as_adults@18", "adults_as_minors@18"],
    "classification": ["accuracy", "balanced_accuracy"],
    "score": ["mean_score", "share[7-10]", "mae"],
}
#: Disparities shown in the HTML table (summary.json has all headline metrics).
KEY_DISPARITIES = {
    "gender": ["accuracy", "recall[female]", "recall[male]", "selection_rate[female]"],
    "age": [
        "mae",
        "bias",
        "minors_as_adults@13",
        "minors_as_adults@16",
        "minors_as_adults@18",
        "adults_as_minors@18",
    ],
    "classification": ["accuracy", "balanced_accuracy"],
    "score": ["mean_score", "share[0-3]", "share[4-6]", "share[7-10]", "mae", "bias"],
}
# Marks the body with how many plots decoded, so a headless browser (and a person's devtools) can check
# that every embedded image renders: data-images="<decoded>/<total>".
_LOADED_SCRIPT = (
    "<script>window.addEventListener('load',function(){var i=[].slice.call(document.images);"
    "document.body.dataset.images=i.filter(function(x){return x.complete&&x.naturalWidth>0}).length+'/'+i.length;"
    "});</script>"
)
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin-top:1.6rem}table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #ddd;padding:.25rem .55rem;text-align:right;white-space:nowrap}td.t,td:last-child{white-space:normal}th{background:#f3f4f6}
td.l,th.l,td.t{text-align:left}tr.flag td{color:#888;font-style:italic}.muted{color:#666;font-size:.9rem}
.warn{background:#fff7e0;border-left:4px solid #e0a800;padding:.4rem .8rem}
.tw{overflow-x:auto;max-width:100%}img{max-width:100%;height:auto;display:block;margin:.5rem 0}.sp{color:#b00020;font-weight:600}
"""


def write_report(
    out: Path,
    summary: EvaluationSummary,
    tasks: list[TaskResult],
    concepts: list[ConceptResult],
    comparison: pl.DataFrame | None,
    predictions: Predictions,
) -> None:
    """Write every file of the report folder (creating it) and record them in ``summary.files``."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    metrics = _metrics_table(tasks, summary.group_columns)
    metrics.write_parquet(out / "metrics.parquet")
    files["metrics"] = "metrics.parquet"
    conf = [
        t.confusion.with_columns(
            pl.lit(t.summary.bundle).alias("bundle"), pl.lit(t.summary.task).alias("task")
        )
        for t in tasks
        if t.confusion is not None
    ]
    if conf:
        pl.concat(conf).write_parquet(out / "confusion.parquet")
        files["confusion"] = "confusion.parquet"
    if concepts:
        pl.concat([c.associations for c in concepts], how="diagonal_relaxed").write_parquet(
            out / "concepts.parquet"
        )
        files["concepts"] = "concepts.parquet"
        edits = [c.edits for c in concepts if c.edits.height]
        if edits:
            pl.concat(edits, how="diagonal_relaxed").write_parquet(out / "edits.parquet")
            files["edits"] = "edits.parquet"
    if comparison is not None:
        comparison.write_parquet(out / "comparison.parquet")
        files["comparison"] = "comparison.parquet"
    files["html"] = "index.html"
    files["summary"] = "summary.json"
    summary.files = files
    (out / "index.html").write_text(_html(summary, tasks, concepts, comparison), encoding="utf-8")
    (out / "summary.json").write_text(summary.model_dump_json(indent=2), encoding="utf-8")


def _metrics_table(tasks: list[TaskResult], groups: list[str]) -> pl.DataFrame:
    parts = []
    for t in tasks:
        r = t.frame.results
        for g in groups:
            if g not in r.columns:
                r = r.with_columns(pl.lit(None, dtype=pl.String).alias(g))
        parts.append(
            r.with_columns(
                pl.lit(t.summary.bundle).alias("bundle"), pl.lit(t.summary.task).alias("task")
            ).select(*METRIC_KEYS, *groups, *METRIC_VALUES)
        )
    if not parts:
        return pl.DataFrame(
            schema={"bundle": pl.String, "task": pl.String, "metric": pl.String, "value": pl.Float64}
        )
    return pl.concat(parts, how="diagonal_relaxed")


# ----------------------------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()  # cheaper than bbox_inches="tight", which draws every figure twice
    fig.savefig(buf, format="png", dpi=80, pil_kwargs={"compress_level": 1})  # fast; size is secondary
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless, no display: the report is written on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def _group_bars(t: TaskResult, grouping: str) -> str | None:
    plt = _plt()
    names = [m for m in BAR_METRICS.get(t.summary.task, []) if m in t.frame.metrics]
    r = t.frame.results.filter(pl.col("grouping") == grouping)
    if not names or r.height == 0:
        return None
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.6 * len(names), 0.35 * r["group"].n_unique() + 1.6), squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=True):
        rows = r.filter(pl.col("metric") == name)
        labels = rows["group"].to_list()
        v = rows["value"].to_numpy()
        lo, hi = rows["ci_low"].to_numpy(), rows["ci_high"].to_numpy()
        small = [FLAG_SMALL in f or FLAG_SMALL_DENOMINATOR in f for f in rows["flags"].to_list()]
        y = np.arange(len(labels))
        colours = ["#c7c7c7" if s else "#4c72b0" for s in small]
        err = np.array([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
        ax.barh(y, np.nan_to_num(v), xerr=np.clip(err, 0, None), color=colours, capsize=3, ecolor="#333")
        overall = t.frame.overall.get(name, float("nan"))
        if math.isfinite(overall):
            ax.axvline(overall, color="#dd8452", ls="--", lw=1)
        ax.set_yticks(
            y, [f"{lab} (n={n})" for lab, n in zip(labels, rows["n"].to_list(), strict=True)], fontsize=8
        )
        ax.invert_yaxis()
        ax.set_title(name, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"{t.summary.bundle}: by {grouping} (grey = small group, dashed = overall)", fontsize=10)
    return _png(fig)


def _confusion_plot(t: TaskResult) -> str | None:
    if t.confusion is None:
        return None
    plt = _plt()
    c = t.confusion
    panels = [(OVERALL, OVERALL)]
    first = next((g for g in t.summary.group_columns if g != "gender" or t.summary.task != "gender"), None)
    if first and t.summary.task == "gender":
        panels += [
            (first, g) for g in c.filter(pl.col("grouping") == first)["group"].unique(maintain_order=True)
        ]
    panels = panels[:7]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(3.0 * len(panels) if len(panels) > 1 else 6.5, 3.2 if len(panels) > 1 else 5.5),
        squeeze=False,
    )
    for ax, (grouping, group) in zip(axes[0], panels, strict=True):
        sub = c.filter((pl.col("grouping") == grouping) & (pl.col("group") == group))
        labels = list(dict.fromkeys(sub["true"].to_list()))
        k = len(labels)
        m = sub["count"].to_numpy().reshape(k, k)
        rowsum = m.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(rowsum > 0, m / np.maximum(rowsum, 1), 0)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        str(m[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if frac[i, j] > 0.6 else "black",
                    )
        ax.set_xticks(range(k), labels, rotation=45 if k > 3 else 0, fontsize=7)
        ax.set_yticks(range(k), labels, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(f"{group} (n={int(m.sum())})", fontsize=9)
    return _png(fig)


def _age_error_plot(t: TaskResult) -> str | None:
    if t.age_error is None or t.age_error.height == 0:
        return None
    plt = _plt()
    d = t.age_error.with_columns(((pl.col("age") // 5) * 5).alias("band"))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.scatter(d["age"], d["error"], s=6, alpha=0.25, color="#999", label="items")
    split = next((g for g in ("race", "gender") if g in d.columns), None)
    series = [("all", d)] + (
        [(g, d.filter(pl.col(split) == g)) for g in sorted(d[split].unique().to_list())] if split else []
    )
    for label, sub in series:
        agg = sub.group_by("band").agg(pl.col("error").mean().alias("m"), pl.len().alias("n")).sort("band")
        agg = agg.filter(pl.col("n") >= 3)  # a mean of one or two items is noise on this plot
        ax.plot(
            agg["band"] + 2.5,
            agg["m"],
            marker="o",
            ms=3,
            lw=2.2 if label == "all" else 1.2,
            color="black" if label == "all" else None,
            label=str(label),
        )
    ax.axhline(0, color="#444", lw=0.8)
    for th in (13, 16, 18):
        ax.axvline(th, color="#dd8452", ls=":", lw=1)
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted − true (years)")
    ax.set_title(
        f"{t.summary.bundle}: age error by true age (mean per 5-year band, dotted: 13/16/18)", fontsize=10
    )
    ax.legend(fontsize=7, ncol=3)
    return _png(fig)


def _concept_heatmap(c: ConceptResult, grouping: str) -> str | None:
    a = c.associations.filter(pl.col("grouping") == grouping)
    if a.height == 0:
        return None
    plt = _plt()
    top = (
        a.group_by("concept")
        .agg(pl.col("q_value").min().alias("q"), pl.col("rate_overall").first().alias("r"))
        .sort("q", "r", descending=[False, True], nulls_last=True)
        .head(30)["concept"]
        .to_list()
    )
    groups = sorted(a["group"].unique().to_list())
    sub = a.filter(pl.col("concept").is_in(top))
    m = np.full((len(top), len(groups)), np.nan)
    sig = np.zeros_like(m, dtype=bool)
    for r in sub.iter_rows(named=True):
        i, j = top.index(r["concept"]), groups.index(r["group"])
        m[i, j] = (r["rate"] or 0) - (r["rate_overall"] or 0)
        sig[i, j] = bool(r["significant"])
    lim = max(0.05, float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.05)
    fig, ax = plt.subplots(figsize=(1.0 * len(groups) + 3, 0.28 * len(top) + 1.5))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for i, j in zip(*np.nonzero(sig), strict=True):
        ax.text(j, i, "*", ha="center", va="center", fontsize=10)
    ax.set_xticks(range(len(groups)), groups, rotation=30, fontsize=8, ha="right")
    ax.set_yticks(range(len(top)), top, fontsize=7)
    fig.colorbar(im, ax=ax, label="rate in group − overall rate", shrink=0.6)
    ax.set_title(f"{c.summary.bundle}: concept rate by {grouping} (* = BH q < {c.summary.alpha})", fontsize=9)
    return _png(fig)


# ------------------------------------------------------------------------------------------------ html


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _ci(lo: Any, hi: Any) -> str:
    return "—" if _fmt(lo) == "—" else f"[{_fmt(lo)}, {_fmt(hi)}]"


def _table(
    header: list[str],
    rows: list[list[Any]],
    left: int = 1,
    flagged: list[bool] | None = None,
    text_last: bool = False,
) -> str:
    def cls(i: int) -> str:
        return "l" if i < left or (text_last and i == len(header) - 1) else ""

    th = "".join(f'<th class="{cls(i)}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = []
    for k, row in enumerate(rows):
        tr = ' class="flag"' if flagged and flagged[k] else ""
        tds = "".join(f'<td class="{cls(i)}">{c}</td>' for i, c in enumerate(row))
        body.append(f"<tr{tr}>{tds}</tr>")
    # wide tables scroll inside their box instead of widening the page
    return f"<div class='tw'><table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _img(src: str | None, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">' if src else ""


def _html(
    s: EvaluationSummary,
    tasks: list[TaskResult],
    concepts: list[ConceptResult],
    comparison: pl.DataFrame | None,
) -> str:
    parts = [
        f"<h1>replaybench evaluation</h1><p class='muted'>predictions: {html.escape(s.predictions)} · "
        f"{s.n_ok} rows evaluated, {s.n_error} error rows left out, {s.n_skipped} rows filtered by the run "
        f"(skipped: not errors) · groups: {html.escape(', '.join(s.group_columns) or 'none')}"
        f" · {int(s.ci * 100)}% bootstrap CIs ({s.n_boot} resamples, seed {s.seed}) · groups under "
        f"{s.min_group_size} items are shown in grey and never ranked</p>"
    ]
    parts += [f"<p class='warn'>{html.escape(w)}</p>" for w in s.warnings]
    if s.errors_by_bundle or s.skipped_by_bundle:
        names = sorted({*s.errors_by_bundle, *s.skipped_by_bundle})
        parts.append("<h2>Rows left out</h2>")
        parts.append(
            _table(
                ["bundle", "error rows", "filtered (skipped: no face, not one face, not applicable)"],
                [
                    [html.escape(b), s.errors_by_bundle.get(b, 0), s.skipped_by_bundle.get(b, 0)]
                    for b in names
                ],
            )
        )
    if s.bundle_parity:
        parity_rows = [
            [
                html.escape(name),
                "—" if p.passed is None else ("passed" if p.passed else "<span class='sp'>FAILED</span>"),
                html.escape(p.reference_runtime or "—"),
                html.escape(p.reference or "not recorded"),
                html.escape(p.reference_reason or ""),
            ]
            for name, p in sorted(s.bundle_parity.items())
        ]
        parts.append("<h2>Bundles: parity with the app's model</h2>")
        parts.append(
            _table(
                ["bundle", "parity", "reference runtime", "reference model", "why"],
                parity_rows,
                left=4,
                text_last=True,
            )
        )
    for t in tasks:
        ts = t.summary
        parts.append(f"<h2>{html.escape(ts.bundle)} — {html.escape(ts.task)}</h2>")
        parts.append(
            f"<p class='muted'>{ts.n_items} items; {ts.n_missing_prediction} without a usable label or prediction "
            "(left out, counted)</p>"
        )
        parts.append(
            _table(
                ["metric", "value", "CI", "n", "of", "meaning"],
                [
                    [
                        html.escape(m.name),
                        _fmt(m.value),
                        _ci(m.ci_low, m.ci_high),
                        m.n,
                        "" if m.n_eff is None or m.n_eff == m.n else m.n_eff,
                        f"<span class='muted'>{html.escape(m.description)}</span>",
                    ]
                    for m in ts.headline
                ],
                text_last=True,
            )
        )
        parts.append("<h3>Disparities (max − min over groups; min / max)</h3>")
        parts.append(
            _table(
                [
                    "metric",
                    "grouping",
                    "difference",
                    "CI",
                    "ratio",
                    "CI",
                    "worst group",
                    "worst",
                    "groups",
                    "not ranked",
                ],
                [
                    [
                        html.escape(d.metric),
                        html.escape(d.grouping),
                        _fmt(d.difference),
                        _ci(*d.difference_ci),
                        _fmt(d.ratio),
                        _ci(*d.ratio_ci),
                        _fmt(d.worst_group),
                        _fmt(d.worst_value),
                        d.n_groups,
                        _short(d.excluded_groups),
                    ]
                    for d in ts.disparities
                    if d.metric in KEY_DISPARITIES.get(ts.task, []) and _plotted(d.grouping, ts.group_columns)
                ],
                left=2,
            )
        )
        parts.append(
            "<p class='muted'>Every metric's disparities for every grouping are in summary.json; "
            "every group value with its CI and flags is in metrics.parquet.</p>"
        )
        if ts.fairness:
            parts.append(
                _table(
                    ["fairness measure", "value"], [[html.escape(k), _fmt(v)] for k, v in ts.fairness.items()]
                )
            )
        for grouping in ("+".join(g) for g in t.frame.groupings):
            if _plotted(grouping, ts.group_columns):
                parts.append(_img(_group_bars(t, grouping), f"{ts.task} by {grouping}"))
                parts.append(_group_table(t, grouping))
            else:
                parts.append(
                    f"<details><summary>by {html.escape(grouping)} (table)</summary>"
                    f"{_group_table(t, grouping)}</details>"
                )
        if t.confusion is not None:
            what = {"gender": "es", "age": " (age bins)", "score": " (score buckets: reference vs score)"}
            parts.append(f"<h3>Confusion matrix{what.get(ts.task, '')}</h3>")
            parts.append(_img(_confusion_plot(t), "confusion matrix"))
        if ts.task == "age":
            parts.append("<h3>Age error by true age</h3>")
            parts.append(_img(_age_error_plot(t), "age error by true age"))
    for c in concepts:
        cs = c.summary
        parts.append(f"<h2>{html.escape(cs.bundle)} — concept associations ({html.escape(cs.source)})</h2>")
        parts.append(
            f"<p class='muted'>{cs.n_concepts} concepts × groups = {cs.n_tests} tests; {cs.n_significant} "
            f"significant at BH q &lt; {cs.alpha}; {len(cs.spurious)} significant associations of concepts listed as unrelated "
            f"to demographics (marked spurious, in red)</p>"
        )
        for grouping in c.associations["grouping"].unique(maintain_order=True).to_list():
            parts.append(_img(_concept_heatmap(c, grouping), f"concepts by {grouping}"))
        rows = [
            [
                ("<span class='sp'>" if a.spurious else "")
                + html.escape(a.concept)
                + ("</span>" if a.spurious else ""),
                html.escape(a.grouping),
                html.escape(a.group),
                a.n,
                _fmt(a.rate),
                _fmt(a.rate_rest),
                _fmt(a.odds_ratio, 2),
                _fmt(a.q_value, 4),
            ]
            for a in [*cs.spurious, *cs.strongest]
        ]
        if rows:
            parts.append("<h3>Spurious (red) and strongest associations</h3>")
            parts.append(
                _table(
                    ["concept", "grouping", "group", "n", "rate", "rate elsewhere", "odds ratio", "q"],
                    rows,
                    left=3,
                )
            )
        if cs.edit_effects:
            parts.append("<h3>Attribute edits: change in concept rate vs the unedited image</h3>")
            parts.append(
                _table(
                    ["edit", "concept", "identities", "Δ rate", "CI"],
                    [
                        [
                            html.escape(e.edit),
                            html.escape(e.concept),
                            e.n_identities,
                            _fmt(e.delta),
                            _ci(e.ci_low, e.ci_high),
                        ]
                        for e in cs.edit_effects
                    ],
                    left=2,
                )
            )
    if s.comparison is not None and comparison is not None:
        cmp = s.comparison
        parts.append(
            f"<h2>Agreement with {html.escape(cmp.other)} ({html.escape(str(cmp.route))} vs "
            f"{html.escape(str(cmp.route_other))})</h2>"
        )
        parts.append(
            _table(
                [
                    "field",
                    "kind",
                    "n",
                    "agreement",
                    "Cohen's κ",
                    "mean |diff|",
                    "worst group",
                    "value",
                    "routes",
                ],
                [
                    [
                        html.escape(f.field),
                        f.kind,
                        f.n,
                        _fmt(f.agreement),
                        _fmt(f.kappa),
                        _fmt(f.mean_abs_diff),
                        _fmt(f.worst_group),
                        _fmt(f.worst_group_value),
                        html.escape(f"{f.route} vs {f.route_other}"),
                    ]
                    for f in s.comparison.fields
                ],
                left=2,
            )
        )
    body = "\n".join(p for p in parts if p)
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>replaybench evaluation</title>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{_CSS}</style></head>"
        f"<body>{body}{_LOADED_SCRIPT}</body></html>"
    )


def _short(groups: list[str], k: int = 3) -> str:
    if len(groups) <= k:
        return html.escape(", ".join(groups))
    return html.escape(f"{len(groups)}: {', '.join(groups[:k])}, …")


def _cell(r: dict[str, Any]) -> str:
    if _fmt(r["value"]) == "—":
        return "—"
    of = f" of {r['n_eff']}" if r["n_eff"] != r["n"] else ""
    text = f"{_fmt(r['value'])} <span class='muted'>{_ci(r['ci_low'], r['ci_high'])}{of}</span>"
    if FLAG_SMALL_DENOMINATOR in r["flags"]:
        return f"<i class='muted' title='small denominator: not ranked'>{text}</i>"
    return text


def _plotted(grouping: str, groups: list[str]) -> bool:
    """Bars for each feature and for the first intersection; the other intersections get tables only."""
    return "+" not in grouping or grouping == "+".join(groups[:2])


def _group_table(t: TaskResult, grouping: str) -> str:
    names = [m.name for m in t.summary.headline][:6]
    r = t.frame.results.filter(pl.col("grouping") == grouping)
    groups = r["group"].unique(maintain_order=True).to_list()
    rows, flagged = [], []
    for g in groups:
        sub = r.filter(pl.col("group") == g)
        vals = {row["metric"]: row for row in sub.iter_rows(named=True)}
        first = sub.row(0, named=True)
        rows.append([html.escape(g), first["n"]] + [_cell(vals[n]) for n in names])
        flagged.append(bool(first["flags"]) and any(f in first["flags"] for f in (FLAG_SMALL, "empty")))
    return _table([grouping, "n", *names], rows, flagged=flagged)
