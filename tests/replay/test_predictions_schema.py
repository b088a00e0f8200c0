"""The predictions schema as written: recorded in every Parquet part by PartWriter and by the runner, read
back equal, and read independently (pyarrow) as the documented JSON under ``replaybench.predictions``."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from replaybench.bundle import Decoder
from replaybench.errors import UsageError
from replaybench.predictions import (
    METADATA_KEY,
    PREDICTIONS_SCHEMA_VERSION,
    Column,
    Producer,
    build_schema,
    read_schema,
)
from replaybench.replay.decoders import decode_outputs, output_columns
from replaybench.replay.items import DatasetItem
from replaybench.replay.runner import ReplayOptions, replay
from replaybench.replay.sink import PartWriter, item_columns, label_types, rows_frame
from tests.replay.helpers import tiny_bundle, utk_images

GENDER = [Decoder(output="probs", field="gender_pred", kind="softmax_argmax", labels=["male", "female"])]
# the decoder distill/export.py writes into a student bundle
STUDENT = [Decoder(output="score", field="score", kind="scale")]


def _schema():
    items = [
        DatasetItem(
            item_id=f"p{i}",
            path=None,
            labels={"score": [3, 7.5, None, 9][i], "account": ["a", "b", "a", "b"][i], "bundle": "x"},
            caption=f"caption {i}",
            post_id=f"p{i}",
        )
        for i in range(4)
    ]
    outputs = [
        *output_columns("gender-net", GENDER, {"probs": 2}, None),
        *output_columns("student", STUDENT, {"score": 1}, None),
    ]
    schema = build_schema(label_types([it.labels for it in items]), outputs, posts=True, faces=True)
    return items, schema


def test_schema_roles_tasks_and_renamed_labels():
    _, schema = _schema()
    col = {c.name: c for c in schema.columns}
    assert schema.version == PREDICTIONS_SCHEMA_VERSION == 2
    assert schema.names == [
        "item_id",
        "source_path",
        "bundle",
        "label__score",
        "account",
        "label__bundle",
        "route",
        "post_id",
        "caption",
        "face_count",
        "face_box",
        "face_score",
        "raw__probs",
        "gender_pred",
        "p_male",
        "p_female",
        "raw__score",
        "score",
        "status",
        "error",
    ]
    # labels that collide with another column keep the dataset's key
    assert (col["label__score"].role, col["label__score"].label_key, col["label__score"].kind) == (
        "label",
        "score",
        "float",
    )
    assert col["label__bundle"].label_key == "bundle" and col["account"].label_key == "account"
    assert col["score"].role == "decoded" and col["score"].task == "score" and col["score"].kind == "float"
    assert col["score"].producers == (
        Producer(bundle="student", decoder="scale", field="score", output="score"),
    )
    assert col["gender_pred"].task == "gender" and col["p_female"].task is None
    assert col["p_female"].producers[0].field == "gender_pred"
    assert (
        col["raw__score"].role == "raw" and col["face_box"].role == "face" and col["caption"].role == "post"
    )
    assert schema.tasks_of("student") == ["score"] and schema.tasks_of("gender-net") == ["gender"]


def test_a_field_only_feeds_its_task_with_a_decoder_kind_that_makes_it():
    # gender_pred made by 'scale' is a number, not a class: it must not be read as the gender task
    cols = output_columns("b", [Decoder(output="o", field="gender_pred", kind="scale")], {"o": 1}, None)
    assert next(c for c in cols if c.name == "gender_pred").task is None


def test_round_trip_through_parts_written_by_part_writer(tmp_path):
    items, schema = _schema()
    writer = PartWriter(tmp_path, rows_per_part=4, schema=schema, metadata={"replaybench.fidelity": "{}"})
    rng = np.random.default_rng(0)
    for start in (0, 2):  # two blocks of two items x two bundles: one part each
        chunk = items[start : start + 2]
        valid = np.array([True, start == 0])
        frames = []
        for bundle, decoders, outs in (
            ("gender-net", GENDER, {"probs": rng.random((int(valid.sum()), 2), dtype=np.float32)}),
            ("student", STUDENT, {"score": rng.random(int(valid.sum()), dtype=np.float32) * 10}),
        ):
            base = item_columns(schema, chunk)
            base.update(
                bundle=[bundle] * 2,
                route=["offline"] * 2,
                status=["ok" if v else "skipped" for v in valid],
                error=[None if v else "no face" for v in valid],
            )
            frames.append(rows_frame(schema, 2, base, decode_outputs(outs, decoders, None), valid))
        writer.add(pl.concat(frames))
    writer.flush()
    parts = sorted(tmp_path.glob("part-*.parquet"))
    assert len(parts) == 2
    assert read_schema(parts) == schema
    for part in parts:
        meta = pq.read_metadata(part).metadata  # an independent reader of the key/value metadata
        doc = json.loads(meta[METADATA_KEY.encode()])
        assert doc["version"] == 2
        assert [c["name"] for c in doc["columns"]] == schema.names
        assert meta[b"replaybench.fidelity"] == b"{}"  # the run's own metadata is kept beside it
        table = pl.read_parquet(part)
        assert table.columns == schema.names and dict(table.schema) == schema.polars_schema()
    df = pl.read_parquet(parts)
    assert df.filter(pl.col("bundle") == "student")["label__score"].to_list() == [3.0, 7.5, None, 9.0]
    assert df.filter(pl.col("status") == "skipped")["score"].null_count() == 2


def test_rows_frame_refuses_a_status_outside_the_contract():
    items, schema = _schema()
    base = item_columns(schema, items[:1])
    base.update(bundle=["student"], status=["failed"], error=[None])
    with pytest.raises(ValueError, match="not one of"):
        rows_frame(schema, 1, base, {}, np.array([False]))


def test_bundles_that_disagree_on_a_column_are_refused():
    a = Column(name="age_pred", kind="float", role="decoded", task="age")
    b = Column(name="age_pred", kind="str", role="decoded", task="age")
    with pytest.raises(UsageError, match="disagree on column 'age_pred'"):
        build_schema({}, [a, b])


def test_the_runner_records_the_schema_in_every_part(tmp_path):
    ds = tmp_path / "ds"
    utk_images(ds, 6)
    res = replay(
        [tiny_bundle(tmp_path / "b")], ds, tmp_path / "p", ReplayOptions(workers=0, batch_size=3, part_rows=3)
    )
    assert res.parts_written == 2
    parts = sorted((tmp_path / "p").glob("part-*.parquet"))
    schema = read_schema(parts)
    assert schema is not None and schema.tasks_of("tiny") == ["age", "gender"]
    assert [c.name for c in schema.with_role("label")] == ["age", "gender", "race", "gender_id", "race_id"]
    for part in parts:
        assert pl.read_parquet(part).columns == schema.names
        meta = pq.read_metadata(part).metadata
        assert b"replaybench.fidelity" in meta and METADATA_KEY.encode() in meta
