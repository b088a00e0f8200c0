"""The trace format: JSON Lines events plus a sidecar folder of binary dumps named by sha256.

A trace folder (what ``replaybench trace -o T`` writes, see DESIGN.md "Contracts between stages")::

    T/trace.jsonl     one event per line: {"v": 1, "t": ms, "kind": ..., ...}
    T/dumps/<sha256>  raw bytes of model buffers, tensors and bitmaps, named by their sha256

Events are typed (one pydantic model per ``kind``, discriminated on ``kind``). Reading is forgiving:
a malformed or truncated line (an agent killed mid-write, a hand-edited file) is counted, logged as a
warning and skipped, never fatal; a missing dump folder is reported in the ``TraceSummary``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from replaybench.errors import InputNotFoundError, TraceError

log = logging.getLogger(__name__)

TRACE_SCHEMA_VERSION = 1
TRACE_JSONL = "trace.jsonl"
DUMPS_DIR = "dumps"

# TfLiteType enum values (tflite/core/c/tflite_types.h) -> numpy dtype names.
TFLITE_DTYPES: dict[int, str] = {
    1: "float32",
    2: "int32",
    3: "uint8",
    4: "int64",
    6: "bool",
    7: "int16",
    9: "int8",
    10: "float16",
    11: "float64",
}


class _Event(BaseModel):
    # Events are open to extra keys: agents from newer replaybench versions may add fields, and the
    # reader must not reject a trace recorded with them.
    model_config = ConfigDict(extra="allow")

    v: int = TRACE_SCHEMA_VERSION
    t: float = 0.0  # ms since the agent started
    tid: int | None = None  # the thread the event happened on (pairs bitmaps with the invokes they fed)


class Quantization(BaseModel):
    model_config = ConfigDict(extra="allow")

    scale: float
    zero_point: int


class SessionEvent(_Event):
    """Who was traced: the app and the agent. Written first (agent) and by the capture side (app info)."""

    kind: Literal["session"]
    app: str | None = None  # program or app label
    package: str | None = None
    version_name: str | None = None
    version_code: int | None = None
    abi: str | None = None  # arm64, x64, ...
    platform: str | None = None  # linux, android (Process.platform; android when Java is available)
    agent_version: str | None = None
    pid: int | None = None
    java: bool | None = None  # whether the Java bridge was available
    apk_sha256: list[str] = Field(default_factory=list)  # base.apk/split hashes when the capture knows them


class LibraryLoadEvent(_Event):
    kind: Literal["library_load"]
    name: str
    path: str | None = None
    base: str | None = None
    size: int | None = None
    api: str | None = None  # module-observer, dlopen, System.loadLibrary


class FileOpenEvent(_Event):
    kind: Literal["file_open"]
    path: str
    api: str  # open, openat, AAssetManager_open, mmap, AAsset_getBuffer, FileInputStream, ...
    fd: int | None = None
    handle: str | None = None  # AAsset* for assets
    asset: bool = False
    address: str | None = None  # mmap / getBuffer address
    length: int | None = None
    offset: int | None = None


class ModelLoadEvent(_Event):
    kind: Literal["model_load"]
    runtime: str  # tflite, pytorch_mobile, onnxruntime, litert
    api: str  # TfLiteModelCreate, FlatBufferModel::BuildFromBuffer, Interpreter(File), ...
    handle: str | None = None  # model (or session) pointer the runtime returned
    source: Literal["file", "buffer", "asset"] = "buffer"
    path: str | None = None  # file path or asset name, when known
    address: str | None = None  # buffer address, when loaded from memory
    size: int | None = None
    sha256: str | None = None
    dump: str | None = None  # sha256 name of the dump in dumps/
    truncated: bool = False  # the dump was capped


class InterpreterEvent(_Event):
    """An interpreter (or session) created for a model: links invokes to the model they run."""

    kind: Literal["interpreter"]
    runtime: str
    api: str
    interpreter: str
    model: str | None = None


class TensorEvent(_Event):
    kind: Literal["tensor"]
    runtime: str = "tflite"
    interpreter: str | None = None  # interpreter/subgraph handle the tensor belongs to
    model: str | None = None  # model handle, when the agent could link it
    invoke: int | None = None  # the invoke sequence number this tensor was captured at
    io: Literal["input", "output"]
    index: int
    name: str | None = None
    shape: list[int] = Field(default_factory=list)
    dtype: str | None = None  # numpy dtype name (float32, uint8, int8, ...)
    type_code: int | None = None  # raw runtime enum (TfLiteType)
    quantization: Quantization | None = None
    bytes: int | None = None
    sha256: str | None = None
    dump: str | None = None
    truncated: bool = False


class BitmapEvent(_Event):
    """An image the app is about to preprocess: an ARGB Bitmap or a camera frame (YUV 4:2:0 planes).

    Which invoke it fed: the next invoke of ``interpreter`` when the agent knows it, else the next
    invoke on the same thread (``tid``), else the agent's ``invoke`` tag (the next invoke of any model:
    wrong when two models run on two threads; kept for traces of older agents).
    """

    kind: Literal["bitmap"]
    width: int
    height: int
    # Pixel layout of the dump: RGBA_8888, RGB_888, ARGB_8888 (Bitmaps); NV21, NV12, I420 (camera
    # frames: Y plane then chroma, packed without row padding; BT.601 limited range).
    format: str = "RGBA_8888"
    premultiplied: bool = False
    invoke: int | None = None  # the agent's guess: the next invoke of any model after capture
    interpreter: str | None = None  # the interpreter this image was fed to, when the agent knows it
    # The region the app cut out of this image and fed on (x, y, width, height in its pixels), when the
    # app passed one (Bitmap.createBitmap(src, x, y, w, h), a crop rectangle); None: the whole image.
    crop: list[int] | None = None
    api: str | None = None  # createScaledBitmap, TensorImage.load, YuvImage, ...
    sha256: str | None = None
    dump: str | None = None


class InvokeEvent(_Event):
    kind: Literal["invoke"]
    runtime: str = "tflite"
    api: str
    seq: int
    interpreter: str | None = None
    model: str | None = None
    duration_ms: float | None = None
    tensors: bool = False  # whether tensors were captured for this invoke


class WatchEvent(_Event):
    kind: Literal["watch"]
    target: str
    phase: Literal["enter", "leave"] = "enter"
    args: list[dict[str, Any]] = Field(default_factory=list)
    retval: str | None = None
    dump: str | None = None


class StatsEvent(_Event):
    """Agent bookkeeping: events dropped by the rate limit, dumps skipped by the size cap, hook errors."""

    kind: Literal["stats"]
    dropped: int = 0
    capped: int = 0
    errors: list[str] = Field(default_factory=list)


TraceEvent = Annotated[
    SessionEvent
    | LibraryLoadEvent
    | FileOpenEvent
    | ModelLoadEvent
    | InterpreterEvent
    | TensorEvent
    | BitmapEvent
    | InvokeEvent
    | WatchEvent
    | StatsEvent,
    Field(discriminator="kind"),
]
_EVENT_ADAPTER: TypeAdapter[TraceEvent] = TypeAdapter(TraceEvent)
EVENT_KINDS = (
    "session",
    "library_load",
    "file_open",
    "model_load",
    "interpreter",
    "tensor",
    "bitmap",
    "invoke",
    "watch",
    "stats",
)


def parse_event(obj: dict[str, Any]) -> TraceEvent:
    """Validate one decoded JSON object as a TraceEvent (raises pydantic.ValidationError)."""
    return _EVENT_ADAPTER.validate_python(obj)


class TraceSummary(BaseModel):
    """What a trace holds, and what was wrong with it."""

    model_config = ConfigDict(extra="forbid")

    path: str
    events: int = 0
    by_kind: dict[str, int] = Field(default_factory=dict)
    malformed_lines: int = 0  # not JSON, truncated, or failing the schema
    unknown_kinds: dict[str, int] = Field(default_factory=dict)
    newer_schema_lines: int = 0
    models_loaded: int = 0
    invokes: int = 0
    dumps_referenced: int = 0
    dumps_missing: int = 0
    dump_folder_missing: bool = False
    dropped_by_agent: int = 0
    warnings: list[str] = Field(default_factory=list)


class Trace(BaseModel):
    """A parsed trace folder: its events in file order and the summary of the read."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    folder: Path
    events: list[TraceEvent]
    summary: TraceSummary

    @property
    def dumps(self) -> Path:
        return self.folder / DUMPS_DIR

    def session(self) -> SessionEvent | None:
        """The merged session information (later session lines fill fields the earlier left empty)."""
        merged: dict[str, Any] = {}
        for e in self.events:
            if isinstance(e, SessionEvent):
                for k, v in e.model_dump().items():
                    if v not in (None, [], "") and merged.get(k) in (None, [], ""):
                        merged[k] = v
        return SessionEvent.model_validate(merged) if merged else None

    def of_kind(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def dump_path(self, sha: str | None) -> Path | None:
        """The path of a dump by its sha256, or None when absent (or the name is not a sha256)."""
        if not sha or not _is_sha256(sha):
            return None  # never join an arbitrary string from a trace into a path
        p = self.dumps / sha
        return p if p.is_file() else None

    def read_dump(self, sha: str | None) -> bytes | None:
        p = self.dump_path(sha)
        return p.read_bytes() if p is not None else None


def _is_sha256(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def trace_file(path: Path) -> Path:
    """The trace.jsonl for a trace folder or the file itself. Raises InputNotFoundError."""
    path = Path(path)
    if path.is_dir():
        path = path / TRACE_JSONL
    if not path.is_file():
        raise InputNotFoundError(
            f"trace not found: {path}", hint="record one with: replaybench trace --spawn APP -o TRACE_DIR"
        )
    return path


def iter_lines(path: Path, summary: TraceSummary) -> Iterator[TraceEvent]:
    """Yield the valid events of a trace.jsonl, counting (and logging) the lines that are not."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                summary.malformed_lines += 1
                log.warning("%s:%d: not a JSON line (truncated?), skipped", path, lineno)
                continue
            if not isinstance(obj, dict) or "kind" not in obj:
                summary.malformed_lines += 1
                log.warning("%s:%d: not an event object, skipped", path, lineno)
                continue
            kind = obj.get("kind")
            if kind not in EVENT_KINDS:
                summary.unknown_kinds[str(kind)] = summary.unknown_kinds.get(str(kind), 0) + 1
                continue
            if isinstance(obj.get("v"), int) and obj["v"] > TRACE_SCHEMA_VERSION:
                summary.newer_schema_lines += 1
            try:
                yield parse_event(obj)
            except ValidationError as e:
                summary.malformed_lines += 1
                log.warning("%s:%d: invalid %s event (%s), skipped", path, lineno, kind, e.errors()[0]["msg"])


def read_trace(path: Path) -> Trace:
    """Read a trace folder (or its trace.jsonl). Never fails on bad lines; see ``TraceSummary``.

    Raises InputNotFoundError when there is no trace file and TraceError when not one line is usable.

    Example::

        trace = read_trace(Path("trace/"))
        trace.summary.models_loaded, trace.summary.malformed_lines
    """
    file = trace_file(path)
    folder = file.parent
    summary = TraceSummary(path=str(file))
    events = list(iter_lines(file, summary))
    if not events:
        raise TraceError(
            f"{file} holds no usable trace event ({summary.malformed_lines} malformed lines)",
            hint="check that the agent ran: replaybench trace ... -o TRACE_DIR",
        )
    counts = Counter(e.kind for e in events)
    summary.events = len(events)
    summary.by_kind = dict(sorted(counts.items()))
    summary.models_loaded = counts.get("model_load", 0)
    summary.invokes = counts.get("invoke", 0)
    summary.dropped_by_agent = sum(e.dropped for e in events if isinstance(e, StatsEvent))
    refs = {sha for e in events for sha in [getattr(e, "dump", None)] if isinstance(sha, str) and sha}
    summary.dumps_referenced = len(refs)
    dumps = folder / DUMPS_DIR
    if refs and not dumps.is_dir():
        summary.dump_folder_missing = True
        summary.dumps_missing = len(refs)
        summary.warnings.append(
            f"the dump folder {dumps} is missing: {len(refs)} dumps (models, tensors, bitmaps) unavailable"
        )
    elif refs:
        summary.dumps_missing = sum(1 for sha in refs if not (dumps / sha).is_file())
        if summary.dumps_missing:
            summary.warnings.append(f"{summary.dumps_missing} of {len(refs)} dumps are missing from {dumps}")
    if summary.malformed_lines:
        summary.warnings.append(f"{summary.malformed_lines} malformed or truncated lines were skipped")
    if summary.unknown_kinds:
        summary.warnings.append(f"events of unknown kinds were skipped: {summary.unknown_kinds}")
    if summary.newer_schema_lines:
        summary.warnings.append(
            f"{summary.newer_schema_lines} events have a schema version newer than {TRACE_SCHEMA_VERSION}"
        )
    for w in summary.warnings:
        log.warning("%s: %s", file, w)
    return Trace(folder=folder, events=events, summary=summary)


class TraceWriter:
    """Append events to trace.jsonl and dumps to dumps/<sha256>. Used by capture (and tests).

    Each line is flushed as written, so a killed capture leaves at most one truncated line, which the
    reader skips.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / DUMPS_DIR).mkdir(exist_ok=True)
        self._f = (self.folder / TRACE_JSONL).open("a", encoding="utf-8")
        self.events = 0
        self.dumps_written = 0
        self.by_kind: Counter[str] = Counter()

    def write_dump(self, data: bytes) -> str:
        """Store bytes under their sha256 (once) and return the sha256."""
        sha = hashlib.sha256(data).hexdigest()
        p = self.folder / DUMPS_DIR / sha
        if not p.exists():
            tmp = p.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(p)
            self.dumps_written += 1
        return sha

    def write(self, event: dict[str, Any], data: bytes | None = None) -> dict[str, Any]:
        """Write one event; ``data`` (a binary payload) becomes a dump whose sha256 the event names."""
        event = dict(event)
        event.setdefault("v", TRACE_SCHEMA_VERSION)
        event.setdefault("t", 0.0)
        if data is not None:
            sha = self.write_dump(data)
            event["dump"] = sha
            # The dump is the whole object unless the agent said it capped it: then the dump's hash is
            # not the object's, and only a sha256 the agent computed over the whole object is kept.
            if not event.get("truncated"):
                event["sha256"] = sha
        self._f.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
        self._f.flush()
        self.events += 1
        self.by_kind[str(event.get("kind"))] += 1
        return event

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
