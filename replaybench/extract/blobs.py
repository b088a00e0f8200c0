"""``extract_blobs``: write every model blob of an Inventory byte-exact into a folder, plus manifest.json.

Blobs are re-read from the app by their ``BlobLocation`` (container chain, entry, offset, size) and
checked against the inventory's sha256, so what lands on disk is provably what was scanned. File names
are made from the entry's base name (never its path), so an entry like ``../../x`` cannot escape.

Seam for the later stages: ``extract_blobs(..., select=..., after=...)``. Trace matching passes
``select`` (keep only the blobs a trace saw loaded); conversion and preprocessing inference pass
``after`` callbacks, called with each written blob and the output folder, e.g. to write bundles.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from replaybench._console import NullProgress, Progress
from replaybench.errors import CorruptInputError, InputNotFoundError
from replaybench.extract.containers import (
    CHUNK,
    Entry,
    Walk,
    iter_entries,
    iter_zip,
    safe_file_name,
    safe_output_path,
)
from replaybench.extract.formats import file_extension
from replaybench.extract.inventory import ExtractedBlob, ExtractManifest, Inventory, ModelBlob

AfterBlob = Callable[[ExtractedBlob, Path], None]


def _blob_name(i: int, blob: ModelBlob) -> str:
    base = safe_file_name(blob.location.entry)
    stem = base.rsplit(".", 1)[0] if "." in base else base
    if blob.location.section is not None:
        stem += f"@{blob.location.offset:x}"
    return f"{i:02d}_{stem}{file_extension(blob.format)}"


def extract_blobs(
    source: Inventory | Sequence[Path],
    out_dir: Path,
    *,
    code: bool = False,
    select: Callable[[ModelBlob], bool] | None = None,
    after: Iterable[AfterBlob] = (),
    progress: Progress | None = None,
) -> ExtractManifest:
    """Write each model blob byte-exact into ``out_dir`` and a ``manifest.json``; return the manifest.

    ``source`` is an Inventory from ``scan_app`` or the app paths (scanned here, DEX analysis only when
    ``code``). Raises ``CorruptInputError`` when the app changed since the scan (sha256 mismatch).
    """
    from replaybench.extract.scan import scan_app

    if isinstance(source, Inventory):
        inv = source
    else:
        inv = scan_app([Path(p) for p in source], code=code, progress=progress)
    blobs = [b for b in inv.model_blobs if select is None or select(b)]
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = ExtractManifest(app=inv.app, warnings=list(inv.warnings))
    wanted: dict[tuple[tuple[str, ...], str], list[tuple[int, ModelBlob]]] = {}
    for i, b in enumerate(blobs):
        wanted.setdefault((tuple(b.location.container), b.location.entry), []).append((i, b))
    written: dict[int, ExtractedBlob] = {}
    # zips inside entries (an OBB, a zip in assets) that hold wanted blobs: descended into on the way
    nested = {tuple(b.location.container[:k]) for b in blobs for k in range(2, len(b.location.container) + 1)}
    roots = sorted({b.location.container[0] for b in blobs})
    prog = progress or NullProgress()
    prog.start(len(blobs), "extracting")
    walk = Walk()
    try:
        for root in roots:
            root_path = Path(root)
            if not root_path.exists():
                raise InputNotFoundError(f"the app scanned earlier is gone: {root}")
            for entry in _with_nested(_root_entries(root_path, blobs, walk), nested, walk):
                for i, blob in wanted.get((entry.container, entry.path), []):
                    target = safe_output_path(out_dir, _blob_name(i, blob))
                    _copy_range(entry.open, blob, target)
                    written[i] = ExtractedBlob(file=target.name, blob=blob)
                    prog.advance(1)
    finally:
        walk.cleanup()
        prog.close()
    missing = [b.location.describe() for i, b in enumerate(blobs) if i not in written]
    if missing:
        manifest.warnings.append(f"not found again when extracting: {', '.join(missing)}")
    manifest.blobs = [written[i] for i in sorted(written)]
    for item in manifest.blobs:
        for step in after:
            step(item, out_dir)
    (out_dir / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def _root_entries(root: Path, blobs: list[ModelBlob], walk: Walk) -> Iterator[Entry]:
    """Entries under ``root`` that can hold a wanted blob. A folder is not walked again: only the files
    and archives the blobs name are opened (a model scanned from ~/Downloads re-reads one file)."""
    if not root.is_dir():
        yield from iter_entries(root, walk)
        return
    files = sorted({b.location.entry for b in blobs if b.location.container == [str(root)]})
    archives = sorted(
        {
            b.location.container[1]
            for b in blobs
            if len(b.location.container) > 1 and b.location.container[0] == str(root)
        }
    )
    for rel in files:
        path = safe_output_path(root, rel)  # the same containment rule as for writing
        yield Entry(container=(str(root),), path=rel, size=path.stat().st_size, compressed_size=0,
                    opener=lambda p=path: p.open("rb"), disk_path=path)  # type: ignore[misc]  # fmt: skip
    for rel in archives:
        yield from iter_zip(safe_output_path(root, rel), (str(root), rel), walk)


def _with_nested(entries: Iterator[Entry], nested: set[tuple[str, ...]], walk: Walk) -> Iterator[Entry]:
    """Entries, plus the entries of nested zips that lead to a wanted blob (read into memory one at a time)."""
    for entry in entries:
        yield entry
        chain = (*entry.container, entry.path)
        if chain in nested:
            with entry.open() as f:
                raw = f.read()
            yield from _with_nested(iter_zip(io.BytesIO(raw), chain, walk), nested, walk)  # type: ignore[arg-type]


def _copy_range(opener: Callable[[], object], blob: ModelBlob, target: Path) -> None:
    """Stream ``blob.size`` bytes from ``blob.location.offset`` of the entry to ``target``; verify sha256."""
    h = hashlib.sha256()
    skip, left = blob.location.offset, blob.size
    tmp = target.with_name(target.name + ".part")
    with opener() as src, tmp.open("wb") as dst:  # type: ignore[attr-defined]
        while skip > 0:
            chunk = src.read(min(CHUNK, skip))
            if not chunk:
                break
            skip -= len(chunk)
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            dst.write(chunk)
            left -= len(chunk)
    if left or h.hexdigest() != blob.sha256:
        tmp.unlink(missing_ok=True)
        raise CorruptInputError(
            f"{blob.location.describe()} no longer matches the scan (sha256 differs): was the app modified?"
        )
    tmp.replace(target)
