"""Synthetic predictions in the predictions contract (written as real Parquet parts) for evaluate tests.

Deterministic for a seed. Two bundles share the items: ``age-model`` (``age_pred``) and ``gender-model``
(``gender_pred``, ``p_female``), plus optional concept bundles in both layouts (a ``concepts`` list of
{label, score} and ``concept__<name>`` columns). Error rows carry no predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from replaybench.bundle import Decoder
from replaybench.predictions import Column, build_schema
from replaybench.replay.decoders import output_columns
from replaybench.replay.sink import PartWriter

RACES = ["White", "Black", "Asian", "Indian", "Others"]


def labels(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "item_id": [f"img{i:05d}" for i in range(n)],
            "source_path": [f"faces/img{i:05d}.jpg" for i in range(n)],
            "age": rng.integers(1, 90, n),
            "gender": rng.choice(["male", "female"], n).tolist(),
            "race": rng.choice(RACES, n, p=[0.4, 0.2, 0.2, 0.15, 0.05]).tolist(),
        }
    )


def age_gender_predictions(n: int = 600, seed: int = 0, n_errors: int = 5) -> pl.DataFrame:
    """Rows for two bundles; the gender model errs more on Black women, the age model over-ages Asians."""
    lab = labels(n, seed)
    rng = np.random.default_rng(seed + 1)
    age = lab["age"].to_numpy().astype(float)
    race = np.array(lab["race"].to_list())
    gender = np.array(lab["gender"].to_list())
    age_pred = age + rng.normal(0, 5, n) + np.where(race == "Asian", 4.0, 0.0)
    flip = rng.random(n) < np.where((race == "Black") & (gender == "female"), 0.3, 0.08)
    gender_pred = np.where(flip, np.where(gender == "male", "female", "male"), gender)
    p_female = np.clip(np.where(gender_pred == "female", 0.8, 0.2) + rng.normal(0, 0.05, n), 0, 1)
    err = np.zeros(n, dtype=bool)
    err[rng.choice(n, n_errors, replace=False)] = True
    status = np.where(err, "error", "ok")
    age_rows = lab.with_columns(
        pl.lit("age-model").alias("bundle"),
        pl.Series("status", status),
        pl.Series("error", ["corrupt image" if e else None for e in err], dtype=pl.String),
        pl.Series("age_pred", np.where(err, np.nan, age_pred)).fill_nan(None),
        pl.Series("raw__out", [[float(a / 116)] for a in age_pred]),
    )
    gender_rows = lab.with_columns(
        pl.lit("gender-model").alias("bundle"),
        pl.Series("status", status),
        pl.Series("error", ["corrupt image" if e else None for e in err], dtype=pl.String),
        pl.Series(
            "gender_pred", [None if e else g for e, g in zip(err, gender_pred, strict=True)], dtype=pl.String
        ),
        pl.Series("p_female", np.where(err, np.nan, p_female)).fill_nan(None),
    )
    return pl.concat([age_rows, gender_rows], how="diagonal_relaxed")


CONCEPTS = [f"c{i:03d}" for i in range(40)] + ["lipstick", "beard", "tie", "dog"]


def concept_predictions(
    n: int = 800, seed: int = 0, layout: str = "columns", edits: bool = False
) -> pl.DataFrame:
    """Concept scores: 'lipstick' depends strongly on gender, 'tie' on gender (male), 'dog' is independent.

    With ``edits``, items come in identities each shown as 'none' and 'sunglasses'; the edit raises the
    'c000' score for everyone.
    """
    lab = labels(n, seed)
    rng = np.random.default_rng(seed + 2)
    female = np.array(lab["gender"].to_list()) == "female"
    scores = rng.random((n, len(CONCEPTS))) * 0.9  # baseline: detected (>=0.5) ~44% of the time
    scores[:, CONCEPTS.index("lipstick")] = np.where(female, 0.9, 0.1) + rng.normal(0, 0.05, n)
    scores[:, CONCEPTS.index("tie")] = np.where(female, 0.2, 0.7) + rng.normal(0, 0.1, n)
    extra = {}
    if edits:
        identity = np.arange(n) // 2
        edit = np.where(np.arange(n) % 2 == 0, "none", "sunglasses")
        # paired items share the identity's demographics
        for col in ("gender", "race", "age"):
            v = lab[col].to_numpy()
            lab = lab.with_columns(pl.Series(col, v[identity * 2]))
        scores[:, 0] = np.where(edit == "sunglasses", 0.95, 0.05)
        extra = {"identity": [f"id{i}" for i in identity], "edit": edit.tolist()}
    df = lab.with_columns(
        pl.lit("concept-model").alias("bundle"),
        pl.lit("ok").alias("status"),
        pl.lit(None, dtype=pl.String).alias("error"),
        *(pl.Series(k, v) for k, v in extra.items()),
    )
    if layout == "columns":
        return df.with_columns(pl.Series(f"concept__{c}", scores[:, i]) for i, c in enumerate(CONCEPTS))
    lists = []
    for row in scores:
        order = np.argsort(-row)
        lists.append([{"label": CONCEPTS[j], "score": float(row[j])} for j in order if row[j] >= 0.5])
    return df.with_columns(pl.Series("concepts", lists))


def write_parts(df: pl.DataFrame, folder: Path, n_parts: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-df.height // n_parts)
    for i in range(n_parts):
        df.slice(i * size, size).write_parquet(folder / f"part-{i:05d}.parquet")
    return folder


def write_v2_parts(
    df: pl.DataFrame,
    folder: Path,
    labels: dict[str, str],
    outputs: list[Column],
    n_parts: int = 2,
    posts: bool = False,
) -> Path:
    """``df`` written as the replay writer writes it: parts of schema version 2 (PartWriter, the schema in
    each part's metadata). ``labels`` maps each dataset label key to its kind (a key that collides with a
    column is ``label__<key>`` in ``df``, as replay names it); ``outputs`` are the bundles' columns."""
    schema = build_schema(labels, outputs, posts=posts)  # type: ignore[arg-type]
    stray = set(df.columns) - set(schema.names)
    assert not stray, f"columns outside the schema: {stray}"  # a mistake in the test, not the code
    frame = df.select(
        pl.col(name).cast(dtype) if name in df.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in schema.polars_schema().items()
    )
    folder.mkdir(parents=True, exist_ok=True)
    writer = PartWriter(folder, -(-frame.height // n_parts), schema)
    for i in range(n_parts):
        writer.add(frame.slice(i * writer.rows_per_part, writer.rows_per_part))
    writer.flush()
    return folder


def age_gender_outputs() -> list[Column]:
    """The columns of the two synthetic bundles as their decoders make them."""
    return [
        *output_columns(
            "age-model",
            [Decoder(output="out", field="age_pred", kind="scale", factor=116.0)],
            {"out": 1},
            None,
        ),
        *output_columns(
            "gender-model",
            [Decoder(output="probs", field="gender_pred", kind="softmax_argmax", labels=["male", "female"])],
            {"probs": 2},
            None,
        ),
    ]


AGE_GENDER_LABELS = {"age": "int", "gender": "str", "race": "str"}
