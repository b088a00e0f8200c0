"""The predictions folder: Parquet parts written atomically, and the run manifest that makes resume safe.

::

    PREDS/run.json            dataset fingerprint, bundles, settings (resume refuses a different run)
    PREDS/part-00000.parquet  one row per (item, bundle); all rows of an item are in the same part
    PREDS/part-00001.parquet  ...

A part is written to ``.part-NNNNN.parquet.tmp`` and renamed into place, so a killed run (even kill -9)
leaves only whole parts. Every part records the predictions schema (``replaybench.predictions``) in its
Parquet key/value metadata. The items already done are the ``item_id`` values of the parts; ``--resume``
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
from replaybench.predictions import STATUSES, ColumnKind, PredictionsSchema
from replaybench.replay.items import DatasetItem

RUN_MANIFEST = "run.json"
PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")


def label_types(labels: Sequence[Mapping[str, object]]) -> dict[str, ColumnKind]:
    """Kind of every label column seen over all items: bool, int, float (ints and floats mixed), or str
    (text, a column of only nulls, and anything mixed or unusual, such as dates, kept as its text)."""
    seen: dict[str, set[type]] = {}
    for lab in labels:
        for k, v in lab.items():
            types = seen.setdefault(k, set())
            if v is not None:
                types.add(type(v))
    out: dict[str, ColumnKind] = {}
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


def item_columns(schema: PredictionsSchema, items: Sequence[DatasetItem]) -> dict[str, list[Any]]:
    """The columns that come from the items themselves: item_id, source_path, the labels (in their
    column's kind, under their column's name) and, where the schema has them, post_id and caption."""
    cols: dict[str, list[Any]] = {
        "item_id": [it.item_id for it in items],
        "source_path": [str(it.path.absolute()) if it.path else None for it in items],
    }
    for col in schema.with_role("label"):
        key = col.label_key or col.name
        cols[col.name] = [as_label(col.kind, it.labels.get(key)) for it in items]
    if schema.with_role("post"):
        cols["post_id"] = [it.post_id for it in items]
        cols["caption"] = [it.caption for it in items]
    return cols


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
    schema: PredictionsSchema,
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

    bad = set(full.get("status", ())) - set(STATUSES)
    if bad:  # the contract's statuses only: evaluate counts each kind of row by its status
        raise ValueError(f"row status {sorted(map(str, bad))} is not one of {STATUSES}")
    every = bool(valid.all())
    series = []
    for name, dtype in schema.polars_schema().items():
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
    """Buffers blocks of rows (DataFrames of ``schema``) and writes them as whole parts, each recording
    ``schema`` (and ``metadata``, e.g. the run's fidelity verdicts) in its Parquet key/value metadata;
    ``add`` takes whole items only."""

    def __init__(
        self,
        folder: Path,
        rows_per_part: int,
        schema: PredictionsSchema,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.rows_per_part = rows_per_part
        self.schema = schema
        self.metadata = {**(metadata or {}), **schema.to_metadata()}
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
