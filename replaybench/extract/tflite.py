"""TFLite model structure: tensors, operators, quantisation, and TFLite Support metadata.

Reads the flatbuffer with the bounds-checked reader in ``flatbuf`` (schema field indices from
tensorflow/lite/schema/schema.fbs and tensorflow_lite_support/metadata/metadata_schema.fbs). The metadata
(``TFLITE_METADATA`` buffer, file identifier ``M001``) gives the input NormalizationOptions (mean/std) and
associated files; label files themselves live in a zip appended after the flatbuffer.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from replaybench.extract.flatbuf import FlatbufferError, Reader, Table

TENSOR_TYPES = [
    "float32", "float16", "int32", "uint8", "int64", "string", "bool", "int16", "complex64", "int8",
    "float64", "complex128", "uint64", "resource", "variant", "uint32", "uint16", "int4", "bfloat16",
]  # fmt: skip
ASSOCIATED_FILE_TYPES = [
    "UNKNOWN", "DESCRIPTIONS", "TENSOR_AXIS_LABELS", "TENSOR_VALUE_LABELS",
    "TENSOR_AXIS_SCORE_CALIBRATION", "VOCABULARY", "SCANN_INDEX_FILE",
]  # fmt: skip
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union member
MAX_LABELS = 2000


@lru_cache(maxsize=1)
def _builtin_names() -> dict[int, str]:
    # The generated schema ships with ai-edge-litert (a required dependency); it only needs flatbuffers.
    from ai_edge_litert.schema_py_generated import BuiltinOperator

    return {v: k for k, v in vars(BuiltinOperator).items() if isinstance(v, int) and not k.startswith("_")}


def is_tflite(head: bytes) -> bool:
    """``TFL3`` file identifier at offset 4 (the root offset before it must be small and aligned)."""
    if len(head) < 8 or head[4:8] != b"TFL3":
        return False
    root = int.from_bytes(head[:4], "little")
    return 8 <= root < 1 << 20


def flatbuffer_extent(data: bytes | bytearray | memoryview) -> int:
    """Bytes the TFLite flatbuffer at the start of ``data`` spans (plus an appended metadata zip).

    Walks every object the schema reaches (the flatbuffer format has no total size); the result is
    rounded up to the 4-byte alignment flatbuffers keeps, and extended over a zip archive of associated
    files that the TFLite Support metadata writer appends after the model.
    """
    info = parse_tflite(data)
    return int(info["_extent"])


def _quant(t: Table) -> dict[str, Any] | None:
    q = t.table(4)
    if q is None:
        return None
    q.touch()
    q.scalars(0, "f")  # min/max (old TOCO models): walked for the extent
    q.scalars(1, "f")
    scale = q.scalars(2, "f")
    zp = q.scalars(3, "q")
    if not scale:
        return None
    out: dict[str, Any] = {"scale": scale[:8], "zero_point": zp[:8]}
    if len(scale) > 8:
        out["channels"] = len(scale)
    return out


def _tensor(t: Table) -> dict[str, Any]:
    ttype = int(t.scalar(1, "b"))
    return {
        "name": t.string(3) or "",
        "shape": t.scalars(0, "i"),
        "dtype": TENSOR_TYPES[ttype] if 0 <= ttype < len(TENSOR_TYPES) else f"type{ttype}",
        "buffer": int(t.scalar(2, "I")),
        "quantization": _quant(t),
    }


def _metadata(r: Reader) -> dict[str, Any]:
    """ModelMetadata: name, version, author, license, normalization per input, associated files."""
    m = r.root()
    out: dict[str, Any] = {
        "name": m.string(0),
        "description": m.string(1),
        "version": m.string(2),
        "author": m.string(4),
        "license": m.string(5),
        "min_parser_version": m.string(7),
    }
    files = [_assoc(f) for f in m.tables(6)]
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    for sg in m.tables(3):
        files += [_assoc(f) for f in sg.tables(4)]
        for kind, idx, dest in (("input", 2, inputs), ("output", 3, outputs)):
            for tm in sg.tables(idx):
                entry: dict[str, Any] = {"name": tm.string(0), "description": tm.string(1), "kind": kind}
                for pu in tm.tables(4):
                    if int(pu.scalar(0, "B")) == NORMALIZATION_OPTIONS:
                        opts = pu.table(1)
                        if opts is not None:
                            entry["normalization"] = {
                                "mean": opts.scalars(0, "f"),
                                "std": opts.scalars(1, "f"),
                            }
                stats = tm.table(5)
                if stats is not None:
                    entry["stats"] = {"max": stats.scalars(0, "f"), "min": stats.scalars(1, "f")}
                tfiles = [_assoc(f) for f in tm.tables(6)]
                if tfiles:
                    entry["associated_files"] = tfiles
                    files += tfiles
                dest.append(entry)
    out["inputs"] = inputs
    out["outputs"] = outputs
    out["associated_files"] = files
    return {k: v for k, v in out.items() if v not in (None, [])}


def _assoc(f: Table) -> dict[str, Any]:
    ftype = int(f.scalar(2, "b"))
    return {
        "name": f.string(0),
        "description": f.string(1),
        "type": ASSOCIATED_FILE_TYPES[ftype] if 0 <= ftype < len(ASSOCIATED_FILE_TYPES) else str(ftype),
        "locale": f.string(3),
    }


def _appended_zip(data: bytes | bytearray | memoryview, start: int) -> tuple[int, dict[str, list[str]]]:
    """A zip of associated files right after the flatbuffer: (its end, label lines per text file)."""
    tail = bytes(data[start : start + 4])
    if tail == b"PK\x05\x06" and len(data) >= start + 22:  # an empty archive (MediaPipe writes one)
        comment_len = int.from_bytes(bytes(data[start + 20 : start + 22]), "little")
        return start + 22 + comment_len, {}
    if tail != b"PK\x03\x04":
        return start, {}
    # The end-of-central-directory record closes the archive; find the last one in the data.
    view = bytes(data[start:])
    eocd = view.rfind(b"PK\x05\x06")
    if eocd < 0 or eocd + 22 > len(view):
        return start, {}
    comment_len = int.from_bytes(view[eocd + 20 : eocd + 22], "little")
    end = start + eocd + 22 + comment_len
    labels: dict[str, list[str]] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(view[: end - start])) as z:
            for info in z.infolist():
                if info.file_size > 4 << 20:  # a label file, not a payload: refuse anything large
                    continue
                text = z.read(info).decode("utf-8", "replace")
                labels[info.filename] = text.splitlines()
    except Exception:  # a damaged label archive (zlib, CRC...): the model is still the model
        return start, {}
    return end, labels


def parse_tflite(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Structure of a TFLite model: version, inputs/outputs, op counts, quantisation, metadata, extent.

    Raises ``FlatbufferError`` when the flatbuffer is malformed.
    """
    return _parse(data)[0]


@dataclass
class TFLiteMetadata:
    """What ``convert`` takes from TFLite Support metadata: the first input's normalisation and the
    output's label file (whole, not cut to ``MAX_LABELS`` as in the inventory)."""

    mean: list[float] | None = None
    std: list[float] | None = None
    labels: list[str] | None = None
    label_file: str | None = None
    notes: list[str] = field(default_factory=list)


def read_metadata(data: bytes | bytearray | memoryview) -> TFLiteMetadata:
    """Normalisation and labels from the model's metadata, read by the bounds-checked parser. Malformed
    metadata does not stop a conversion: it is reported in ``notes``."""
    meta = TFLiteMetadata()
    try:
        info, files = _parse(data)
    except FlatbufferError as e:
        meta.notes.append(f"TFLite metadata unreadable: {e}")
        return meta
    if "metadata_error" in info:
        meta.notes.append(f"TFLite metadata unreadable: {info['metadata_error']}")
    md = info.get("metadata", {})
    inputs, outputs = md.get("inputs") or [{}], md.get("outputs") or [{}]
    if norm := inputs[0].get("normalization"):
        meta.mean, meta.std = list(norm["mean"]), list(norm["std"])
    for f in outputs[0].get("associated_files", []):
        if f.get("type") == "TENSOR_AXIS_LABELS":
            meta.label_file = f.get("name")
            break
    if meta.label_file:
        if meta.label_file in files:
            meta.labels = [x.strip() for x in files[meta.label_file] if x.strip()]
        else:
            meta.notes.append(f"label file {meta.label_file} named in metadata but not readable")
    return meta


def _parse(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], dict[str, list[str]]]:
    r = Reader(data)
    model = r.root()
    if bytes(data[4:8]) != b"TFL3":
        raise FlatbufferError("no TFL3 file identifier")
    names = _builtin_names()
    opcodes = []
    for oc in model.tables(1):
        code = max(int(oc.scalar(0, "b")), int(oc.scalar(3, "i")))
        custom = oc.string(1)
        opcodes.append(custom if custom else names.get(code, f"BUILTIN_{code}"))
        oc.scalar(2, "i")
    ops: dict[str, int] = {}
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    dtypes: dict[str, int] = {}
    n_tensors = 0
    subgraphs = model.tables(2)
    for si, sg in enumerate(subgraphs):
        tensors = sg.tables(0)
        n_tensors += len(tensors)
        parsed = [_tensor(t) for t in tensors]
        for t in tensors:  # touch the rest of each tensor so the extent covers it
            t.touch()
            sparsity = t.table(6)
            if sparsity is not None:
                sparsity.touch()
            t.scalars(7, "i")
        for p in parsed:
            dtypes[p["dtype"]] = dtypes.get(p["dtype"], 0) + 1
        if si == 0:
            inputs = [parsed[int(i)] for i in sg.scalars(1, "i") if 0 <= int(i) < len(parsed)]
            outputs = [parsed[int(i)] for i in sg.scalars(2, "i") if 0 <= int(i) < len(parsed)]
        else:
            sg.scalars(1, "i")
            sg.scalars(2, "i")
        for op in sg.tables(3):
            idx = int(op.scalar(0, "I"))
            name = opcodes[idx] if 0 <= idx < len(opcodes) else f"opcode{idx}"
            ops[name] = ops.get(name, 0) + 1
            op.scalars(1, "i")
            op.scalars(2, "i")
            opts = op.table(4)
            if opts is not None:
                opts.touch()
            op.bytes_span(5)  # custom options: walked for the extent only
            op.scalars(6, "B")
            op.scalars(7, "i")
            opts2 = op.table(10)
            if opts2 is not None:
                opts2.touch()
        sg.string(4)
    model.string(3)
    buffers = model.tables(4)
    weight_bytes = 0
    buffer_spans: list[tuple[int, int]] = []
    for b in buffers:
        span = b.bytes_span(0)
        off, size = int(b.scalar(1, "Q")), int(b.scalar(2, "Q"))
        if span is not None:
            buffer_spans.append(span)
            weight_bytes += span[1]
        elif off > 1 and size:
            # Models over 2 GB keep buffers after the flatbuffer, addressed from the model start.
            r._check(off, size)
            weight_bytes += size
    meta_names = {}
    for md in model.tables(6):
        meta_names[md.string(0) or ""] = int(md.scalar(1, "I"))
    model.scalars(5, "i")
    for sd in model.tables(7):  # signature defs: walked for the extent only
        for k in (0, 1):
            for tm in sd.tables(k):
                tm.string(0)
                tm.scalar(1, "I")
        sd.string(2)
    info: dict[str, Any] = {
        "version": int(model.scalar(0, "I")),
        "description": model.string(3),
        "subgraphs": len(subgraphs),
        "tensors": n_tensors,
        "inputs": inputs,
        "outputs": outputs,
        "ops": dict(sorted(ops.items())),
        "tensor_dtypes": dict(sorted(dtypes.items())),
        "weight_bytes": weight_bytes,
        "metadata_names": sorted(meta_names),
        "quantization": _quant_kind(inputs, dtypes, ops),
    }
    if "TFLITE_METADATA" in meta_names:
        bi = meta_names["TFLITE_METADATA"]
        if 0 <= bi < len(buffers):
            span = buffers[bi].bytes_span(0)
            if span is not None:
                try:
                    info["metadata"] = _metadata(Reader(memoryview(data)[span[0] : span[0] + span[1]]))
                except (FlatbufferError, IndexError) as e:
                    info["metadata_error"] = str(e)
    if "min_runtime_version" in meta_names:
        bi = meta_names["min_runtime_version"]
        span = buffers[bi].bytes_span(0) if 0 <= bi < len(buffers) else None
        if span is not None:
            info["min_runtime_version"] = r.span(*span).split(b"\0")[0].decode("ascii", "replace")
    end = (r.end + 3) & ~3
    end = min(end, len(data))
    zip_end, labels = _appended_zip(data, end)
    if labels:
        info["associated_file_contents"] = {k: v[:MAX_LABELS] for k, v in labels.items()}
        info["labels"] = _labels(info, labels)[:MAX_LABELS]
    info["_extent"] = zip_end
    return info, labels


def _labels(info: dict[str, Any], files: dict[str, list[str]]) -> list[str]:
    """The label file the metadata names for the output (TENSOR_AXIS_LABELS), else the first text file."""
    meta = info.get("metadata", {})
    for f in meta.get("associated_files", []):
        if f.get("type") in ("TENSOR_AXIS_LABELS", "TENSOR_VALUE_LABELS") and f.get("name") in files:
            return [x for x in files[f["name"]] if x.strip()]
    first = next(iter(files.values()), [])
    return [x for x in first if x.strip()]


def _quant_kind(inputs: list[dict[str, Any]], dtypes: dict[str, int], ops: dict[str, int]) -> str:
    in_dtype = inputs[0]["dtype"] if inputs else "float32"
    if in_dtype in ("uint8", "int8"):
        return f"full_{in_dtype}"
    if "DEQUANTIZE" in ops and dtypes.get("float16"):
        return "float16"
    if dtypes.get("int8") or dtypes.get("uint8"):
        return "dynamic_range" if in_dtype == "float32" else "int8"
    return "float32"
