"""``scan_app``: walk an app's containers once and build the Inventory.

Streaming: every entry's head (64 KiB) decides what it is; only entries that may matter are read in
full, in 1 MiB chunks (sha256 on every byte, entropy from a sample of chunks). Model files that need
structure parsing and native libraries are held in memory one at a time up to ``FULL_READ_CAP``; larger
ones are spilled to a temp file. Nested zips (bundles, zips in assets) are descended into.

Seam for the later stages: ``scan_app`` returns the Inventory; ``extract.blobs.extract_blobs`` writes the
blobs; trace matching and conversion take the Inventory / ``ExtractManifest`` and never re-walk the APK.
"""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from replaybench._console import NullProgress, Progress
from replaybench.errors import CorruptInputError, UnsafeInputError
from replaybench.extract.containers import (
    CHUNK,
    ZIP_ERRORS,
    ZIP_MAGIC,
    ByteWindow,
    Entry,
    Limits,
    Walk,
    check_size,
    iter_entries,
    iter_zip,
    read_capped,
)
from replaybench.extract.formats import (
    HEAD_SIZE,
    Detection,
    claimed_format,
    describe,
    detect,
    entropy_of,
    high_entropy,
    is_non_model,
    torch_kind,
)
from replaybench.extract.inventory import (
    AppInfo,
    BlobLocation,
    CodeReference,
    ContainerInfo,
    Inventory,
    ModelBlob,
    NativeLibrary,
    RejectedCandidate,
)

log = logging.getLogger(__name__)

# Bytes of one compressed entry held in memory (a native library may be copied twice more for lief);
# above this an entry is spilled to a temp file and mapped, keeping peak memory well under 1 GB.
FULL_READ_CAP = 160 << 20
ENTROPY_SAMPLES = 64  # 64 KiB chunks spread over the entry
ABIS = ("arm64-v8a", "armeabi-v7a", "armeabi", "x86_64", "x86", "mips", "mips64", "riscv64")
MODEL_DIR = re.compile(r"(^|/)(assets|res/raw|models?)(/|$)", re.IGNORECASE)


@dataclass
class _Read:
    """A fully read entry: its bytes (or a mapped spill file), sha256, entropy."""

    data: bytes | bytearray | mmap.mmap | memoryview
    sha256: str
    entropy: float
    size: int
    path: Path | None = None  # the spill file, when the entry was too large for memory


def _entropy_sample(data: bytes | bytearray | mmap.mmap | memoryview) -> float:
    """Entropy from up to 64 chunks of 64 KiB spread over the data (exact for data under 4 MiB)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    n = len(arr)
    if n <= ENTROPY_SAMPLES * 65536:
        return entropy_of(np.bincount(arr, minlength=256))
    counts = np.zeros(256, dtype=np.int64)
    for start in np.linspace(0, n - 65536, ENTROPY_SAMPLES).astype(np.int64):
        counts += np.bincount(arr[start : start + 65536], minlength=256)
    return entropy_of(counts)


@dataclass
class _Scan:
    walk: Walk
    code: bool
    progress: Progress
    blobs: list[ModelBlob] = field(default_factory=list)
    libs: list[NativeLibrary] = field(default_factory=list)
    refs: list[CodeReference] = field(default_factory=list)
    rejected: list[RejectedCandidate] = field(default_factory=list)
    unknown: list[tuple[ModelBlob, str]] = field(default_factory=list)  # decided after code evidence
    manifests: list[tuple[tuple[str, ...], bytes]] = field(default_factory=list)
    dex_names: set[str] = field(default_factory=set)  # base names of file-like DEX strings
    maps: dict[Path, mmap.mmap] = field(default_factory=dict)
    bins: dict[tuple[tuple[str, ...], str], ModelBlob] = field(default_factory=dict)  # ncnn weights?

    # ------------------------------------------------------------------------------------- reading

    def read_full(
        self, entry: Entry, head: bytes, stream: io.BufferedIOBase | Any, cap: int | None = None
    ) -> _Read:
        """Read the rest of ``stream`` (after ``head``): bytes in memory, or a mapped spill file.

        A stored entry of a zip on disk (or a plain file) is memory-mapped instead: no copy, and the
        page cache is shared with the next reader. With ``cap`` (nested archives), more bytes than that,
        declared or inflated, raise ``UnsafeInputError``."""
        where = "!".join([*entry.container, entry.path])
        if cap is not None:
            check_size(entry.size, cap, where, "nested archive")
        mapped = self.mapped(entry)
        if mapped is not None:
            return _Read(mapped, hashlib.sha256(mapped).hexdigest(), _entropy_sample(mapped), len(mapped))
        h = hashlib.sha256(head)
        limit = cap
        if entry.size <= FULL_READ_CAP:
            buf = bytearray(head)
            while chunk := stream.read(CHUNK):
                h.update(chunk)
                buf += chunk
                _over(len(buf), limit, where)
            data: bytearray | mmap.mmap = buf  # no bytes() copy: every consumer takes a buffer
        else:
            path = self.walk.spill_dir() / f"big-{len(self.blobs)}-{len(self.libs)}.bin"
            with path.open("wb") as f:
                f.write(head)
                n = len(head)
                while chunk := stream.read(CHUNK):
                    h.update(chunk)
                    f.write(chunk)
                    n += len(chunk)
                    _over(n, limit, where)
            with path.open("rb") as f:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            return _Read(data, h.hexdigest(), _entropy_sample(data), len(data), path)
        return _Read(data, h.hexdigest(), _entropy_sample(data), len(data))

    def mapped(self, entry: Entry) -> memoryview | None:
        if entry.disk_range is not None:
            path, offset = entry.disk_range
        elif entry.disk_path is not None:
            path, offset = entry.disk_path, 0
        else:
            return None
        if entry.size == 0:
            return None
        mm = self.maps.get(path)
        if mm is None:
            with path.open("rb") as f:
                mm = self.maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if offset + entry.size > len(mm):
            raise CorruptInputError(
                f"{'!'.join(entry.container)}!{entry.path}: data runs past the end of {path}"
            )
        return memoryview(mm)[offset : offset + entry.size]

    # ------------------------------------------------------------------------------------ per entry

    def entry(self, entry: Entry) -> None:
        """Classify one entry; a corrupt entry (bad CRC, broken deflate stream) becomes a warning so the
        rest of the app is still scanned (a corrupt *archive* fails earlier, in the container walk)."""
        try:
            self._entry(entry)
        except CorruptInputError as e:
            self.walk.warnings.append(f"skipped corrupt entry: {e.message}")

    def _entry(self, entry: Entry) -> None:
        with entry.open() as stream:
            head = stream.read(HEAD_SIZE)
            if head[:4] == b"\x7fELF":
                self.native(entry, head, stream)
            elif head[:4] == b"dex\n":
                if self.code:
                    self.dex(entry, head, stream)
            elif entry.path == "AndroidManifest.xml":
                where = "!".join([*entry.container, entry.path])
                cap = self.walk.limits.max_manifest_size
                check_size(entry.size, cap, where, "AndroidManifest.xml")
                self.manifests.append(
                    (entry.container, read_capped(stream, cap, where, "AndroidManifest.xml", head))
                )
            elif head[:4] == ZIP_MAGIC and not entry.path.lower().endswith(".dlc"):
                self.zip_entry(entry, head, stream)
            else:
                self.model_candidate(entry, head, stream)
        self.progress.advance(1)

    def location(self, entry: Entry, **kw: Any) -> BlobLocation:
        return BlobLocation(container=list(entry.container), entry=entry.path, **kw)

    def model_candidate(self, entry: Entry, head: bytes, stream: Any) -> None:
        det = detect(head, entry.path, entry.size)
        claimed = claimed_format(entry.path)
        is_bin = entry.path.lower().endswith(".bin")
        if det is None and (is_non_model(head) or (entry.size < 65536 and claimed is None and not is_bin)):
            return
        if det is None and claimed is None and not is_bin and not MODEL_DIR.search(entry.path):
            return  # an ordinary app file outside model folders: not worth reading in full
        full = self.read_full(entry, head, stream)
        if det is not None:
            self.detected(entry, det, full)
            return
        blob = ModelBlob(
            location=self.location(entry),
            format="unknown_high_entropy",
            size=full.size,
            sha256=full.sha256,
            entropy=round(full.entropy, 4),
            encrypted=True,
            evidence=[f"entropy {full.entropy:.3f} bits/byte (compressed or encrypted)"],
        )
        if is_bin:  # ncnn weights have no magic: kept aside and paired with a .param by name at the end
            self.bins[(entry.container, entry.path)] = blob.model_copy(
                update={"format": "ncnn_bin", "encrypted": False,
                        "evidence": ["weights file named like the ncnn .param beside it"]}
            )  # fmt: skip
        if claimed is not None:
            self.rejected.append(
                RejectedCandidate(
                    location=blob.location,
                    claimed_format=claimed,
                    size=full.size,
                    reason=f"named like {claimed} but no {claimed} structure was found "
                    f"(first bytes {head[:8].hex()}, entropy {full.entropy:.2f})",
                )
            )
        if high_entropy(full.entropy, full.size):
            self.unknown.append((blob, claimed or ""))

    def detected(self, entry: Entry, det: Detection, full: _Read, **loc: Any) -> None:
        view = full.data if isinstance(full.data, bytes | bytearray) else memoryview(full.data)
        try:
            describe(det, view)
        except Exception as e:  # parsers on hostile bytes (zlib, struct, protobuf...): a verdict, not a crash
            log.debug("structure check failed for %s", entry.path, exc_info=True)
            self.rejected.append(
                RejectedCandidate(
                    location=self.location(entry, **loc),
                    claimed_format=det.format,
                    size=full.size,
                    reason=f"{det.evidence[0]}, but its structure is invalid: {e}",
                )
            )
            return
        fmt = det.details.pop("kind", det.format) if det.format == "torchscript" else det.format
        evidence = det.evidence + det.details.pop("_evidence", [])
        claimed = claimed_format(entry.path)
        if claimed and claimed != fmt and {claimed, fmt} != {"torchscript", "pytorch_lite"}:
            evidence.append(f"name claims {claimed}, content is {fmt}")
        if claimed == "pytorch_lite" or (fmt == "torchscript" and entry.path.lower().endswith(".ptl")):
            evidence.append("named .ptl but is a full TorchScript archive (no bytecode.pkl)")
        self.blobs.append(
            ModelBlob(
                location=self.location(entry, **loc),
                format=fmt,
                size=full.size,
                sha256=full.sha256,
                entropy=round(full.entropy, 4),
                encrypted=False,
                evidence=evidence,
                details=det.details,
            )
        )

    def zip_entry(self, entry: Entry, head: bytes, stream: Any) -> None:
        """A zip inside the app: a TorchScript/lite model, or a container to descend into.

        Opened in place when stored in a file on disk, from memory when small, else from its spill
        file: a large OBB is never loaded whole, and one over ``Limits.max_nested_size`` is refused."""
        full = self.read_full(entry, head, stream, cap=self.walk.limits.max_nested_size)
        on_disk = entry.disk_range or ((entry.disk_path, 0) if entry.disk_path else None)
        handle = None
        source: Any
        if on_disk is not None:
            handle = on_disk[0].open("rb")
            source = io.BufferedReader(ByteWindow(handle, on_disk[1], full.size), buffer_size=CHUNK)  # type: ignore[arg-type]
        elif full.path is not None:
            source = full.path
        else:
            source = io.BytesIO(full.data)  # type: ignore[arg-type]
        try:
            try:
                with zipfile.ZipFile(source) as z:
                    names = z.namelist()
            except ZIP_ERRORS as e:
                claimed = claimed_format(entry.path)
                if claimed is not None:
                    reason = f"starts like a zip archive but is unreadable: {e}"
                    self.rejected.append(
                        RejectedCandidate(
                            location=self.location(entry),
                            claimed_format=claimed,
                            size=full.size,
                            reason=reason,
                        )
                    )
                else:
                    self.walk.warnings.append(
                        f"{'!'.join(entry.container)}!{entry.path}: unreadable zip: {e}"
                    )
                return
            kind = torch_kind(names)
            if kind is not None:
                self.detected(entry, Detection("torchscript", ["zip archive"]), full)
                return
            claimed = claimed_format(entry.path)
            if claimed is not None:
                self.rejected.append(
                    RejectedCandidate(
                        location=self.location(entry),
                        claimed_format=claimed,
                        size=full.size,
                        reason=f"a zip archive of {len(names)} entries without the {claimed} layout; "
                        "opened as a container instead",
                    )
                )
            if len(entry.container) > self.walk.limits.max_depth:
                self.walk.warnings.append(f"{entry.path}: nested deeper than {self.walk.limits.max_depth}")
                return
            chain = (*entry.container, entry.path)
            for sub in iter_zip(source, chain, self.walk, on_disk=on_disk):
                self.entry(sub)
        finally:
            if handle is not None:
                handle.close()

    def native(self, entry: Entry, head: bytes, stream: Any) -> None:
        from replaybench.extract.native import Haystack, analyze_elf

        full = self.read_full(entry, head, stream)
        parts = PurePosixPath(entry.path).parts
        abi = next((p for p in parts if p in ABIS), None)
        lib = NativeLibrary(
            location=self.location(entry), abi=abi, machine=None, size=full.size, sha256=full.sha256
        )
        if full.size > FULL_READ_CAP:
            lib.error = f"not analysed: {full.size:,} bytes is over the {FULL_READ_CAP:,}-byte cap for lief"
            self.libs.append(lib)
            return
        try:
            data = (
                full.data if isinstance(full.data, bytes | bytearray | memoryview) else memoryview(full.data)
            )
            hay = None
            where = entry.disk_range or ((entry.disk_path, 0) if entry.disk_path else None)
            if where is not None and where[0] in self.maps and isinstance(full.data, memoryview):
                hay = Haystack(self.maps[where[0]], where[1])  # search the mapped file in place
            info = analyze_elf(data, PurePosixPath(entry.path).name, haystack=hay)
        except Exception as e:  # lief on hostile input: report, keep scanning
            lib.error = f"could not analyse: {e}"
            self.libs.append(lib)
            return
        lib.machine = info["machine"]
        lib.needed = info["needed"]
        lib.exported_symbols = info["exported_symbols"]
        lib.imported_symbols = info["imported_symbols"]
        lib.ml_symbols = info["ml_symbols"]
        lib.runtimes = info["runtimes"]
        lib.engine_score = info["engine_score"]
        lib.engine_evidence = info["engine_evidence"]
        lib.likely_inference_engine = not lib.runtimes and lib.engine_score >= 0.6
        lib.embedded_blobs = len(info["embedded"])
        self.libs.append(lib)
        for emb in info["embedded"]:
            chunk = data[emb.file_offset : emb.file_offset + emb.size]
            det = Detection(emb.format, emb.evidence)
            sub = _Read(chunk, hashlib.sha256(chunk).hexdigest(), _entropy_sample(chunk), len(chunk))
            if emb.format == "pytorch_lite":
                det = Detection("torchscript", emb.evidence)
            self.detected(entry, det, sub, offset=emb.file_offset, section=emb.section, vaddr=emb.vaddr)

    def dex(self, entry: Entry, head: bytes, stream: Any) -> None:
        from replaybench.extract.code import analyze_dex

        where = "!".join([*entry.container, entry.path])
        cap = self.walk.limits.max_dex_size
        check_size(entry.size, cap, where, "DEX file")
        data = read_capped(stream, cap, where, "DEX file", head)
        name = "!".join([*entry.container[1:], entry.path])
        try:
            refs, names = analyze_dex(data, name)
            self.refs += refs
            self.dex_names |= {PurePosixPath(n).name for n in names}
        except ValueError as e:
            self.walk.warnings.append(str(e))

    # -------------------------------------------------------------------------------- after the walk

    def finish(self) -> None:
        self._pair_ncnn()
        referenced = {PurePosixPath(r.value).name for r in self.refs if r.kind == "file_name" and r.value}
        for blob, claimed in self.unknown:
            name = PurePosixPath(blob.location.entry).name
            if name in referenced or name in self.dex_names:
                referenced.add(name)
                blob.evidence.append(f"file name {name!r} is referenced in app code")
            if claimed:
                blob.evidence.append(f"named like {claimed} but not readable as one: likely encrypted")
            elif MODEL_DIR.search(blob.location.entry):
                blob.evidence.append("large high-entropy file in a model folder (assets/res/raw)")
            # Compressed media/archives are high-entropy too: keep only what is named or placed like a model.
            if claimed or name in referenced or MODEL_DIR.search(blob.location.entry):
                self.blobs.append(blob)
        for blob in self.blobs:
            name = PurePosixPath(blob.location.entry).name
            for r in self.refs:
                if r.kind == "file_name" and r.value and PurePosixPath(r.value).name == name:
                    blob.evidence.append(f"referenced in code: {r.class_name}->{r.method}")
                    break

    def _pair_ncnn(self) -> None:
        """An ncnn ``x.bin`` is the weights of ``x.param`` in the same container (no magic of its own)."""
        for blob in list(self.blobs):
            if blob.format != "ncnn_param" or blob.location.section is not None:
                continue
            stem = str(PurePosixPath(blob.location.entry).with_suffix(""))
            key = (tuple(blob.location.container), stem + ".bin")
            weights = self.bins.pop(key, None)
            if weights is None:
                continue
            self.blobs.append(weights)
            blob.details["weights"] = weights.location.entry
            self.unknown = [
                (b, c) for b, c in self.unknown if (tuple(b.location.container), b.location.entry) != key
            ]


def _over(n: int, cap: int | None, where: str) -> None:
    if cap is not None and n > cap:
        raise UnsafeInputError(
            f"refused {where}: nested archive inflates past the cap of {cap:,} bytes",
            hint="inspect the archive by hand if you trust it",
        )


def _app_info(scan: _Scan, paths: list[Path]) -> AppInfo:
    info = AppInfo()
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            with p.open("rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
    info.sha256 = h.hexdigest() if any(p.is_file() for p in paths) else None
    for container, raw in scan.manifests:
        try:
            pkg, vname, vcode, split = _manifest_fields(raw)
        except Exception as e:  # androguard on hostile binary XML
            scan.walk.warnings.append(f"{'!'.join(container)}: unreadable AndroidManifest.xml: {e}")
            continue
        if split and info.package:
            continue
        info.package = pkg or info.package
        info.version_name = vname or info.version_name
        info.version_code = vcode if vcode is not None else info.version_code
    for c in scan.walk.containers:
        kind = c.kind
        if kind == "apk" and any(
            split for cont, raw in scan.manifests if cont == c.path for split in [_is_split(raw)]
        ):
            kind = "split_apk"
        info.containers.append(ContainerInfo(path=list(c.path), kind=kind, size=c.size, entries=c.entries))  # type: ignore[arg-type]
    return info


def _is_split(raw: bytes) -> bool:
    try:
        return bool(_manifest_fields(raw)[3])
    except Exception:
        return False


def _manifest_fields(raw: bytes) -> tuple[str | None, str | None, int | None, str | None]:
    from replaybench.extract.code import quiet_androguard

    quiet_androguard()
    from androguard.core.axml import AXMLPrinter

    xml = AXMLPrinter(raw).get_xml_obj()
    if xml is None:
        raise ValueError("not binary XML")
    ns = "{http://schemas.android.com/apk/res/android}"
    code = xml.get(ns + "versionCode")
    return (
        xml.get("package"),
        xml.get(ns + "versionName"),
        int(code) if code and code.isdigit() else None,
        xml.get("split"),
    )


def scan_app(
    paths: Iterable[Path],
    *,
    code: bool = True,
    progress: Progress | None = None,
    limits: Limits | None = None,
) -> Inventory:
    """Scan an app (APK, split-APK folder, XAPK/APKS/APKM, or model files) and return its Inventory.

    ``code=False`` skips DEX analysis (the slow part on big apps). Raises ``InputNotFoundError``,
    ``CorruptInputError`` (truncated/corrupt archives) or ``UnsafeInputError`` (zip bombs, oversize).
    A clean app with no on-device model is a valid result (empty ``model_blobs``), not an error.

    Example::

        inv = scan_app([Path("app.apk")])
        [(b.format, b.location.entry) for b in inv.model_blobs]
    """
    paths = [Path(p) for p in paths]
    walk = Walk(limits=limits or Limits())
    prog = progress or NullProgress()
    scan = _Scan(walk=walk, code=code, progress=prog)
    prog.start(None, "scanning")
    try:
        for p in paths:
            for entry in iter_entries(p, walk):
                scan.entry(entry)
        scan.finish()
        app = _app_info(scan, paths)
    except (zipfile.BadZipFile, EOFError) as e:
        raise CorruptInputError(f"corrupt archive while scanning {', '.join(map(str, paths))}: {e}") from e
    finally:
        prog.close()
        walk.cleanup()
        for mm in scan.maps.values():
            try:
                mm.close()
            except BufferError:  # a view is still referenced; the mapping goes with it
                pass
    return Inventory(
        app=app,
        native_libraries=scan.libs,
        code_references=scan.refs,
        model_blobs=scan.blobs,
        rejected_candidates=scan.rejected,
        warnings=walk.warnings,
        code_scanned=code,
    )
