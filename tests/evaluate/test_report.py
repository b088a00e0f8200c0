"""End to end: predictions Parquet parts in, report folder out (HTML opened in real headless Chromium),
the CLI, and bad input turned into typed errors with constant messages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from replaybench.cli import main
from replaybench.errors import CorruptInputError, EvaluationError, InputNotFoundError
from replaybench.evaluate import messages as msg
from replaybench.evaluate.evaluation import evaluate_predictions
from replaybench.evaluate.summary import EvaluationSummary
from tests.evaluate.synth import age_gender_predictions, concept_predictions, write_parts

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def preds(tmp_path_factory) -> Path:
    return write_parts(
        age_gender_predictions(n=600, seed=0, n_errors=5), tmp_path_factory.mktemp("p") / "preds"
    )


@pytest.fixture(scope="module")
def report(preds, tmp_path_factory) -> tuple[Path, EvaluationSummary]:
    out = tmp_path_factory.mktemp("r") / "report"
    return out, evaluate_predictions(preds, out, by=["race", "gender"], n_boot=200, seed=0)


def test_report_files_and_summary(report, preds):
    out, s = report
    assert {"index.html", "metrics.parquet", "summary.json", "confusion.parquet"} <= {
        p.name for p in out.iterdir()
    }
    assert s.n_rows == 1200 and s.n_error == 10 and s.errors_by_bundle == {"age-model": 5, "gender-model": 5}
    assert [(t.bundle, t.task) for t in s.tasks] == [("age-model", "age"), ("gender-model", "gender")]
    again = EvaluationSummary.model_validate_json((out / "summary.json").read_text())
    assert again == s
    # headline numbers recomputed independently from the Parquet parts
    df = pl.read_parquet(sorted(preds.glob("part-*.parquet")))
    g = df.filter((pl.col("bundle") == "gender-model") & (pl.col("status") == "ok"))
    acc = np.mean(g["gender"].to_numpy() == g["gender_pred"].to_numpy())
    gender = s.tasks[1]
    assert gender.headline[0].name == "accuracy" and gender.headline[0].value == pytest.approx(acc)
    assert gender.headline[0].n == 595
    a = df.filter((pl.col("bundle") == "age-model") & (pl.col("status") == "ok"))
    age, pred = a["age"].to_numpy().astype(float), a["age_pred"].to_numpy()
    mae = next(m for m in s.tasks[0].headline if m.name == "mae")
    assert mae.value == pytest.approx(np.mean(np.abs(pred - age)))
    m18 = next(m for m in s.tasks[0].headline if m.name == "minors_as_adults@18")
    assert m18.value == pytest.approx(np.sum((age < 18) & (pred >= 18)) / np.sum(age < 18))
    # the planted disparities are found: the gender model is worst for Black women, age worst for Asians
    acc_rg = next(d for d in gender.disparities if d.metric == "accuracy" and d.grouping == "race+gender")
    assert acc_rg.worst_group == "Black / female"
    mae_race = next(d for d in s.tasks[0].disparities if d.metric == "mae" and d.grouping == "race")
    assert mae_race.worst_group == "Asian" and "Others" in mae_race.excluded_groups
    assert gender.fairness["demographic_parity_difference[race]"] is not None


def test_metrics_parquet_is_tidy(report):
    out, _ = report
    m = pl.read_parquet(out / "metrics.parquet")
    assert m.columns == [
        "bundle",
        "task",
        "metric",
        "grouping",
        "group",
        "race",
        "gender",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "n_eff",
        "n_missing",
        "flags",
    ]
    assert set(m["grouping"].unique()) == {"overall", "race", "gender", "race+gender"}
    small = m.filter((pl.col("grouping") == "race") & (pl.col("race") == "Others"))
    assert small["flags"].list.contains("small_group").all()
    assert m.filter(pl.col("grouping") == "race+gender")["race"].null_count() == 0


def test_html_is_self_contained(report):
    out, _ = report
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched: readable offline
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) >= 6 and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "recall[female]" in html and "minors_as_adults@18" in html


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    out, _ = report
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    url = (out / "index.html").resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<body data-images="(\d+)/(\d+)"', dom)
    assert m, "the page's load script did not run"
    decoded, total = int(m[1]), int(m[2])
    assert total >= 6 and decoded == total
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2000", url], capture_output=True, timeout=120
    )
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        assert len(set(im.convert("L").resize((60, 100)).getdata())) > 20  # not a blank page


def test_concepts_report_and_spurious(tmp_path):
    preds = write_parts(concept_predictions(n=500, seed=1, layout="list", edits=True), tmp_path / "cp")
    spurious = tmp_path / "unrelated.txt"
    spurious.write_text("lipstick\ndog\n")
    s = evaluate_predictions(preds, tmp_path / "r", by=["gender"], spurious=spurious, n_boot=50)
    c = s.concepts[0]
    assert c.source == "concepts" and c.n_concepts == 44 and c.n_tests == 88
    assert {a.concept for a in c.spurious} == {"lipstick"}
    assert c.edit_effects[0].concept == "c000" and c.edit_effects[0].delta == pytest.approx(1.0)
    assert (tmp_path / "r" / "concepts.parquet").exists() and (tmp_path / "r" / "edits.parquet").exists()


def test_classification_without_truth_becomes_label_rates(tmp_path):
    df = age_gender_predictions(n=300, seed=2, n_errors=0).filter(pl.col("bundle") == "gender-model")
    df = df.with_columns(pl.col("gender_pred").alias("label_pred"), pl.lit("clf").alias("bundle")).drop(
        "gender_pred"
    )
    s = evaluate_predictions(write_parts(df, tmp_path / "p"), tmp_path / "r", by=["gender"], n_boot=20)
    assert s.tasks == [] and s.concepts[0].source == "label_pred"
    assert {a.concept for a in s.concepts[0].strongest} >= {"female", "male"}


def test_compare_two_runs(preds, tmp_path):
    df = pl.read_parquet(sorted(preds.glob("part-*.parquet"))).with_columns(pl.col("age_pred") + 2.0)
    other = write_parts(df, tmp_path / "other")
    s = evaluate_predictions(preds, tmp_path / "r", compare=other, task="gender", by=["gender"], n_boot=20)
    fields = {f.field: f for f in s.comparison.fields}
    assert fields["age_pred"].mean_abs_diff == pytest.approx(2.0)
    assert fields["gender_pred"].agreement == 1.0 and fields["gender_pred"].kappa == pytest.approx(1.0)


def test_cli_json_and_table(preds, tmp_path, capsys):
    assert (
        main(["evaluate", str(preds), "-o", str(tmp_path / "r"), "--by", "race", "--n-boot", "20", "--json"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["group_columns"] == ["race"] and doc["files"]["html"] == "index.html"
    assert (
        main(
            [
                "evaluate",
                str(preds),
                "-o",
                str(tmp_path / "r2"),
                "--task",
                "gender",
                "--by",
                "gender",
                "--n-boot",
                "20",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "gender-model: gender" in out and "balanced_accuracy" in out and "index.html" in out


def test_cli_errors(preds, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing"), "-o", str(tmp_path / "r")]) == 3
    assert main(["evaluate", str(preds), "-o", str(tmp_path / "r"), "--by", "skin_tone"]) == 14
    err = capsys.readouterr().err
    assert (
        msg.GROUP_COLUMN_ABSENT.format(column="skin_tone", available=["race", "gender", "age_group"]) in err
    )
    assert main(["evaluate", str(preds), "-o", str(tmp_path / "r"), "--task", "pose"]) == 14


def _err(fn, *args, **kw) -> str:
    with pytest.raises((EvaluationError, InputNotFoundError, CorruptInputError)) as e:
        fn(*args, **kw)
    return str(e.value)


def test_bad_predictions(tmp_path, preds):
    base = pl.read_parquet(sorted(preds.glob("part-*.parquet")))
    out = tmp_path / "r"
    assert _err(evaluate_predictions, tmp_path / "nope", out) == msg.PREDICTIONS_NOT_FOUND.format(
        path=tmp_path / "nope"
    )
    (tmp_path / "empty").mkdir()
    assert _err(evaluate_predictions, tmp_path / "empty", out) == msg.NO_PARQUET_PARTS.format(
        path=tmp_path / "empty"
    )
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    assert _err(evaluate_predictions, bad, out).startswith(f"cannot read predictions file {bad}: ")
    one = tmp_path / "nolabel.parquet"
    base.drop("gender").write_parquet(one)
    assert _err(evaluate_predictions, one, out, task="gender") == msg.MISSING_LABEL_COLUMN.format(
        task="gender", column="gender"
    )
    base.drop("status").write_parquet(one)
    assert _err(evaluate_predictions, one, out) == msg.MISSING_REQUIRED_COLUMN.format(column="status")
    base.with_columns(pl.lit("error").alias("status")).write_parquet(one)
    assert _err(evaluate_predictions, one, out) == msg.NO_OK_ROWS.format(n_error=base.height, n_skipped=0)
    base.drop("age_pred", "gender_pred").write_parquet(one)
    assert _err(evaluate_predictions, one, out) == msg.NO_TASK_DETECTED
    base.with_columns(pl.lit("adult").alias("age")).write_parquet(one)
    assert _err(evaluate_predictions, one, out, task="age") == msg.UNPARSEABLE_AGE.format(
        value="adult", column="age"
    )
    assert _err(evaluate_predictions, preds, out, ci=1.2) == msg.BAD_CI.format(ci=1.2)
    coded = base.with_columns(
        pl.when(pl.col("gender") == "male").then(pl.lit("0")).otherwise(pl.lit("1")).alias("gender")
    )
    coded.write_parquet(one)
    assert _err(evaluate_predictions, one, out, task="gender") == msg.LABELS_DISJOINT.format(
        label="gender", prediction="gender_pred", true=["0", "1"], pred=["female", "male"]
    )
    assert _err(evaluate_predictions, preds, out, by=["group"]) == msg.RESERVED_GROUP_NAME.format(
        column="group"
    )
    assert _err(evaluate_predictions, preds, one) == msg.REPORT_PATH_IS_FILE.format(path=one)


def test_nan_predictions_are_counted_not_scored(tmp_path, preds):
    df = pl.read_parquet(sorted(preds.glob("part-*.parquet")))
    nan_ids = df.filter(pl.col("race") == "Black")["item_id"].unique().to_list()[:10]
    df = df.with_columns(
        pl.when(pl.col("item_id").is_in(nan_ids))
        .then(float("nan"))
        .otherwise(pl.col("age_pred"))
        .alias("age_pred")
    )
    s = evaluate_predictions(
        write_parts(df, tmp_path / "p"), tmp_path / "r", task="age", by=["race"], n_boot=20
    )
    age = next(t for t in s.tasks if t.bundle == "age-model")
    ok = df.filter((pl.col("bundle") == "age-model") & (pl.col("status") == "ok"))
    assert age.n_missing_prediction == ok.filter(pl.col("item_id").is_in(nan_ids)).height
    keep = ok.filter(pl.col("age_pred").is_not_nan())
    mae = next(m for m in age.headline if m.name == "mae")
    assert mae.value == pytest.approx(np.mean(np.abs(keep["age_pred"].to_numpy() - keep["age"].to_numpy())))
    m = pl.read_parquet(tmp_path / "r" / "metrics.parquet").filter(
        (pl.col("bundle") == "age-model") & (pl.col("group") == "Black") & (pl.col("metric") == "mae")
    )
    assert m["flags"][0].to_list().count("missing_excluded") == 1


def test_gender_label_case_is_not_an_error(tmp_path, preds):
    df = pl.read_parquet(sorted(preds.glob("part-*.parquet")))
    upper = df.with_columns(pl.col("gender").str.to_titlecase())  # FairFace style 'Male'/'Female'
    a = evaluate_predictions(preds, tmp_path / "a", task="gender", by=["race"], n_boot=0)
    b = evaluate_predictions(
        write_parts(upper, tmp_path / "p"), tmp_path / "b", task="gender", by=["race"], n_boot=0
    )
    assert a.tasks[0].headline[0].value == b.tasks[0].headline[0].value > 0.8


def test_single_file_and_fairface_bins(tmp_path):
    df = age_gender_predictions(n=300, seed=3, n_errors=0).filter(pl.col("bundle") == "age-model")
    bins = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
    lows = np.array([0, 3, 10, 20, 30, 40, 50, 60, 70])
    idx = np.searchsorted(lows, df["age"].to_numpy(), side="right") - 1
    df = df.with_columns(pl.Series("age", [bins[i] for i in idx]))
    f = tmp_path / "preds.parquet"
    df.write_parquet(f)
    s = evaluate_predictions(f, tmp_path / "r", task="age", by=["age_group"], n_boot=20)
    names = [m.name for m in s.tasks[0].headline]
    assert "mae" not in names and "age_bin_accuracy" in names and "minors_as_adults@13" in names
    # '10-19' straddles the 13-17 / 18-29 age groups: those rows get no age group, and that group is
    # reported but never ranked
    m = pl.read_parquet(tmp_path / "r" / "metrics.parquet").filter(pl.col("grouping") == "age_group")
    unknown = m.filter(pl.col("age_group") == "(missing)")
    assert unknown["n"][0] == int((df["age"] == "10-19").sum())
    assert unknown["flags"][0].to_list().count("unknown_group") == 1
    d = next(d for d in s.tasks[0].disparities if d.metric == "age_bin_accuracy")
    assert "(missing)" in d.excluded_groups
    shutil.rmtree(tmp_path / "r")
