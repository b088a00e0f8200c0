"""Dataset readers: a registry keyed by format name, with auto-detection.

Each reader turns a dataset path into a list of ``DatasetItem`` (item id, image path, every label it
found). Readers only read: the input dataset is never modified. A dataset with no images, or with labels
that do not parse, raises ``DatasetError`` before any replay work starts; a listed image that is missing
on disk is *not* a reader error (it becomes an error row in the predictions).

Formats (see DESIGN.md): ``utkface``, ``fairface``, ``folders`` (needs ``pattern``), ``manifest``,
``posts`` (implemented in ``replaybench.replay.posts``, imported lazily).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from replaybench.errors import DatasetError, InputNotFoundError, UnsupportedFormatError, UsageError
from replaybench.replay.items import DatasetItem

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".heic", ".heif", ".tif", ".tiff"}
)
UTK_GENDERS = ("male", "female")
UTK_RACES = ("White", "Black", "Asian", "Indian", "Others")
_UTK_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.jpg(?:\.chip\.jpg)?$", re.IGNORECASE)
MANIFEST_PATH_COLUMNS = ("path", "image_path", "image", "file", "filepath", "filename", "source_path")
FAIRFACE_COLUMNS = ("file", "age", "gender", "race")
FAIRFACE_AGE_BINS = (
    "0-2",
    "3-9",
    "10-19",
    "20-29",
    "30-39",
    "40-49",
    "50-59",
    "60-69",
    "more than 70",
    "70+",
)

Reader = Callable[[Path, "ReadOptions"], list[DatasetItem]]


@dataclass(frozen=True)
class ReadOptions:
    """Reader options that come from the command line."""

    pattern: str | None = None  # folders: e.g. "{attribute}/{race}_{gender}/*.jpg"


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    read: Reader
    description: str


FORMATS: dict[str, DatasetFormat] = {}


def register(name: str, description: str) -> Callable[[Reader], Reader]:
    """Register a reader under ``name`` (the value of ``--format``). Duplicate names are a bug."""

    def deco(fn: Reader) -> Reader:
        if name in FORMATS:
            raise ValueError(f"dataset format {name!r} registered twice")
        FORMATS[name] = DatasetFormat(name, fn, description)
        return fn

    return deco


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")


def _walk_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if _is_image(p))


def _rel_id(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _bad_labels(what: str, bad: list[str], hint: str | None = None) -> DatasetError:
    shown = ", ".join(bad[:5]) + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "")
    return DatasetError(f"{len(bad)} {what}: {shown}", hint=hint)


# ------------------------------------------------------------------------------------------ utkface


def parse_utkface_name(name: str) -> dict[str, object] | None:
    """Labels from a UTKFace file name ``age_gender_race_datetime.jpg[.chip.jpg]``, or None."""
    m = _UTK_NAME.match(name)
    if not m:
        return None
    age, gender, race = int(m[1]), int(m[2]), int(m[3])
    if gender > 1 or race > 4 or age > 130:
        return None
    return {
        "age": age,
        "gender": UTK_GENDERS[gender],
        "race": UTK_RACES[race],
        "gender_id": gender,
        "race_id": race,
    }


@register("utkface", "UTKFace: labels in file names age_gender_race_datetime.jpg[.chip.jpg]")
def read_utkface(root: Path, options: ReadOptions) -> list[DatasetItem]:
    images = _walk_images(root) if root.is_dir() else [root]
    items, bad = [], []
    for p in images:
        labels = parse_utkface_name(p.name)
        if labels is None:
            bad.append(_rel_id(p, root))
            continue
        items.append(DatasetItem(item_id=_rel_id(p, root), path=p, labels=labels))
    if bad:
        raise _bad_labels(
            "image names do not follow UTKFace's age_gender_race_datetime.jpg",
            bad,
            hint="move or exclude them, or list the good ones in a manifest (--format manifest)",
        )
    return items


# ----------------------------------------------------------------------------------------- fairface


def _find_fairface_csv(path: Path) -> Path | None:
    if path.is_file():
        return path
    for p in sorted(path.glob("*.csv")):
        if set(FAIRFACE_COLUMNS) <= set(_csv_header(p)):
            return p
    return None


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError):
        return []


@register("fairface", "FairFace label CSV: file, age (bins), gender, race, service_test")
def read_fairface(path: Path, options: ReadOptions) -> list[DatasetItem]:
    table = _find_fairface_csv(path)
    if table is None:
        raise DatasetError(f"no FairFace label CSV (columns {', '.join(FAIRFACE_COLUMNS)}) in {path}")
    root = table.parent
    items, bad = [], []
    with table.open(newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("file") or not row.get("gender") or not row.get("race"):
                bad.append(f"line {n}")
                continue
            labels: dict[str, object] = {
                "age": row["age"],
                "gender": row["gender"].lower(),
                "race": row["race"],
            }
            if row.get("service_test"):
                st = row["service_test"].lower()
                if st not in ("true", "false"):
                    bad.append(f"line {n} service_test={row['service_test']!r}")
                    continue
                labels["service_test"] = st == "true"
            items.append(DatasetItem(item_id=row["file"], path=root / row["file"], labels=labels))
    if bad:
        raise _bad_labels(f"rows of {table.name} do not parse", bad)
    return items


# ------------------------------------------------------------------------------------------ folders


def _pattern_regex(pattern: str) -> tuple[re.Pattern[str], str, list[str]]:
    """``{attribute}/{race}_{gender}/*.jpg`` -> (regex over the relative path, glob, field names)."""
    fields: list[str] = []
    regex, glob = "", ""
    for token in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\}|\*\*|\*|\?)", pattern):
        if not token:
            continue
        if token.startswith("{"):
            name = token[1:-1]
            if name in fields:
                raise UsageError(f"--pattern names {{{name}}} twice: {pattern}")
            fields.append(name)
            regex += f"(?P<{name}>[^/]+?)"
            glob += "*"
        elif token == "**":
            regex += ".*"
            glob += "**"
        elif token == "*":
            regex += "[^/]*"
            glob += "*"
        elif token == "?":
            regex += "[^/]"
            glob += "?"
        else:
            regex += re.escape(token)
            glob += token
    if not fields:
        raise UsageError(
            f"--pattern has no {{field}}: {pattern}", hint="e.g. '{attribute}/{race}_{gender}/*.jpg'"
        )
    return re.compile(regex + "$"), glob, fields


@register("folders", "labels parsed from the path by --pattern, e.g. '{attribute}/{race}_{gender}/*.jpg'")
def read_folders(root: Path, options: ReadOptions) -> list[DatasetItem]:
    if not options.pattern:
        raise UsageError("--format folders needs --pattern, e.g. '{attribute}/{race}_{gender}/*.jpg'")
    if not root.is_dir():
        raise DatasetError(f"--format folders needs a folder, got a file: {root}")
    regex, _, _ = _pattern_regex(options.pattern)
    items, bad = [], []
    # Every image under the folder must match: an image the pattern misses would be a silent drop.
    for p in _walk_images(root):
        rel = _rel_id(p, root)
        m = regex.match(rel)
        if m is None:
            bad.append(rel)
            continue
        items.append(DatasetItem(item_id=rel, path=p, labels=dict(m.groupdict())))
    if bad:
        raise _bad_labels(f"paths do not match --pattern {options.pattern!r}", bad)
    return items


# ----------------------------------------------------------------------------------------- manifest


def _read_table(path: Path) -> list[dict[str, object]]:
    import polars as pl

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pl.read_parquet(path)
        else:
            df = pl.read_csv(path, infer_schema_length=10000, try_parse_dates=False)
    except Exception as e:  # polars raises many exception types for malformed tables
        raise DatasetError(f"cannot read table {path}: {e}") from e
    return df.to_dicts()


def _find_manifest(path: Path) -> Path | None:
    if path.is_file():
        return path
    for name in ("manifest.parquet", "manifest.csv", "labels.parquet", "labels.csv"):
        if (path / name).is_file():
            return path / name
    return None


@register("manifest", "CSV/Parquet with a path column (path, image_path, file, ...) and any label columns")
def read_manifest(path: Path, options: ReadOptions) -> list[DatasetItem]:
    table = _find_manifest(path)
    if table is None:
        raise DatasetError(f"no manifest (manifest.csv/.parquet, labels.csv/.parquet) in {path}")
    rows = _read_table(table)
    if not rows:
        raise DatasetError(f"manifest {table} has no rows")
    columns = list(rows[0])
    path_col = next((c for c in MANIFEST_PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise DatasetError(
            f"manifest {table} has no path column (one of {', '.join(MANIFEST_PATH_COLUMNS)}); "
            f"columns: {', '.join(columns)}"
        )
    id_col = "item_id" if "item_id" in columns else None
    root = table.parent
    items: list[DatasetItem] = []
    bad: list[str] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows):
        raw = row[path_col]
        if not isinstance(raw, str) or not raw.strip():
            bad.append(f"row {n}")
            continue
        p = Path(raw)
        p = p if p.is_absolute() else root / p
        item_id = str(row[id_col]) if id_col else raw
        # Repeated paths are allowed (e.g. a dataset sampled with replacement); ids stay unique.
        count = seen.get(item_id, 0)
        seen[item_id] = count + 1
        if count:
            item_id = f"{item_id}#{count}"
        labels = {k: v for k, v in row.items() if k not in (path_col, id_col)}
        items.append(DatasetItem(item_id=item_id, path=p, labels=labels))
    if bad:
        raise _bad_labels(f"rows of {table.name} have an empty {path_col!r}", bad)
    return items


# -------------------------------------------------------------------------------------------- posts


@register("posts", "Instagram-style posts: one JSON per post with images beside it, or a table")
def read_posts_dataset(path: Path, options: ReadOptions) -> list[DatasetItem]:
    from replaybench.replay.posts import read_posts

    return read_posts(path)


# ------------------------------------------------------------------------------------------- detect


def detect_format(path: Path, options: ReadOptions) -> str:
    """Guess the format of ``path``: explicit evidence first (a pattern, known table headers, names)."""
    if options.pattern:
        return "folders"
    if path.is_file():
        header = _csv_header(path) if path.suffix.lower() == ".csv" else []
        if set(FAIRFACE_COLUMNS) <= set(header) and "service_test" in header:
            return "fairface"
        if "caption" in header or path.suffix.lower() in (".jsonl", ".json"):
            return "posts"
        if path.suffix.lower() in (".csv", ".parquet", ".pq"):
            return "manifest"
        if _is_image(path) and parse_utkface_name(path.name):
            return "utkface"
        raise UnsupportedFormatError(f"cannot tell the dataset format of {path}", hint="pass --format")
    images = []
    for p in path.rglob("*"):
        if _is_image(p):
            images.append(p)
            if len(images) >= 50:
                break
    if images and all(parse_utkface_name(p.name) for p in images):
        return "utkface"
    csvs = sorted(path.glob("*.csv"))
    if any({*FAIRFACE_COLUMNS, "service_test"} <= set(_csv_header(p)) for p in csvs):
        return "fairface"
    if any(path.glob("*.json")) or any(path.glob("*/*.json")) or (path / "posts_index.jsonl").is_file():
        return "posts"
    if _find_manifest(path) is not None:
        return "manifest"
    if not images:
        raise DatasetError(f"no images found in {path}")
    raise UnsupportedFormatError(
        f"cannot tell the dataset format of {path}",
        hint="pass --format manifest|folders|utkface|fairface|posts (folders needs --pattern)",
    )


def read_dataset(
    path: Path, fmt: str | None = None, options: ReadOptions | None = None
) -> tuple[str, list[DatasetItem]]:
    """Read a dataset with the named (or detected) format. Returns (format, items).

    Raises ``InputNotFoundError`` for a missing path, ``UnsupportedFormatError`` for an unknown format,
    ``DatasetError`` for no images or labels that do not parse.
    """
    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"dataset not found: {path}")
    if fmt is None:
        fmt = detect_format(path, options)
    if fmt not in FORMATS:
        raise UnsupportedFormatError(f"unknown dataset format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    items = FORMATS[fmt].read(path, options)
    if not items:
        raise DatasetError(f"no images found in {path} (format {fmt})")
    return fmt, items
