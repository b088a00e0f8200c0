"""The row stage: a chunk's statuses, labels and decoded outputs as rows of the predictions schema.

One row per (item, bundle); a chunk's rows for every bundle come out together, so a part always holds
whole items (what ``--resume`` relies on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from replaybench.replay.items import DatasetItem
from replaybench.replay.sink import (
    FACE_COLUMNS,
    FIXED_COLUMNS,
    as_label,
    build_schema,
    label_types,
    rows_frame,
)


class RowBuilder:
    """The run's predictions schema and the rows of each chunk.

    ``items``: every item of the dataset (label kinds are taken over all of them, so a resumed run or a
    ``--limit`` run writes the same schema); ``decoded``: the model stage's columns; ``faces``: the run
    crops faces (face columns)."""

    def __init__(
        self,
        bundle_names: Sequence[str],
        items: Sequence[DatasetItem],
        decoded: Mapping[str, str],
        *,
        faces: bool = False,
        route: str = "offline",
    ) -> None:
        self.bundle_names, self.faces, self.route = list(bundle_names), faces, route
        self.label_kinds = label_types([it.labels for it in items])
        reserved = set(FIXED_COLUMNS) | set(decoded) | set(FACE_COLUMNS)
        reserved |= {"status", "error", "post_id", "caption", "route"}
        # a label named like a reserved column keeps its values under label__<name>
        self.label_columns = {k: (f"label__{k}" if k in reserved else k) for k in self.label_kinds}
        extra: dict[str, str] = {"route": "str"}
        self.posts = any(it.post_id is not None or it.caption is not None for it in items)
        if self.posts:
            extra.update({"post_id": "str", "caption": "str"})
        if faces:
            extra.update(FACE_COLUMNS)
        self.schema = build_schema(
            {self.label_columns[k]: t for k, t in self.label_kinds.items()}, extra, decoded
        )

    def frame(
        self,
        chunk: Sequence[DatasetItem],
        res: Mapping[str, Any],
        per_bundle: Sequence[Mapping[str, Any] | None],
    ) -> Any:
        """The chunk's rows (a polars DataFrame): every bundle's rows of every item."""
        import polars as pl

        n = len(chunk)
        status: list[str] = res["status"]
        base: dict[str, list[Any]] = {
            "item_id": [it.item_id for it in chunk],
            "source_path": [str(it.path.absolute()) if it.path else None for it in chunk],
            "status": status,
            "error": res["error"],
            "route": [self.route] * n,
        }
        for key, kind in self.label_kinds.items():
            base[self.label_columns[key]] = [as_label(kind, it.labels.get(key)) for it in chunk]
        if self.posts:
            base["post_id"] = [it.post_id for it in chunk]
            base["caption"] = [it.caption for it in chunk]
        if self.faces:
            faces = [f or (None, None, None) for f in res["faces"]]
            for k, col in enumerate(("face_count", "face_box", "face_score")):
                base[col] = [f[k] for f in faces]
        valid = np.array([st == "ok" for st in status], bool)
        frames = [
            rows_frame(self.schema, n, dict(base, bundle=[name] * n), decoded or {}, valid)
            for name, decoded in zip(self.bundle_names, per_bundle, strict=True)
        ]
        return pl.concat(frames) if len(frames) > 1 else frames[0]
