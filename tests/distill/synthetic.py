"""A learnable synthetic posts task: the teacher score is the image's red share (x10), captions are noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["sunset", "beach", "coffee", "gym", "dress", "car", "dog", "city", "makeup", "football"]


def make_posts(folder: Path, n: int = 60, seed: int = 0, size: int = 64) -> dict[str, float]:
    """Write ``n`` scraped-style posts (GraphQL caption JSON + JPEG) and return post id -> score."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    scores = {}
    for i in range(n):
        r = float(rng.uniform(0, 1))
        arr = np.zeros((size, size, 3), np.int64)
        arr[..., 0] = int(r * 255)
        arr[..., 1] = int((1 - r) * 255)
        arr[..., 2] = int(rng.integers(0, 255))
        arr = np.clip(arr + rng.integers(-10, 10, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"p{i:03d}.jpg", quality=95)
        caption = " ".join(rng.choice(WORDS, 5))
        doc = {"shortcode": f"p{i:03d}", "edge_media_to_caption": {"edges": [{"node": {"text": caption}}]}}
        (folder / f"p{i:03d}.json").write_text(json.dumps(doc), encoding="utf-8")
        scores[f"p{i:03d}"] = round(10 * r, 3)
    return scores


def write_labels_csv(scores: dict[str, float], path: Path) -> Path:
    lines = ["post_id,score"] + [f"{k},{v}" for k, v in scores.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_student_and_bundle(folder: Path) -> None:
    """Fixture builder: synthetic posts, a trained tiny student, and its exported bundle."""
    from replaybench.distill.export import export_student
    from replaybench.distill.train import train_student

    scores = make_posts(folder / "posts", n=60)
    labels = write_labels_csv(scores, folder / "labels.csv")
    train_student(folder / "posts", labels, folder / "student", random_init=True, epochs=120, patience=25)
    export_student(folder / "student", folder / "bundle")
