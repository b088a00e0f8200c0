"""The ``posts`` dataset reader: Instagram-style posts (image(s) + caption).

Two layouts are read:

* a folder of one JSON per post (as scraped: the caption in the GraphQL field
  ``edge_media_to_caption.edges[0].node.text``, or a plain ``caption``), its image(s) beside it: the same
  stem with ``.jpg/.jpeg/.png/.webp``, or ``<stem>_1.jpg``, ``<stem>_2.jpg``, ... for carousels, or the
  files listed in the JSON (``images``/``image``/``image_path``);
* a table (CSV, Parquet, JSON Lines) with one row per image: a post id, an image path (relative to the
  table's folder) and a caption. A folder with one such table at its top is read as that table.

Every image yields one ``DatasetItem`` (carousel images share ``post_id``). An image that is listed but
absent still yields an item, so replay/scoring records an error row for it instead of dropping the post.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from replaybench._json import loads_untrusted
from replaybench.errors import CorruptInputError, DatasetError, InputNotFoundError, UnsafeInputError
from replaybench.replay.items import DatasetItem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson")
POST_ID_KEYS = ("post_id", "shortcode", "id", "coco_id", "pk")
IMAGE_KEYS = ("image", "image_path", "path", "file", "filename", "images")
CAPTION_KEYS = ("caption", "text", "captions")
ALLOW_OUTSIDE_HINT = (
    "move the images into the dataset folder, or pass --allow-outside if you trust the dataset "
    "(distill label uploads every image it names to the teacher endpoint)"
)
# Labels carried into predictions: scalar columns only (nested scrape fields would bloat every row).
_SCALAR = (str, int, float, bool)


def read_posts(path: Path, *, allow_outside: bool = False) -> list[DatasetItem]:
    """Read a posts dataset (folder of post JSONs, or a CSV/Parquet/JSONL table) into items.

    Example: ``read_posts(Path("posts/"))`` -> one item per image, ``caption`` and ``post_id`` set.
    Raises InputNotFoundError when ``path`` does not exist and DatasetError when it holds no posts.

    A post or table row may only name images inside the dataset folder (the folder of the table, or the
    posts folder): an absolute path elsewhere, a ``..`` or a symlink that resolves outside raises
    ``UnsafeInputError`` naming the offending rows, before anything is read or uploaded, unless
    ``allow_outside`` (the ``--allow-outside`` flag) says the dataset is trusted.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"posts dataset not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            items = _read_post_json(path, path.parent, allow_outside)
        elif path.suffix.lower() in TABLE_SUFFIXES:
            items = _read_table(path, allow_outside)
        else:
            raise DatasetError(
                f"{path} is not a posts dataset: expected a folder, a post .json or a "
                f"{'/'.join(TABLE_SUFFIXES)} table"
            )
    else:
        # A table at the top wins (a folder may also hold unrelated JSON, e.g. COCO annotations).
        tables = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
        if len(tables) > 1:
            raise DatasetError(
                f"{path} holds several tables ({', '.join(t.name for t in tables)}); name one of them"
            )
        if tables:
            items = _read_table(tables[0], allow_outside)
        else:
            jsons = sorted(p for p in path.rglob("*.json") if p.is_file() and not p.name.startswith("."))
            items = [it for j in jsons for it in _read_post_json(j, path, allow_outside)]
    if not items:
        raise DatasetError(
            f"no posts found in {path}",
            hint="expected one JSON per post with its image(s) beside it, or a table of "
            "(post_id, image, caption)",
        )
    _check_unique(items, path)
    return items


# ------------------------------------------------------------------------------------------ captions


def caption_of(doc: Mapping[str, Any]) -> str | None:
    """The caption of a post document: the scraped GraphQL field first, then a plain caption."""
    node = doc["node"] if isinstance(doc.get("node"), Mapping) else doc
    # Scraped JSON is untrusted: every level is checked for its type before it is read.
    media = node.get("edge_media_to_caption")
    edges = media.get("edges") if isinstance(media, Mapping) else None
    if isinstance(edges, list) and edges and isinstance(edges[0], Mapping):
        inner = edges[0].get("node")
        text = inner.get("text") if isinstance(inner, Mapping) else None
        if isinstance(text, str):
            return text
    for key in CAPTION_KEYS:
        value = node.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping) and isinstance(value.get("text"), str):
            return str(value["text"])
        if isinstance(value, list) and value and isinstance(value[0], str):
            # COCO-style: several captions per image; the first stands for the post.
            return value[0]
    return None


# ------------------------------------------------------------------------------------------ one JSON a post


def _read_post_json(doc_path: Path, root: Path, allow_outside: bool) -> list[DatasetItem]:
    try:
        doc = loads_untrusted(doc_path.read_bytes())
    except ValueError as e:  # not JSON, invalid UTF-8, a giant integer, nesting past the recursion limit
        raise CorruptInputError(f"post {doc_path} is not valid JSON: {e}") from e
    if not isinstance(doc, Mapping):
        raise CorruptInputError(f"post {doc_path} is not a JSON object")
    node: Mapping[str, Any] = doc["node"] if isinstance(doc.get("node"), Mapping) else doc
    post_id = _first_scalar(node, POST_ID_KEYS) or doc_path.stem
    caption = caption_of(doc)
    listed = _listed_images(node)
    images = [doc_path.parent / p for p in listed] if listed else _images_beside(doc_path)
    for image in images:  # listed names and images beside it alike (a symlink beside may lead out)
        _check_image_path(image)
        if not allow_outside and _outside(image, root):
            raise UnsafeInputError(
                f"post {doc_path} names an image outside the dataset folder {root}: {image}",
                hint=ALLOW_OUTSIDE_HINT,
            )
    if not images:
        # Nothing beside it: keep the post as an item whose image is missing (an error row downstream).
        images = [doc_path.with_suffix(".jpg")]
    labels = {k: v for k, v in node.items() if isinstance(v, _SCALAR) and k not in CAPTION_KEYS}
    labels.pop("post_id", None)
    return _post_items(str(post_id), images, caption, labels)


def _listed_images(node: Mapping[str, Any]) -> list[str]:
    for key in ("images", "image", "image_path", "path", "file", "filename"):
        value = node.get(key)
        if isinstance(value, str) and value:
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value) and value:
            return list(value)
    return []


def _images_beside(doc_path: Path) -> list[Path]:
    for suffix in IMAGE_SUFFIXES:
        for cand in (doc_path.with_suffix(suffix), doc_path.with_suffix(suffix.upper())):
            if cand.is_file():
                return [cand]
    pattern = re.compile(re.escape(doc_path.stem) + r"_(\d+)(\.[A-Za-z]+)$")
    numbered: list[tuple[int, Path]] = []
    for p in doc_path.parent.iterdir():
        m = pattern.match(p.name)
        if m and m.group(2).lower() in IMAGE_SUFFIXES:
            numbered.append((int(m.group(1)), p))
    return [p for _, p in sorted(numbered)]


def _check_image_path(path: Path, where: str = "") -> None:
    if "\0" in str(path):  # no file system has such a name; open() would raise ValueError later
        raise DatasetError(f"{where or 'a post'} names an image path with a NUL byte: {str(path)!r}")


def _outside(path: Path, root: Path) -> bool:
    """Whether ``path`` resolves (symlinks followed, ``..`` applied) outside ``root``."""
    try:
        return not path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop or an unreadable link: not provably inside
        return True


def _post_items(
    post_id: str, images: list[Path], caption: str | None, labels: Mapping[str, object]
) -> list[DatasetItem]:
    if len(images) == 1:
        return [DatasetItem(item_id=post_id, path=images[0], labels=labels, caption=caption, post_id=post_id)]
    return [
        DatasetItem(item_id=f"{post_id}_{i}", path=p, labels=labels, caption=caption, post_id=post_id)
        for i, p in enumerate(images, start=1)
    ]


# ------------------------------------------------------------------------------------------ tables


def _read_table(path: Path, allow_outside: bool) -> list[DatasetItem]:
    rows = list(_table_rows(path))
    if not rows:
        return []
    columns = set(rows[0])
    id_key = next((k for k in POST_ID_KEYS if k in columns), None)
    image_key = next((k for k in IMAGE_KEYS if k in columns), None)
    if image_key is None:
        raise DatasetError(
            f"{path} has no image column (one of {', '.join(IMAGE_KEYS)}); columns: {sorted(columns)}"
        )
    items: list[DatasetItem] = []
    per_post: dict[str, int] = {}
    outside: list[str] = []
    for n, row in enumerate(rows):
        post_id = str(row[id_key]) if id_key and row.get(id_key) is not None else f"row{n}"
        value = row.get(image_key)
        images = value if isinstance(value, list) else [value]
        caption = caption_of(row)
        labels = {
            k: v
            for k, v in row.items()
            if isinstance(v, _SCALAR) and k not in {id_key, image_key, *CAPTION_KEYS}
        }
        for img in images:
            img_path = path.parent / str(img) if img not in (None, "") else None
            if img_path is not None:
                _check_image_path(img_path, f"{path} row {n + 1}")
                if not allow_outside and _outside(img_path, path.parent):
                    outside.append(f"row {n + 1} (post {post_id}): {img}")
            per_post[post_id] = per_post.get(post_id, 0) + 1
            items.append(
                DatasetItem(item_id="", path=img_path, labels=labels, caption=caption, post_id=post_id)
            )
    if outside:
        shown = "; ".join(outside[:5]) + (f"; ... ({len(outside)} images in all)" if len(outside) > 5 else "")
        raise UnsafeInputError(
            f"{path} names images outside the dataset folder {path.parent}: {shown}", hint=ALLOW_OUTSIDE_HINT
        )
    # A post with several rows/images is a carousel: number its items; single ones keep the post id.
    seen: dict[str, int] = {}
    numbered: list[DatasetItem] = []
    for it in items:
        assert it.post_id is not None
        if per_post[it.post_id] == 1:
            numbered.append(_with_id(it, it.post_id))
        else:
            seen[it.post_id] = seen.get(it.post_id, 0) + 1
            numbered.append(_with_id(it, f"{it.post_id}_{seen[it.post_id]}"))
    return numbered


def _with_id(item: DatasetItem, item_id: str) -> DatasetItem:
    return DatasetItem(
        item_id=item_id, path=item.path, labels=item.labels, caption=item.caption, post_id=item.post_id
    )


def _table_rows(path: Path) -> Iterable[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            with path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.strip():
                        row = loads_untrusted(line)
                        if not isinstance(row, dict):
                            raise CorruptInputError(f"{path}:{n} is not a JSON object")
                        yield row
            return
        import polars as pl

        df = pl.read_csv(path, infer_schema_length=0) if suffix == ".csv" else pl.read_parquet(path)
        yield from df.to_dicts()
    except ValueError as e:  # not JSON, invalid UTF-8, a giant integer, nesting past the recursion limit
        raise CorruptInputError(f"{path} is not a readable table: {e}") from e
    except Exception as e:
        if isinstance(e, CorruptInputError):
            raise
        raise CorruptInputError(f"{path} is not a readable table: {e}") from e


def _first_scalar(node: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    for k in keys:
        v = node.get(k)
        if isinstance(v, str | int) and not isinstance(v, bool) and str(v):
            return str(v)
    return None


def _check_unique(items: list[DatasetItem], path: Path) -> None:
    seen: set[str] = set()
    for it in items:
        if it.item_id in seen:
            raise DatasetError(f"{path}: item id {it.item_id!r} occurs twice (two posts share an id)")
        seen.add(it.item_id)
