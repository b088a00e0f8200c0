"""The predictions folder: Parquet parts written atomically, and the run manifest that makes resume safe.

::

    PREDS/run.json            dataset fingerprint, bundles, settings (resume refuses a different run)
    PREDS/part-00000.parquet  one row per (item, bundle); all rows of an item are in the same part
    PREDS/part-00001.parquet  ...

A part is written to ``.part-NNNNN.parquet.tmp`` and renamed into place, so a killed run (even kill -9)
leaves only whole parts. The items already done are the ``item_id`` values of the parts; ``--resume``
skips them and numbers new parts after the last one, so there are no duplicates and no losses.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from replaybench.errors import UsageError

RUN_MANIFEST = "run.json"
PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
FIXED_COLUMNS = ("item_id", "source_path", "bundle")
STATUS_COLUMNS = ("status", "error")
FACE_COLUMNS = {"face_count": "int", "face_box": "float_list", "face_score": "float"}


def column_dtype(kind: str) -> Any:
    """The polars type of a column kind (written by polars' own Parquet writer: no pyarrow, and so no
    pandas import, which pyarrow makes on its first array and costs ~0.25 s of every replay's start)."""
    import polars as pl

    return {
        "float": pl.Float64,
        "int": pl.Int64,
        "str": pl.String,
        "bool": pl.Boolean,
        "str_list": pl.List(pl.String),
        "float_list": pl.List(pl.Float32),
        "topk": pl.List(pl.Struct({"label": pl.String, "score": pl.Float64})),
    }[kind]


def label_types(labels: Sequence[Mapping[str, object]]) -> dict[str, str]:
    """Kind of every label column seen over all items: bool, int, float (ints and floats mixed), or str
    (text, a column of only nulls, and anything mixed or unusual, such as dates, kept as its text)."""
    seen: dict[str, set[type]] = {}
    for lab in labels:
        for k, v in lab.items():
            types = seen.setdefault(k, set())
            if v is not None:
                types.add(type(v))
    out = {}
    for k, types in seen.items():
        if types == {bool}:
            out[k] = "bool"
        elif types == {int}:
            out[k] = "int"
        elif types and types <= {int, float}:
            out[k] = "float"
        else:
            out[k] = "str"
    return out


def as_label(kind: str, value: object) -> object:
    """A label value in its column's kind (see ``label_types``)."""
    if value is None or kind in ("bool", "int"):
        return value
    if kind == "float":
        return float(value)  # type: ignore[arg-type]
    return value if isinstance(value, str) else str(value)


def build_schema(
    labels: Mapping[str, str], extra: Mapping[str, str], decoded: Mapping[str, str]
) -> dict[str, Any]:
    """The predictions schema (column -> polars type): fixed columns, labels, face/post columns, decoded
    fields, raw outputs, status."""
    kinds = {"item_id": "str", "source_path": "str", "bundle": "str", **labels, **extra, **decoded}
    kinds.update(status="str", error="str")
    return {name: column_dtype(kind) for name, kind in kinds.items()}


def existing_parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("part-*.parquet") if PART_RE.match(p.name))


def done_item_ids(folder: Path) -> set[str]:
    """Item ids already written (every part is whole: parts are renamed into place)."""
    import polars as pl

    done: set[str] = set()
    for p in existing_parts(folder):
        done.update(pl.read_parquet(p, columns=["item_id"])["item_id"].to_list())
    return done


def check_or_write_manifest(folder: Path, manifest: dict[str, Any], resume: bool) -> None:
    """Start a run folder, or (``resume``) check it belongs to the same run. Never overwrites parts."""
    path = folder / RUN_MANIFEST
    parts = existing_parts(folder) if folder.is_dir() else []
    if resume:
        if not path.is_file():
            if parts:
                raise UsageError(f"{folder} has parts but no {RUN_MANIFEST}; cannot resume it safely")
        else:
            old = json.loads(path.read_text(encoding="utf-8"))
            for key in ("dataset", "bundles", "settings"):
                if old.get(key) != manifest.get(key):
                    raise UsageError(
                        f"--resume: {folder} holds a different run ({key} differ)",
                        hint="resume with the same bundles, dataset and options, or write to a new folder",
                    )
            for tmp in folder.glob(".part-*.tmp"):  # left by a killed run: never renamed, so not counted
                tmp.unlink()
            return
    elif parts or path.is_file():
        raise UsageError(
            f"{folder} already holds predictions", hint="add --resume to continue that run, or pick a new -o"
        )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RUN_MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def rows_frame(
    schema: dict[str, Any],
    n_rows: int,
    full: Mapping[str, list[Any]],
    partial: Mapping[str, list[Any] | np.ndarray],
    valid: np.ndarray,
) -> Any:
    """A block of rows as a DataFrame of the predictions schema. ``full`` columns hold a value per row;
    ``partial`` ones (the decoded outputs) only for the rows where ``valid`` is true, the others are
    null: a list, or a 2-D array for the raw outputs (kept in numpy: 8,192 rows of a 500-output model
    take 0.3 s as Python lists, 0.01 s from the array). A schema column in neither is null."""
    import polars as pl

    every = bool(valid.all())
    series = []
    for name, dtype in schema.items():
        values = full.get(name, partial.get(name))
        if values is None:
            s = pl.Series(name, [None] * n_rows, dtype=dtype)
        elif name in full or every:
            s = (
                pl.Series(name, values, dtype=dtype)
                if isinstance(values, list)
                else pl.Series(name, values).cast(dtype)
            )
        elif isinstance(values, np.ndarray):
            spread = np.zeros((n_rows, *values.shape[1:]), values.dtype)
            spread[valid] = values
            s = pl.select(pl.when(pl.Series(valid)).then(pl.Series(name, spread).cast(dtype))).to_series()
        else:
            it = iter(values)
            s = pl.Series(name, [next(it) if v else None for v in valid], dtype=dtype)
        series.append(s.alias(name))
    return pl.DataFrame(series)


class PartWriter:
    """Buffers blocks of rows (DataFrames of the schema) and writes them as whole parts; ``add`` takes
    whole items only."""

    def __init__(self, folder: Path, rows_per_part: int, metadata: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.rows_per_part = rows_per_part
        self.metadata = metadata  # Parquet key/value metadata of every part (the run's fidelity verdicts)
        self.frames: list[Any] = []
        self.n_rows = 0
        parts = existing_parts(folder)
        self.next_index = (int(PART_RE.match(parts[-1].name)[1]) + 1) if parts else 0  # type: ignore[index]
        self.written: list[Path] = []

    def add(self, frame: Any) -> None:
        """Add a block holding all the rows of its items; writes a part when enough rows are buffered."""
        self.frames.append(frame)
        self.n_rows += frame.height
        if self.n_rows >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if not self.n_rows:
            return
        import polars as pl

        table = pl.concat(self.frames)
        name = f"part-{self.next_index:05d}.parquet"
        tmp = self.folder / f".{name}.tmp"
        table.write_parquet(tmp, compression="zstd", metadata=self.metadata)
        with open(tmp, "rb+") as f:  # durable before it becomes visible
            os.fsync(f.fileno())
        tmp.replace(self.folder / name)
        self.written.append(self.folder / name)
        self.next_index += 1
        self.frames = []
        self.n_rows = 0
