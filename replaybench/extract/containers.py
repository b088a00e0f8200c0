"""Open apps without executing anything: APKs, split-APK folders, XAPK/APKS/APKM bundles, nested zips.

``iter_entries(path)`` yields every file entry with its full location (container chain, entry path)
and a way to stream its bytes. Untrusted input: declared sizes and compression ratios are capped
(``Limits``) and a breach raises ``UnsafeInputError`` naming the entry; a truncated or corrupt zip
raises ``CorruptInputError``; ``safe_output_path`` refuses to write outside an output folder.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from replaybench.errors import CorruptInputError, InputNotFoundError, UnsafeInputError

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Caps that keep a hostile archive from exhausting disk or memory."""

    max_ratio: float = 200.0  # uncompressed / compressed, checked for entries over ratio_floor bytes
    ratio_floor: int = 32 << 20  # below this, even very compressible text (500:1 seen) is harmless: we stream
    max_entry_size: int = 8 << 30
    max_total_size: int = 32 << 30
    max_depth: int = 3
    max_entries: int = 200_000


@dataclass
class Entry:
    """One file inside a container (or a plain file: then ``path`` is its name and container its folder)."""

    container: tuple[str, ...]
    path: str
    size: int
    compressed_size: int
    opener: Callable[[], BinaryIO]
    stored: bool = True
    disk_path: Path | None = None  # set when the bytes are a plain file on disk (no copy needed)
    # (file, offset): a stored entry whose bytes lie uncompressed at this offset of a file on disk,
    # so they can be memory-mapped instead of streamed through zipfile.
    disk_range: tuple[Path, int] | None = None

    def open(self) -> BinaryIO:
        return self.opener()


@dataclass
class OpenedContainer:
    """A container found while walking (for ``AppInfo.containers``)."""

    path: tuple[str, ...]
    kind: str
    size: int
    entries: int


@dataclass
class Walk:
    """State of one walk: totals for the caps, containers seen, temp files to remove."""

    limits: Limits = field(default_factory=Limits)
    total: int = 0
    containers: list[OpenedContainer] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tmpdir: Path | None = None

    def spill_dir(self) -> Path:
        if self.tmpdir is None:
            self.tmpdir = Path(tempfile.mkdtemp(prefix="replaybench-"))
        return self.tmpdir

    def cleanup(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def zip_kind(z: zipfile.ZipFile, name: str) -> str:
    """What a zip is, from its entry names (never from its extension alone)."""
    names = set(z.namelist()[:5000])
    if "AndroidManifest.xml" in names:
        return "apk"
    apks = [n for n in names if n.lower().endswith(".apk")]
    if apks and "manifest.json" in names:
        return "xapk"
    if apks and "info.json" in names:
        return "apkm"
    if apks and ("toc.pb" in names or any(n.startswith("splits/") for n in apks)):
        return "apks"
    if apks:
        return "apkm" if name.lower().endswith(".apkm") else "apks"
    if name.lower().endswith(".obb"):
        return "obb"
    return "zip"


def check_entry(info: zipfile.ZipInfo, chain: tuple[str, ...], walk: Walk) -> None:
    """Refuse entries whose declared sizes look like a zip bomb or exceed the caps."""
    lim = walk.limits
    where = "!".join([*chain, info.filename])
    if info.file_size > lim.max_entry_size:
        raise UnsafeInputError(
            f"refused {where}: declares {info.file_size:,} bytes uncompressed (cap {lim.max_entry_size:,})"
        )
    if info.file_size > lim.ratio_floor:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > lim.max_ratio:
            raise UnsafeInputError(
                f"refused {where}: compression ratio {ratio:,.0f}:1 looks like a zip bomb "
                f"(cap {lim.max_ratio:,.0f}:1)",
                hint="inspect the archive by hand if you trust it",
            )
    walk.total += info.file_size
    if walk.total > lim.max_total_size:
        raise UnsafeInputError(
            f"refused {where}: archive inflates past {lim.max_total_size:,} bytes in total (zip bomb?)"
        )


def is_unsafe_name(name: str) -> bool:
    """An entry name that would climb out of a folder: absolute, drive letter, or a ``..`` component."""
    n = name.replace("\\", "/")
    return n.startswith("/") or bool(re.match(r"^[A-Za-z]:", n)) or ".." in n.split("/")


def safe_output_path(out_dir: Path, name: str) -> Path:
    """``out_dir / name``, refusing (``UnsafeInputError``) any name that resolves outside ``out_dir``."""
    if is_unsafe_name(name) or "\0" in name:
        raise UnsafeInputError(f"refused to write {name!r}: it points outside the output folder")
    base = out_dir.resolve()
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise UnsafeInputError(f"refused to write {name!r}: it resolves outside {base}")
    return target


def safe_file_name(text: str, max_len: int = 120) -> str:
    """A single, harmless file-name component made from an untrusted entry path."""
    base = text.replace("\\", "/").rstrip("/").split("/")[-1]
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip(".") or "blob"
    return base[-max_len:]


class ByteWindow(io.RawIOBase):
    """A read-only, seekable view of ``[start, start+size)`` of an open file: a stored nested zip
    opened in place, without copying it."""

    def __init__(self, f: BinaryIO, start: int, size: int) -> None:
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def stored_data_offset(f: BinaryIO, info: zipfile.ZipInfo, base: int = 0) -> int:
    """Offset of an entry's data (relative to the zip's start at ``base`` in ``f``): after its local
    header, whose extra field may differ from the central directory's."""
    f.seek(base + info.header_offset)
    head = f.read(30)
    if len(head) < 30 or head[:4] != ZIP_MAGIC:
        raise CorruptInputError(f"bad local header for {info.filename}")
    name_len = int.from_bytes(head[26:28], "little")
    extra_len = int.from_bytes(head[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


@contextmanager
def open_zip(source: Path | BinaryIO, label: str) -> Iterator[zipfile.ZipFile]:
    """``zipfile.ZipFile`` with corrupt/truncated archives turned into ``CorruptInputError``."""
    try:
        z = zipfile.ZipFile(source)  # type: ignore[arg-type]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as e:
        raise CorruptInputError(f"{label} is not a readable zip (truncated or corrupt): {e}") from e
    try:
        yield z
    finally:
        z.close()


def _entry_opener(z: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> Callable[[], BinaryIO]:
    def opener() -> BinaryIO:
        try:
            return _GuardedReader(z.open(info), where)  # type: ignore[arg-type,return-value]
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as e:
            raise CorruptInputError(f"cannot read {where}: {e}") from e

    return opener


class _GuardedReader(io.RawIOBase):
    """Turns zlib / CRC errors while streaming into ``CorruptInputError`` naming the entry."""

    def __init__(self, f: BinaryIO, where: str) -> None:
        self._f, self._where = f, where

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        try:
            return self._f.read(n)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
            raise CorruptInputError(f"corrupt data in {self._where}: {e}") from e

    def close(self) -> None:
        self._f.close()
        super().close()


def iter_zip(
    source: Path | BinaryIO,
    chain: tuple[str, ...],
    walk: Walk,
    kind: str | None = None,
    on_disk: tuple[Path, int] | None = None,
) -> Iterator[Entry]:
    """Entries of one zip container; nested APKs (bundles) are descended into here."""
    label = "!".join(chain)
    with open_zip(source, label) as z:
        infos = z.infolist()
        if len(infos) > walk.limits.max_entries:
            raise UnsafeInputError(
                f"refused {label}: {len(infos):,} entries (cap {walk.limits.max_entries:,})"
            )
        ckind = kind or zip_kind(z, chain[-1])
        if on_disk is None and isinstance(source, Path):
            on_disk = (source, 0)
        raw = on_disk[0].open("rb") if on_disk is not None else None
        size = source.stat().st_size if isinstance(source, Path) else _size_of(source)
        walk.containers.append(OpenedContainer(chain, ckind, size, len(infos)))
        for info in infos:
            if info.is_dir():
                continue
            check_entry(info, chain, walk)
            if is_unsafe_name(info.filename):
                walk.warnings.append(f"{label}!{info.filename}: entry name points outside its folder")
            where = f"{label}!{info.filename}"
            stored = info.compress_type == zipfile.ZIP_STORED
            if ckind in ("xapk", "apks", "apkm") and info.filename.lower().endswith(".apk"):
                yield from iter_nested(z, info, source, (*chain, info.filename), walk, "apk", on_disk)
                continue
            if info.filename.lower().endswith(".task") and _starts_like_zip(z, info, where):
                # a MediaPipe task bundle is a zip of models: list them by name, as entries of the .task
                yield from iter_nested(
                    z, info, source, (*chain, info.filename), walk, "mediapipe_task", on_disk
                )
                continue
            disk_range = None
            if stored and on_disk is not None and raw is not None and info.file_size:
                disk_range = (on_disk[0], on_disk[1] + stored_data_offset(raw, info, on_disk[1]))  # type: ignore[arg-type]
            yield Entry(
                container=chain,
                path=info.filename,
                size=info.file_size,
                compressed_size=info.compress_size,
                opener=_entry_opener(z, info, where),
                stored=stored,
                disk_range=disk_range,
            )
        if raw is not None:
            raw.close()


def _starts_like_zip(z: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bool:
    if info.file_size < 22:  # smaller than an end-of-central-directory record
        return False
    with _entry_opener(z, info, where)() as f:
        return bool(f.read(4) == b"PK\x03\x04")


def _size_of(f: BinaryIO) -> int:
    pos = f.tell()
    end = f.seek(0, 2)
    f.seek(pos)
    return end


def iter_nested(
    z: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    outer: Path | BinaryIO,
    chain: tuple[str, ...],
    walk: Walk,
    kind: str | None = None,
    on_disk: tuple[Path, int] | None = None,
) -> Iterator[Entry]:
    """Descend into a zip stored inside a zip: in place when stored, else spilled to a temp file."""
    if len(chain) - 1 > walk.limits.max_depth:
        walk.warnings.append(f"{'!'.join(chain)}: nested deeper than {walk.limits.max_depth}; not opened")
        return
    if info.compress_type == zipfile.ZIP_STORED and on_disk is not None:
        f = on_disk[0].open("rb")
        try:
            start = on_disk[1] + stored_data_offset(f, info, on_disk[1])  # type: ignore[arg-type]
            window = io.BufferedReader(ByteWindow(f, start, info.file_size), buffer_size=CHUNK)  # type: ignore[arg-type]
            yield from iter_zip(window, chain, walk, kind, (on_disk[0], start))  # type: ignore[arg-type]
        finally:
            f.close()
        return
    tmp = walk.spill_dir() / f"nested-{len(walk.containers)}.zip"
    with _entry_opener(z, info, "!".join(chain))() as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    try:
        yield from iter_zip(tmp, chain, walk, kind)
    finally:
        tmp.unlink(missing_ok=True)


def _file_entry(path: Path, container: tuple[str, ...], rel: str) -> Entry:
    size = path.stat().st_size
    return Entry(
        container=container,
        path=rel,
        size=size,
        compressed_size=size,
        opener=lambda: path.open("rb"),
        disk_path=path,
    )


def _looks_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in (ZIP_MAGIC, EMPTY_ZIP_MAGIC)


def iter_entries(path: Path, walk: Walk) -> Iterator[Entry]:
    """Every entry of an app given as an APK, a bundle, a split-APK folder, or a plain model file/folder.

    A folder is walked recursively: zips in it are opened as containers, other files are entries
    (a folder of model files scans like an app). Raises ``InputNotFoundError`` for a missing path.
    """
    if not path.exists():
        raise InputNotFoundError(f"not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        walk.containers.append(OpenedContainer((str(path),), "folder", 0, len(files)))
        for p in files:
            rel = p.relative_to(path).as_posix()
            if _looks_zip(p) and p.suffix.lower() in (".apk", ".xapk", ".apks", ".apkm", ".zip", ".obb"):
                yield from iter_zip(p, (str(path), rel), walk)
            else:
                yield _file_entry(p, (str(path),), rel)
        return
    if _looks_zip(path) and path.suffix.lower() not in (".pt", ".ptl", ".pth", ".tflite", ".torchscript"):
        yield from iter_zip(path, (str(path),), walk)
        return
    if path.suffix.lower() in (".apk", ".xapk", ".apks", ".apkm"):
        raise CorruptInputError(f"{path} is named like an app package but is not a zip archive")
    walk.containers.append(OpenedContainer((str(path.parent),), "file", path.stat().st_size, 1))
    yield _file_entry(path, (str(path.parent),), path.name)


def spill(entry: Entry, walk: Walk, max_size: int) -> Path | None:
    """A path holding the entry's bytes (the file itself when on disk); None when over ``max_size``."""
    if entry.disk_path is not None:
        return entry.disk_path
    if entry.size > max_size:
        return None
    fd, name = tempfile.mkstemp(dir=walk.spill_dir(), suffix=".bin")
    with os.fdopen(fd, "wb") as dst, entry.open() as src:
        shutil.copyfileobj(src, dst, CHUNK)
    return Path(name)
