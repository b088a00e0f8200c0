"""The row stage: a chunk's statuses, labels and decoded outputs as rows of the predictions schema.

One row per (item, bundle); a chunk's rows for every bundle come out together, so a part always holds
whole items (what ``--resume`` relies on).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from replaybench.predictions import Column, build_schema
from replaybench.replay.items import DatasetItem
from replaybench.replay.sink import item_columns, label_types, rows_frame


class RowBuilder:
    """The run's predictions schema (``replaybench.predictions``) and the rows of each chunk.

    ``items``: every item of the dataset (label kinds are taken over all of them, so a resumed run or a
    ``--limit`` run writes the same schema); ``outputs``: the columns the model stage fills; ``faces``:
    the run crops faces (face columns)."""

    def __init__(
        self,
        bundle_names: Sequence[str],
        items: Sequence[DatasetItem],
        outputs: Iterable[Column],
        *,
        faces: bool = False,
        route: str = "offline",
    ) -> None:
        self.bundle_names, self.faces, self.route = list(bundle_names), faces, route
        self.schema = build_schema(
            label_types([it.labels for it in items]),
            outputs,
            posts=any(it.post_id is not None or it.caption is not None for it in items),
            faces=faces,
        )

    def frame(
        self,
        chunk: Sequence[DatasetItem],
        res: Mapping[str, Any],
        per_bundle: Sequence[Mapping[str, Any] | None],
        extra: Mapping[str, list[Any]] | None = None,
    ) -> Any:
        """The chunk's rows (a polars DataFrame): every bundle's rows of every item. ``per_bundle``: each
        bundle's decoded columns, for the ok items only; ``extra``: output columns with a value for every
        item (in-app replay's ``raw_result``, kept for error rows too)."""
        import polars as pl

        n = len(chunk)
        status: list[str] = res["status"]
        base = item_columns(self.schema, chunk)
        base.update(status=status, error=res["error"], route=[self.route] * n, **(extra or {}))
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
