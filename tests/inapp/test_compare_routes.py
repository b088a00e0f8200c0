"""``evaluate --compare IN_APP OFFLINE``: the comparison says which route every number came from."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from replaybench.cli import main
from replaybench.evaluate.compare import compare_predictions
from tests.evaluate.synth import age_gender_predictions, write_parts


def test_compare_names_the_route_of_each_run(tmp_path: Path, capsys) -> None:
    base = age_gender_predictions(n=120, seed=3, n_errors=0)
    phone = base.with_columns(pl.lit("in_app").alias("route"), pl.col("age_pred") + 0.5)
    workstation = base.with_columns(pl.lit("offline").alias("route"))
    table = compare_predictions(phone, workstation, ["race"])
    assert set(table["route"]) == {"in_app"} and set(table["route_other"]) == {"offline"}
    # predictions written before the route column existed say so
    old = compare_predictions(phone, base, [])
    assert set(old["route_other"]) == {"unrecorded"}

    a, b = write_parts(phone, tmp_path / "app"), write_parts(workstation, tmp_path / "off")
    report = tmp_path / "r"
    args = ["evaluate", str(a), "-o", str(report), "--compare", str(b), "--task", "age", "--by", "race"]
    assert main([*args, "--n-boot", "10"]) == 0
    assert "(in_app vs offline)" in capsys.readouterr().out
    assert "in_app vs offline" in (report / "index.html").read_text(encoding="utf-8")
    doc = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    assert (doc["comparison"]["route"], doc["comparison"]["route_other"]) == ("in_app", "offline")
    age = next(f for f in doc["comparison"]["fields"] if f["field"] == "age_pred")
    assert (age["route"], age["route_other"], age["mean_abs_diff"]) == ("in_app", "offline", 0.5)
