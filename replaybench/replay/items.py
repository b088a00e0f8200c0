"""What a dataset reader yields: one ``DatasetItem`` per image (a carousel post yields one per image)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DatasetItem:
    """One input to replay.

    ``labels`` holds every label column the reader found (age, gender, race, attribute, ...); they are
    carried unchanged into the predictions. ``caption`` is set for posts; ``post_id`` groups the images of
    a carousel post (equal to ``item_id`` for single-image items).
    """

    item_id: str
    path: Path | None
    labels: Mapping[str, object] = field(default_factory=dict)
    caption: str | None = None
    post_id: str | None = None
