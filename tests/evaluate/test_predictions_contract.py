"""evaluate reads the predictions contract: tasks from the schema (version 2) or from column names
(version 1, parts without schema metadata); mixed or newer versions refused; skipped rows are not errors."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from replaybench.bundle import Decoder
from replaybench.cli import main
from replaybench.errors import CorruptInputError, EvaluationError
from replaybench.evaluate import messages as msg
from replaybench.evaluate.evaluation import evaluate_predictions
from replaybench.evaluate.predictions import detect_tasks, load_predictions
from replaybench.predictions import METADATA_KEY
from replaybench.replay.decoders import output_columns
from tests.evaluate.synth import (
    AGE_GENDER_LABELS,
    age_gender_outputs,
    age_gender_predictions,
    write_parts,
    write_v2_parts,
)

FAST = {"n_boot": 20}


@pytest.fixture(scope="module")
def base() -> pl.DataFrame:
    return age_gender_predictions(n=200, seed=4, n_errors=4)


def _tasks(summary) -> set[tuple[str, str]]:
    return {(t.bundle, t.task) for t in summary.tasks}


def test_version_1_parts_are_read_by_column_names(tmp_path, base):
    preds = write_parts(base, tmp_path / "v1")
    assert load_predictions(preds).schema is None
    s = evaluate_predictions(preds, tmp_path / "r", **FAST)
    assert _tasks(s) == {("age-model", "age"), ("gender-model", "gender")}
    assert s.n_error == 8 and s.n_skipped == 0


def test_version_2_parts_take_tasks_from_the_schema(tmp_path, base):
    preds = write_v2_parts(base, tmp_path / "v2", AGE_GENDER_LABELS, age_gender_outputs())
    loaded = load_predictions(preds)
    assert loaded.schema is not None and loaded.schema.tasks_of("gender-model") == ["gender"]
    s = evaluate_predictions(preds, tmp_path / "r", **FAST)
    assert _tasks(s) == {("age-model", "age"), ("gender-model", "gender")}


def test_a_field_named_like_a_task_feeds_it_only_when_its_decoder_makes_that_task(tmp_path):
    # a multi-label tagger whose field happens to be 'gender_pred': lists of labels, not one class
    df = pl.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(40)],
            "bundle": ["tagger"] * 40,
            "status": ["ok"] * 40,
            "gender": ["female", "male"] * 20,
            "gender_pred": [["female", "smile"], ["male"]] * 20,
        }
    )
    tagger = [Decoder(output="o", field="gender_pred", kind="sigmoid", labels=["female", "male", "smile"])]
    preds = write_v2_parts(
        df, tmp_path / "p", {"gender": "str"}, output_columns("tagger", tagger, {"o": 3}, None)
    )
    assert detect_tasks(df) == ["gender"]  # the name rule of version 1 would take it for the gender task
    with pytest.raises(EvaluationError) as e:
        evaluate_predictions(preds, tmp_path / "r", **FAST)
    assert str(e.value) == msg.NO_TASK_DETECTED


def test_parts_of_mixed_versions_are_refused(tmp_path, base, capsys):
    preds = write_v2_parts(base, tmp_path / "p", AGE_GENDER_LABELS, age_gender_outputs())
    base.head(10).write_parquet(preds / "part-00009.parquet")  # a version 1 part (no schema metadata)
    with pytest.raises(CorruptInputError, match="parts of different schema versions: part-00009.parquet"):
        load_predictions(preds)
    assert main(["evaluate", str(preds), "-o", str(tmp_path / "r")]) == CorruptInputError.exit_code == 5
    assert "new folder" in capsys.readouterr().err


def test_parts_of_different_schemas_are_refused(tmp_path, base):
    a = write_v2_parts(base, tmp_path / "a", AGE_GENDER_LABELS, age_gender_outputs())
    b = write_v2_parts(
        base.drop("race"), tmp_path / "b", {"age": "int", "gender": "str"}, age_gender_outputs()
    )
    shutil.copy(b / "part-00000.parquet", a / "part-00007.parquet")
    with pytest.raises(CorruptInputError, match="disagree on their schema.*column 'race'"):
        load_predictions(a)


def test_a_newer_schema_version_is_refused_with_an_upgrade_hint(tmp_path, base, capsys):
    preds = write_v2_parts(base, tmp_path / "p", AGE_GENDER_LABELS, age_gender_outputs(), n_parts=1)
    part = preds / "part-00000.parquet"
    doc = json.loads(pl.read_parquet_metadata(part)[METADATA_KEY])
    pl.read_parquet(part).write_parquet(part, metadata={METADATA_KEY: json.dumps({**doc, "version": 3})})
    with pytest.raises(
        CorruptInputError, match="schema version 3; this replaybench reads versions up to 2"
    ) as e:
        load_predictions(preds)
    assert e.value.hint is not None and "upgrade replaybench" in e.value.hint
    assert main(["evaluate", str(preds), "-o", str(tmp_path / "r")]) == 5
    assert "upgrade replaybench" in capsys.readouterr().err


@pytest.mark.parametrize("version", [1, 2])
def test_skipped_rows_are_counted_apart_from_errors(tmp_path, base, version):
    # 6 rows per bundle filtered by the run (no face found), 4 per bundle failed (corrupt image)
    ok_ids = base.filter(pl.col("status") == "ok")["item_id"].unique().sort().to_list()[:6]
    df = base.with_columns(
        pl.when(pl.col("item_id").is_in(ok_ids))
        .then(pl.lit("skipped"))
        .otherwise(pl.col("status"))
        .alias("status")
    )
    if version == 1:
        preds = write_parts(df, tmp_path / "p")
    else:
        preds = write_v2_parts(df, tmp_path / "p", AGE_GENDER_LABELS, age_gender_outputs())
    s = evaluate_predictions(preds, tmp_path / "r", **FAST)
    assert s.errors_by_bundle == {"age-model": 4, "gender-model": 4} and s.n_error == 8
    assert s.skipped_by_bundle == {"age-model": 6, "gender-model": 6} and s.n_skipped == 12
    assert s.n_ok == base.height - 20 and s.n_rows == base.height
    assert not any("skipped" in w for w in s.warnings)
    doc = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (doc["n_error"], doc["n_skipped"]) == (8, 12)
    page = (tmp_path / "r" / "index.html").read_text()
    assert "8 error rows left out, 12 rows filtered by the run (skipped: not errors)" in page


def test_only_skipped_rows_leave_nothing_to_evaluate(tmp_path, base):
    preds = write_parts(base.with_columns(pl.lit("skipped").alias("status")), tmp_path / "p")
    with pytest.raises(EvaluationError) as e:
        load_predictions(preds)
    assert str(e.value) == msg.NO_OK_ROWS.format(n_error=0, n_skipped=base.height)


def test_a_status_outside_the_contract_is_refused_in_version_2(tmp_path, base):
    df = base.with_columns(
        pl.when(pl.col("status") == "error")
        .then(pl.lit("crashed"))
        .otherwise(pl.col("status"))
        .alias("status")
    )
    preds = write_v2_parts(df, tmp_path / "p", AGE_GENDER_LABELS, age_gender_outputs())
    with pytest.raises(CorruptInputError) as e:
        load_predictions(preds)
    assert str(e.value) == msg.UNKNOWN_STATUS.format(values=["crashed"], allowed=["ok", "error", "skipped"])
