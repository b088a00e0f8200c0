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

from replaybench.errors import UsageError

RUN_MANIFEST = "run.json"
PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
FIXED_COLUMNS = ("item_id", "source_path", "bundle")
STATUS_COLUMNS = ("status", "error")
FACE_COLUMNS = {"face_count": "int", "face_box": "float_list", "face_score": "float"}


def arrow_type(kind: str) -> Any:
    import pyarrow as pa

    return {
        "float": pa.float64(),
        "int": pa.int64(),
        "str": pa.string(),
        "bool": pa.bool_(),
        "str_list": pa.list_(pa.string()),
        "float_list": pa.list_(pa.float32()),
        "topk": pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())])),
    }[kind]


def label_types(labels: Sequence[Mapping[str, object]]) -> dict[str, Any]:
    """Arrow type of every label column seen over all items (a column of only nulls becomes string)."""
    import pyarrow as pa

    keys: dict[str, None] = {}
    for lab in labels:
        keys.update(dict.fromkeys(lab))
    out = {}
    for k in keys:
        try:
            t = pa.array([lab.get(k) for lab in labels]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            t = pa.string()  # mixed types: keep them as text rather than fail the run
        out[k] = pa.string() if pa.types.is_null(t) else t
    return out


def build_schema(labels: Mapping[str, Any], extra: Mapping[str, str], decoded: Mapping[str, str]) -> Any:
    """The predictions schema: fixed columns, labels, face/post columns, decoded fields, raw, status."""
    import pyarrow as pa

    fields = [
        pa.field("item_id", pa.string()),
        pa.field("source_path", pa.string()),
        pa.field("bundle", pa.string()),
    ]
    fields += [pa.field(k, t) for k, t in labels.items()]
    fields += [pa.field(k, arrow_type(v)) for k, v in extra.items()]
    fields += [pa.field(k, arrow_type(v)) for k, v in decoded.items()]
    fields += [pa.field("status", pa.string()), pa.field("error", pa.string())]
    return pa.schema(fields)


def existing_parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("part-*.parquet") if PART_RE.match(p.name))


def done_item_ids(folder: Path) -> set[str]:
    """Item ids already written (every part is whole: parts are renamed into place)."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for p in existing_parts(folder):
        done.update(pq.read_table(p, columns=["item_id"]).column("item_id").to_pylist())
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


class PartWriter:
    """Buffers rows and writes them as whole parts; ``flush`` only at item boundaries."""

    def __init__(self, folder: Path, schema: Any, rows_per_part: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401

        # pyarrow imports pandas (when installed) on its first array, ~0.25 s: paid here, before the
        # run (replay opens the writer while its decode workers start), not in the first flush.
        pa.array([0])
        self.folder = folder
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.rows: list[dict[str, Any]] = []
        parts = existing_parts(folder)
        self.next_index = (int(PART_RE.match(parts[-1].name)[1]) + 1) if parts else 0  # type: ignore[index]
        self.written: list[Path] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Add the rows of whole items; writes a part when enough rows are buffered."""
        self.rows.extend(rows)
        if len(self.rows) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        name = f"part-{self.next_index:05d}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb+") as f:  # durable before it becomes visible
            os.fsync(f.fileno())
        tmp.replace(self.folder / name)
        self.written.append(self.folder / name)
        self.next_index += 1
        self.rows = []
