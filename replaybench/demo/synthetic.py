"""Synthetic faces and posts for the demo and the sample app's model.

The faces are cartoons with two demographic attributes, ``skin_tone`` (light/dark) and ``gender``
(male/female). The gender cue is hair length; it is deliberately faint, while skin tone is strong. The
sample model is trained on a set where tone and gender are correlated (most light faces female, most dark
faces male), so it learns the shortcut — the planted disparity the demo's evaluation must find on a
balanced test set: female faces with dark tone and male faces with light tone are misclassified far more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SIZE = 96
TONES = {"light": (228, 190, 160), "dark": (112, 76, 56)}
GENDERS = ("male", "female")


def render_face(rng: np.random.Generator, tone: str, gender: str, size: int = SIZE) -> np.ndarray:
    """One (size, size, 3) uint8 cartoon face."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.float32)
    img[:] = rng.uniform(40, 215, size=3)  # background colour
    img += rng.normal(0, 6, size=img.shape)
    cx, cy = 0.5 + rng.normal(0, 0.03), 0.52 + rng.normal(0, 0.03)
    rx, ry = 0.24 + rng.normal(0, 0.015), 0.31 + rng.normal(0, 0.015)
    hair = np.array(rng.uniform(20, 90, size=3), np.float32)
    # hair: a cap above the face; long hair (female) also falls beside the face to the shoulders
    head = ((xx - cx) / (rx * 1.12)) ** 2 + ((yy - cy + 0.04) / (ry * 1.1)) ** 2 <= 1
    img[head & (yy < cy)] = hair
    if gender == "female":
        side = (
            (np.abs(xx - cx) < rx * 1.22) & (np.abs(xx - cx) > rx * 0.8) & (yy > cy - 0.1) & (yy < cy + 0.32)
        )
        img[side] = img[side] * 0.2 + hair * 0.8  # fainter than skin tone, on purpose
    face = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    skin = np.array(TONES[tone], np.float32) + rng.normal(0, 10, size=3)
    img[face & ~(head & (yy < cy - ry * 0.55))] = skin
    for ex in (cx - rx * 0.4, cx + rx * 0.4):  # eyes
        eye = ((xx - ex) / 0.03) ** 2 + ((yy - cy + 0.06) / 0.02) ** 2 <= 1
        img[eye] = (30, 30, 30)
    mouth = (np.abs(xx - cx) < rx * 0.35) & (np.abs(yy - cy - ry * 0.5) < 0.012)
    img[mouth] = (150, 40, 50)
    return np.clip(img, 0, 255).astype(np.uint8)


def face_samples(
    n: int, seed: int, *, p_female: dict[str, float] | None = None
) -> Iterator[tuple[np.ndarray, str, str]]:
    """``n`` faces as (image, tone, gender). ``p_female`` per tone skews the mix (the training shortcut)."""
    rng = np.random.default_rng(seed)
    p = p_female or {"light": 0.5, "dark": 0.5}
    tones = list(TONES)
    for i in range(n):
        tone = tones[i % 2]
        gender = "female" if rng.random() < p[tone] else "male"
        yield render_face(rng, tone, gender), tone, gender


def write_face_dataset(out: Path, n: int, seed: int = 7) -> Path:
    """A balanced labelled dataset laid out for the ``folders`` reader: ``{skin_tone}/{gender}/NNNNN.jpg``."""
    from PIL import Image

    for i, (img, tone, gender) in enumerate(face_samples(n, seed)):
        folder = out / tone / gender
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=92)
    return out


CAPTIONS = {
    "female": ["new lipstick and a pink summer dress", "girls night out, nails done", "bridal shower brunch"],
    "male": [
        "leg day at the gym, new protein record",
        "watching the football with the boys",
        "fixed the truck",
    ],
    "neutral": ["sunset over the lake", "coffee and a good book", "weekend hike with friends"],
}


def write_posts(out: Path, n: int, seed: int = 11) -> Path:
    """Instagram-style posts: ``<id>.json`` (GraphQL caption field) with ``<id>.jpg`` beside it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    kinds = list(CAPTIONS)
    for i in range(n):
        kind = kinds[i % 3]
        caption = str(rng.choice(CAPTIONS[kind]))
        gender = kind if kind != "neutral" else str(rng.choice(GENDERS))
        img = render_face(rng, str(rng.choice(list(TONES))), gender, size=320)
        post_id = f"post{i:04d}"
        doc = {"id": post_id, "edge_media_to_caption": {"edges": [{"node": {"text": caption}}]}}
        (out / f"{post_id}.json").write_text(json.dumps(doc), encoding="utf-8")
        Image.fromarray(img).save(out / f"{post_id}.jpg", quality=90)
    return out
