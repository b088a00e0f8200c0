"""Use a trace: which APK blobs did the app actually run, and what did it feed them.

``match_trace`` links every traced model load to an inventory blob (by sha256, then path/asset name and
size; a model seen only in memory is linked to the high-entropy entry it most likely was decrypted from),
lists the blobs that ran and those never loaded, and checks that the trace comes from the same app
version. ``traced_invokes`` turns the tensor/bitmap dumps back into numpy arrays, per model, for
preprocessing inference (``extract/preprocess.py``) and for parity inputs.

The inventory is written by ``scan``; this module only needs the blob fields in ``BlobLike`` so any
inventory document (or ``InventoryBlob.from_inventory``) plugs in.
"""

from __future__ import annotations

import bisect
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from replaybench.extract.trace import (
    BitmapEvent,
    FileOpenEvent,
    InvokeEvent,
    ModelLoadEvent,
    Quantization,
    TensorEvent,
    Trace,
)

log = logging.getLogger(__name__)

# An entry is a decryption candidate when it looks random (scan's verdict, or entropy near 8 bits/byte).
HIGH_ENTROPY = 7.5


class BlobLike(Protocol):
    """The fields of an inventory ModelBlob that matching uses (location flattened)."""

    @property
    def container(self) -> list[str]: ...
    @property
    def entry(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def entropy(self) -> float: ...
    @property
    def encrypted(self) -> bool: ...
    @property
    def format(self) -> str: ...


@dataclass(frozen=True)
class InventoryBlob:
    """A candidate model blob from the inventory (``ModelBlob`` with its ``location`` flattened)."""

    container: list[str]
    entry: str
    offset: int
    size: int
    sha256: str
    entropy: float = 0.0
    encrypted: bool = False
    format: str = "unknown"

    @classmethod
    def from_inventory(cls, doc: dict[str, Any]) -> list[InventoryBlob]:
        """Blobs from a ``scan --json`` document (``blobs`` or ``model_blobs``, ``location`` nested)."""
        rows = doc.get("blobs") or doc.get("model_blobs") or []
        out = []
        for b in rows:
            loc = b.get("location") or {}
            out.append(
                cls(
                    container=list(loc.get("container") or b.get("container") or []),
                    entry=str(loc.get("entry") or b.get("entry") or ""),
                    offset=int(loc.get("offset") or b.get("offset") or 0),
                    size=int(b.get("size") or 0),
                    sha256=str(b.get("sha256") or ""),
                    entropy=float(b.get("entropy") or 0.0),
                    encrypted=bool(b.get("encrypted")),
                    format=str(b.get("format") or "unknown"),
                )
            )
        return out


class AppIdentity(BaseModel):
    """The app the inventory describes, to check the trace against."""

    model_config = ConfigDict(extra="forbid")

    package: str | None = None
    version_name: str | None = None
    version_code: int | None = None
    apk_sha256: list[str] = Field(default_factory=list)


class BlobRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    container: list[str]
    entry: str
    offset: int
    size: int
    sha256: str
    format: str
    encrypted: bool = False

    @classmethod
    def of(cls, b: BlobLike) -> BlobRef:
        return cls(
            container=list(b.container),
            entry=b.entry,
            offset=b.offset,
            size=b.size,
            sha256=b.sha256,
            format=b.format,
            encrypted=b.encrypted,
        )


MatchHow = Literal["sha256", "path+size", "path", "decrypted-from", "none"]


class ModelMatch(BaseModel):
    """One traced model load and the blob it came from."""

    model_config = ConfigDict(extra="forbid")

    handle: str | None
    runtime: str
    api: str
    source: str
    path: str | None
    size: int | None
    sha256: str | None
    dump: str | None  # sha256 name in the trace's dumps/, when the bytes were captured
    dump_available: bool
    invokes: int
    blob: BlobRef | None
    how: MatchHow
    confidence: float  # 0..1
    evidence: list[str] = Field(default_factory=list)
    alternatives: list[dict[str, Any]] = Field(default_factory=list)  # other candidate blobs, scored


class VersionCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    same_app: bool | None  # None: not enough information to tell
    trace_package: str | None = None
    trace_version: str | None = None
    app_package: str | None = None
    app_version: str | None = None
    reasons: list[str] = Field(default_factory=list)


class TraceMatch(BaseModel):
    """Which blobs an app ran, according to a trace."""

    model_config = ConfigDict(extra="forbid")

    trace: str
    models: list[ModelMatch]
    blobs_ran: list[BlobRef]
    blobs_never_loaded: list[BlobRef]
    memory_only: int  # models with no byte-identical blob in the app (decrypted or downloaded)
    version: VersionCheck
    warnings: list[str] = Field(default_factory=list)


def _basename(p: str | None) -> str:
    return posixpath.basename((p or "").replace("\\", "/")).lower()


def _invoke_counts(trace: Trace) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in trace.events:
        if isinstance(e, InvokeEvent) and e.model:
            counts[e.model] = counts.get(e.model, 0) + 1
    return counts


def _version_check(trace: Trace, app: AppIdentity | None, path_conflicts: list[str]) -> VersionCheck:
    s = trace.session()
    check = VersionCheck(
        same_app=None,
        trace_package=s.package if s else None,
        trace_version=(s.version_name if s else None),
        app_package=app.package if app else None,
        app_version=app.version_name if app else None,
    )
    if app is None or s is None:
        return check
    reasons: list[str] = []
    confirmed = False
    if s.package and app.package:
        if s.package != app.package:
            reasons.append(f"the trace is of {s.package}, the app is {app.package}")
        else:
            confirmed = True
    if s.version_name and app.version_name and s.version_name != app.version_name:
        reasons.append(f"version name differs: trace {s.version_name}, app {app.version_name}")
    if s.version_code is not None and app.version_code is not None and s.version_code != app.version_code:
        reasons.append(f"version code differs: trace {s.version_code}, app {app.version_code}")
    if s.apk_sha256 and app.apk_sha256 and not set(s.apk_sha256) & set(app.apk_sha256):
        reasons.append("none of the traced APK hashes matches the app's")
    reasons.extend(path_conflicts)
    check.reasons = reasons
    check.same_app = False if reasons else (True if confirmed else None)
    return check


def _score_decryption_source(
    load: ModelLoadEvent, blob: BlobLike, opens: list[FileOpenEvent]
) -> tuple[float, list[str]]:
    """How likely an in-memory model was decrypted from ``blob``: size, names opened, last open."""
    evidence: list[str] = []
    size = load.size or 0
    rel = abs(blob.size - size) / max(blob.size, size, 1)
    # Encryption adds a header/IV/padding or a compression changes the size a little: closeness counts.
    size_score = max(0.0, 1.0 - rel * 4.0)
    evidence.append(f"size {blob.size} vs loaded {size} ({rel:.1%} apart)")
    name = _basename(blob.entry)
    before = [o for o in opens if o.t <= load.t]
    named = [o for o in before if name and _basename(o.path) == name]
    name_score = 1.0 if named else 0.0
    if named:
        evidence.append(f"{blob.entry} was opened ({named[-1].api}) before the load")
    last_score = 0.0
    if before and name and _basename(before[-1].path) == name:
        last_score = 1.0
        evidence.append("it was the last model-like file opened before the load")
    if load.path and _basename(load.path) == name:
        name_score = last_score = 1.0
        evidence.append(f"the load's buffer lies in a mapping of {load.path}")
    return 0.45 * size_score + 0.35 * name_score + 0.2 * last_score, evidence


def match_trace(trace: Trace, blobs: list[BlobLike], app: AppIdentity | None = None) -> TraceMatch:
    """Link a trace's model loads to inventory blobs and check the trace is of this app version.

    Example::

        m = match_trace(read_trace(Path("trace")), InventoryBlob.from_inventory(inventory), app)
        [b.entry for b in m.blobs_ran], m.version.same_app
    """
    by_sha = {b.sha256: b for b in blobs if b.sha256}
    opens = trace.of_kind(FileOpenEvent)
    invokes = _invoke_counts(trace)
    models: list[ModelMatch] = []
    ran: dict[tuple[str, str, int], BlobLike] = {}
    path_conflicts: list[str] = []
    warnings = list(trace.summary.warnings)

    loads: list[ModelLoadEvent] = trace.of_kind(ModelLoadEvent)
    for load in loads:
        blob: BlobLike | None = None
        how: MatchHow = "none"
        confidence = 0.0
        evidence: list[str] = []
        alternatives: list[dict[str, Any]] = []
        if load.sha256 and load.sha256 in by_sha:
            blob, how, confidence = by_sha[load.sha256], "sha256", 1.0
            evidence.append("byte-identical (sha256)")
        elif load.path:
            name = _basename(load.path)
            named = [b for b in blobs if _basename(b.entry) == name]
            sized = [b for b in named if load.size is not None and b.size == load.size]
            if sized:
                blob, how, confidence = sized[0], "path+size", 0.8
                evidence.append(f"same name {name} and size {load.size}, sha256 not compared")
                if load.sha256 and sized[0].sha256 and load.sha256 != sized[0].sha256:
                    how, confidence = "path", 0.5
                    evidence.append("same name and size but a different sha256")
            elif named:
                blob, how, confidence = named[0], "path", 0.5
                evidence.append(f"same name {name}, size {named[0].size} vs loaded {load.size}")
            plain = blob is not None and not (blob.encrypted or blob.entropy >= HIGH_ENTROPY)
            if plain and blob is not None and load.sha256 and blob.sha256 and load.sha256 != blob.sha256:
                # A plain model of the same name with other bytes: the app changed under the trace.
                path_conflicts.append(
                    f"{blob.entry}: the traced model has sha256 {load.sha256[:12]}..., the app's "
                    f"{blob.sha256[:12]}..."
                )
        if blob is None and load.sha256:
            # Seen only in memory: find the encrypted entry it most likely came from.
            candidates = [b for b in blobs if b.encrypted or b.entropy >= HIGH_ENTROPY]
            scored = sorted(
                ((*_score_decryption_source(load, b, opens), b) for b in candidates),
                key=lambda x: -x[0],
            )
            if scored and scored[0][0] >= 0.4:
                score, ev, best = scored[0]
                blob, how, confidence = best, "decrypted-from", round(min(0.95, score), 3)
                evidence.append("no byte-identical entry: most likely decrypted from this encrypted entry")
                evidence.extend(ev)
            alternatives = [
                {"entry": b.entry, "container": list(b.container), "score": round(s, 3), "evidence": ev}
                for s, ev, b in scored[1:4]
            ]
        if blob is not None:
            ran[(blob.sha256, blob.entry, blob.offset)] = blob
        dump_ok = trace.dump_path(load.dump) is not None
        if load.dump and not dump_ok:
            evidence.append("the dump is missing from the trace folder")
        models.append(
            ModelMatch(
                handle=load.handle,
                runtime=load.runtime,
                api=load.api,
                source=load.source,
                path=load.path,
                size=load.size,
                sha256=load.sha256,
                dump=load.dump,
                dump_available=dump_ok,
                invokes=invokes.get(load.handle or "", 0),
                blob=BlobRef.of(blob) if blob is not None else None,
                how=how,
                confidence=confidence,
                evidence=evidence,
                alternatives=alternatives,
            )
        )
    never = [BlobRef.of(b) for b in blobs if (b.sha256, b.entry, b.offset) not in ran]
    memory_only = sum(1 for m in models if m.how not in ("sha256",) and m.sha256 is not None)
    version = _version_check(trace, app, path_conflicts)
    if version.same_app is False:
        warnings.append("the trace looks recorded from another app or version: " + "; ".join(version.reasons))
    return TraceMatch(
        trace=trace.summary.path,
        models=models,
        blobs_ran=[BlobRef.of(b) for b in ran.values()],
        blobs_never_loaded=never,
        memory_only=memory_only,
        version=version,
        warnings=warnings,
    )


# ------------------------------------------------------------------------------ tensors as arrays


@dataclass
class TracedTensor:
    io: str
    index: int
    name: str | None
    shape: list[int]
    dtype: str
    quantization: Quantization | None
    invoke: int | None
    array: np.ndarray


@dataclass
class TracedInvoke:
    """One invoke of one model: its captured inputs/outputs and the image fed to it, if captured."""

    seq: int
    model_sha256: str | None
    model_handle: str | None
    interpreter: str | None
    inputs: list[TracedTensor] = field(default_factory=list)
    outputs: list[TracedTensor] = field(default_factory=list)
    bitmap: np.ndarray | None = None  # (H, W, 3) uint8 RGB, the app's crop of it when it passed one
    tid: int | None = None
    crop: tuple[float, float, float, float] | None = None  # the app's crop as fractions (x0, y0, x1, y1)
    source_format: str = "rgb"  # rgb (a Bitmap), nv21 / i420 (a camera frame)
    pairing: str | None = None  # how the image was linked to this invoke: interpreter, thread, tag


def _tensor_array(trace: Trace, e: TensorEvent) -> np.ndarray | None:
    data = trace.read_dump(e.dump)
    if data is None or e.truncated or not e.dtype:
        return None
    try:
        dt = np.dtype(e.dtype)
        arr = np.frombuffer(data, dtype=dt)
        n = int(np.prod(e.shape)) if e.shape else arr.size
        if arr.size != n:
            return None
        return arr.reshape(e.shape).copy()
    except (TypeError, ValueError) as err:
        log.warning("tensor %s of invoke %s: %s", e.name, e.invoke, err)
        return None


_YUV_FORMATS = {"NV21": "nv21", "NV12": "nv21", "I420": "i420", "YUV_420_888": "i420"}


def _bitmap_array(trace: Trace, e: BitmapEvent) -> np.ndarray | None:
    """The image as (H, W, 3) uint8 RGB: Bitmaps un-premultiplied, camera frames converted with
    libyuv's BT.601 limited-range formula (``replay.yuv.packed_yuv420_to_rgb``)."""
    from replaybench.replay.yuv import packed_yuv420_to_rgb

    data = trace.read_dump(e.dump)
    if data is None or e.width <= 0 or e.height <= 0:
        return None
    if e.format in _YUV_FORMATS:
        layout = "I420" if e.format == "YUV_420_888" else e.format
        try:
            return packed_yuv420_to_rgb(data, e.width, e.height, layout)
        except ValueError as err:
            log.warning("bitmap %s: %s", e.dump, err)
            return None
    channels = {"RGBA_8888": 4, "RGB_888": 3, "ARGB_8888": 4}.get(e.format)
    if channels is None or len(data) != e.width * e.height * channels:
        return None
    img = np.frombuffer(data, np.uint8).reshape(e.height, e.width, channels)
    if e.format == "ARGB_8888":
        img = img[..., [1, 2, 3, 0]]
    if channels == 4 and e.premultiplied:
        a = img[..., 3:4].astype(np.float32)
        rgb = np.where(a > 0, np.rint(img[..., :3] * 255.0 / np.maximum(a, 1)), 0)
        return np.clip(rgb, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[..., :3])


def _apply_crop(
    img: np.ndarray, crop: list[int] | None
) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    if not crop or len(crop) != 4:
        return img, None
    h, w = img.shape[:2]
    x, y, cw, ch = (int(v) for v in crop)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + cw), min(h, y + ch)
    if x1 <= x0 or y1 <= y0:
        return img, None
    return np.ascontiguousarray(img[y0:y1, x0:x1]), (x0 / w, y0 / h, x1 / w, y1 / h)


def _pair_bitmaps(trace: Trace) -> dict[int, tuple[BitmapEvent, str]]:
    """Which invoke each captured image fed: invoke seq -> (the latest image before it, how linked).

    An image names its interpreter: the next invoke of that interpreter. Otherwise, when the trace
    records threads: the next invoke on the image's thread (two models run on two threads interleave
    their invokes, so "the next invoke" of the process is often the other model's). Otherwise the
    agent's own ``invoke`` tag.
    """
    first_pos: dict[int, int] = {}
    interp_of: dict[int, str | None] = {}
    tid_of: dict[int, int | None] = {}
    bitmaps: list[tuple[int, BitmapEvent]] = []
    for pos, e in enumerate(trace.events):
        if isinstance(e, TensorEvent) and e.invoke is not None:
            first_pos.setdefault(e.invoke, pos)
            interp_of.setdefault(e.invoke, e.interpreter)
            if e.tid is not None:
                tid_of.setdefault(e.invoke, e.tid)
        elif isinstance(e, InvokeEvent):
            first_pos.setdefault(e.seq, pos)
            if e.interpreter:
                interp_of[e.seq] = e.interpreter
            if e.tid is not None:
                tid_of[e.seq] = e.tid
        elif isinstance(e, BitmapEvent):
            bitmaps.append((pos, e))
    # Per interpreter and per thread, the invokes in trace order: the next one after an image is a bisect.
    by_interp: dict[str, list[tuple[int, int]]] = {}
    by_tid: dict[int, list[tuple[int, int]]] = {}
    for seq, p in sorted(first_pos.items(), key=lambda kv: kv[1]):
        if interp_of.get(seq):
            by_interp.setdefault(str(interp_of[seq]), []).append((p, seq))
        if tid_of.get(seq) is not None:
            by_tid.setdefault(int(tid_of[seq]), []).append((p, seq))  # type: ignore[arg-type]

    def next_after(rows: list[tuple[int, int]] | None, pos: int) -> int | None:
        if not rows:
            return None
        i = bisect.bisect_right(rows, (pos, 1 << 62))
        return rows[i][1] if i < len(rows) else None

    threads_known = bool(by_tid)
    out: dict[int, tuple[BitmapEvent, str]] = {}
    untagged: list[BitmapEvent] = []
    for pos, b in bitmaps:
        if b.interpreter:
            target, how = next_after(by_interp.get(b.interpreter), pos), "interpreter"
        elif b.tid is not None and threads_known:
            target, how = next_after(by_tid.get(b.tid), pos), "thread"
        else:
            target, how = b.invoke, "tag"
        if target is not None:
            out[target] = (b, how)  # a later image before the same invoke replaces an earlier one
        elif how == "thread":
            untagged.append(b)
    if not out and untagged:
        # The app draws its images on one thread and runs its models on another: no image shares a
        # thread with any invoke. Only the agent's tag is left.
        for b in untagged:
            if b.invoke is not None:
                out[b.invoke] = (b, "tag")
    return out


def traced_invokes(trace: Trace) -> dict[str, list[TracedInvoke]]:
    """Per model (keyed by its sha256, or ``handle:<ptr>`` when unknown), the invokes whose tensors were
    dumped, with inputs/outputs as numpy arrays and the image fed to each (if captured; see
    ``_pair_bitmaps`` for how an image is linked to the invoke it fed)."""
    handle_sha: dict[str, str | None] = {}
    invokes: dict[int, TracedInvoke] = {}
    for e in trace.events:
        if isinstance(e, ModelLoadEvent) and e.handle:
            handle_sha[e.handle] = e.sha256  # the latest load wins: handles are reused after frees
        elif isinstance(e, TensorEvent) and e.invoke is not None:
            arr = _tensor_array(trace, e)
            if arr is None:
                continue
            inv = invokes.get(e.invoke)
            if inv is None:
                inv = invokes[e.invoke] = TracedInvoke(
                    seq=e.invoke,
                    model_sha256=handle_sha.get(e.model or ""),
                    model_handle=e.model,
                    interpreter=e.interpreter,
                    tid=e.tid,
                )
            t = TracedTensor(
                e.io, e.index, e.name, list(e.shape), e.dtype or "", e.quantization, e.invoke, arr
            )
            (inv.inputs if e.io == "input" else inv.outputs).append(t)
    paired = _pair_bitmaps(trace)
    out: dict[str, list[TracedInvoke]] = {}
    for seq in sorted(invokes):
        inv = invokes[seq]
        if seq in paired:
            b, how = paired[seq]
            img = _bitmap_array(trace, b)
            if img is not None:
                inv.bitmap, inv.crop = _apply_crop(img, b.crop)
                inv.source_format = _YUV_FORMATS.get(b.format, "rgb")
                inv.pairing = how
        key = inv.model_sha256 or f"handle:{inv.model_handle or inv.interpreter}"
        out.setdefault(key, []).append(inv)
    return out


def preprocessing_pairs(trace: Trace, model_sha256: str) -> list[tuple[np.ndarray, TracedTensor]]:
    """(source bitmap RGB uint8, first input tensor) pairs of one model, for ``infer_preprocess``."""
    pairs = []
    for inv in traced_invokes(trace).get(model_sha256, []):
        if inv.bitmap is not None and inv.inputs:
            pairs.append((inv.bitmap, min(inv.inputs, key=lambda t: t.index)))
    return pairs
