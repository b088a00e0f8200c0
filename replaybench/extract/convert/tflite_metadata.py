"""A minimal reader for TFLite Support metadata: input normalisation and output label files.

The metadata is a flatbuffer (schema: tensorflow/tflite-support metadata_schema.fbs) stored in the
model's ``TFLITE_METADATA`` buffer; associated files (labels) are appended to the model as a zip
archive. Only the fields ``convert`` needs are read, with the generic flatbuffers table API, so no
tflite-support dependency is required. The scan stage has the fuller reader.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

MAX_LABEL_FILE = 4 * 1024 * 1024  # a label file larger than this is not a label file
# What zipfile raises on a hostile appended archive: negative seeks (ValueError), unknown compression
# methods (NotImplementedError), encrypted entries (RuntimeError), broken deflate streams (zlib.error).
_ZIP_ERRORS = (
    zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError, NotImplementedError, RuntimeError, zlib.error,
)  # fmt: skip

# Field slots in metadata_schema.fbs
_MODEL_SUBGRAPHS = 3
_SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS = 2, 3
_TENSOR_PROCESS_UNITS, _TENSOR_ASSOCIATED_FILES = 4, 6
_FILE_NAME, _FILE_TYPE = 0, 2
_TENSOR_AXIS_LABELS = 2
_NORMALIZATION_OPTIONS = 1


@dataclass
class TFLiteMetadata:
    mean: list[float] | None = None
    std: list[float] | None = None
    labels: list[str] | None = None
    label_file: str | None = None
    notes: list[str] = field(default_factory=list)


def _tab(buf: bytes, pos: int) -> Any:
    from flatbuffers.table import Table

    return Table(bytearray(buf), pos)


def _off(t: Any, slot: int) -> int:
    return int(t.Offset(4 + 2 * slot))


def _sub(t: Any, slot: int) -> Any | None:
    from flatbuffers.table import Table

    o = _off(t, slot)
    return Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None


def _tables(t: Any, slot: int) -> list[Any]:
    from flatbuffers.table import Table

    o = _off(t, slot)
    if not o:
        return []
    start = t.Vector(o)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]


def _floats(t: Any, slot: int) -> list[float]:
    from flatbuffers import number_types

    o = _off(t, slot)
    if not o:
        return []
    start = t.Vector(o)
    return [float(t.Get(number_types.Float32Flags, start + 4 * i)) for i in range(t.VectorLen(o))]


def _u8(t: Any, slot: int) -> int:
    from flatbuffers import number_types

    o = _off(t, slot)
    return int(t.Get(number_types.Uint8Flags, o + t.Pos)) if o else 0


def _str(t: Any, slot: int) -> str | None:
    o = _off(t, slot)
    return t.String(o + t.Pos).decode("utf-8", "replace") if o else None


def read_metadata(model: Any, model_bytes: bytes) -> TFLiteMetadata:
    """Read normalisation (first input) and output labels from a TFLite model object (ModelT)."""
    meta = TFLiteMetadata()
    raw = None
    for m in model.metadata or []:
        name = m.name.decode() if isinstance(m.name, bytes) else m.name
        if name == "TFLITE_METADATA" and 0 < m.buffer < len(model.buffers):
            data = model.buffers[m.buffer].data
            raw = bytes(data) if data is not None else None
    if not raw:
        return meta
    try:
        import flatbuffers

        root = _tab(raw, flatbuffers.encode.Get(flatbuffers.packer.uoffset, bytearray(raw), 0))
        subgraphs = _tables(root, _MODEL_SUBGRAPHS)
        if not subgraphs:
            return meta
        inputs = _tables(subgraphs[0], _SUBGRAPH_INPUTS)
        for unit in _tables(inputs[0], _TENSOR_PROCESS_UNITS) if inputs else []:
            if _u8(unit, 0) == _NORMALIZATION_OPTIONS and (opt := _sub(unit, 1)) is not None:
                meta.mean, meta.std = _floats(opt, 0), _floats(opt, 1)
        outputs = _tables(subgraphs[0], _SUBGRAPH_OUTPUTS)
        for f in _tables(outputs[0], _TENSOR_ASSOCIATED_FILES) if outputs else []:
            if _u8(f, _FILE_TYPE) == _TENSOR_AXIS_LABELS:
                meta.label_file = _str(f, _FILE_NAME)
                break
    except Exception as e:  # malformed metadata must not stop a conversion; it is reported instead
        meta.notes.append(f"TFLite metadata unreadable: {type(e).__name__}: {e}")
        return meta
    if meta.label_file:
        meta.labels = _read_associated_file(model_bytes, meta.label_file, meta)
    return meta


def _read_associated_file(model_bytes: bytes, name: str, meta: TFLiteMetadata) -> list[str] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as z:
            info = z.getinfo(name)
            if info.file_size > MAX_LABEL_FILE:
                meta.notes.append(f"label file {name} is {info.file_size} bytes; ignored")
                return None
            text = z.read(info).decode("utf-8", "replace")
    except _ZIP_ERRORS as e:
        meta.notes.append(f"label file {name} named in metadata but not readable: {e}")
        return None
    return [line.strip() for line in text.splitlines() if line.strip()]
