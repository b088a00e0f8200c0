"""The registry of model-format detectors: magic bytes first, then structure, then extension.

Each detector looks at the first bytes of an entry (``head``) and its name and returns a ``Detection``
with evidence, or None. Formats whose verdict needs the whole file (TFLite structure, ONNX protobuf,
zip-based TorchScript/PyTorch lite/SNPE) also register a ``describe`` step run on the full bytes;
if that fails, the candidate is rejected with the reason rather than trusted.

Add a format with ``@detector("key", extensions=(...))``; an unknown key is rejected at registration
(the key set is ``inventory.BLOB_FORMATS``, the contract other stages read).
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from replaybench.extract.inventory import BLOB_FORMATS

HEAD_SIZE = 64 * 1024


@dataclass
class Detection:
    format: str
    evidence: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    needs_full: bool = False  # describe() must see all bytes before the verdict stands


Detect = Callable[[bytes, str, int], Detection | None]
Describe = Callable[[bytes | bytearray | memoryview], dict[str, Any]]


@dataclass
class Detector:
    key: str
    detect: Detect
    extensions: tuple[str, ...]
    describe: Describe | None = None


DETECTORS: dict[str, Detector] = {}


def detector(key: str, *, extensions: tuple[str, ...] = ()) -> Callable[[Detect], Detect]:
    """Register a detector for the blob format ``key`` (one of ``BLOB_FORMATS``)."""
    if key not in BLOB_FORMATS:
        raise ValueError(f"unknown blob format {key!r}; add it to inventory.BLOB_FORMATS first")

    def wrap(fn: Detect) -> Detect:
        DETECTORS[key] = Detector(key, fn, extensions)
        return fn

    return wrap


def describer(key: str) -> Callable[[Describe], Describe]:
    """Register the full-content step of an already registered format."""

    def wrap(fn: Describe) -> Describe:
        DETECTORS[key].describe = fn
        return fn

    return wrap


MODEL_EXTENSIONS: dict[str, str] = {}  # filled below from the registry: ".tflite" -> "tflite"

# The extension a copy of a blob of each format is written with (extracted blobs, trace dumps, a bundle's
# ``source.<ext>``): the one place this fact lives.
FILE_EXTENSIONS = {
    "tflite": ".tflite",
    "onnx": ".onnx",
    "torchscript": ".pt",
    "pytorch_lite": ".ptl",
    "savedmodel": ".pb",
    "tf_graphdef": ".pb",
    "ncnn_param": ".param",
    "ncnn_bin": ".bin",
    "mnn": ".mnn",
    "caffe_prototxt": ".prototxt",
    "caffemodel": ".caffemodel",
    "paddle_lite": ".nb",
    "snpe_dlc": ".dlc",
    "coreml": ".mlmodel",
}


def file_extension(fmt: str) -> str:
    """The extension a copy of a ``fmt`` blob is written with (``.bin`` for formats without one)."""
    return FILE_EXTENSIONS.get(fmt, ".bin")


def claimed_format(name: str) -> str | None:
    """The format a file name claims by its extension (None for generic names like .bin)."""
    low = name.lower()
    if not _EXT_ORDER:  # longest first, so "saved_model.pb" wins over ".pb"
        _EXT_ORDER.extend(sorted(MODEL_EXTENSIONS.items(), key=lambda kv: -len(kv[0])))
    for ext, key in _EXT_ORDER:
        if low.endswith(ext):
            return key
    return None


_EXT_ORDER: list[tuple[str, str]] = []


def detect(head: bytes, name: str, size: int) -> Detection | None:
    """Run every detector (magic/structure) on ``head``; the first match wins, in registry order."""
    for d in DETECTORS.values():
        found = d.detect(head, name, size)
        if found is not None:
            return found
    return None


def describe(det: Detection, data: bytes | bytearray | memoryview) -> Detection:
    """Complete ``det`` with the full-content step (raises ValueError when the structure is invalid)."""
    d = DETECTORS[det.format]
    if d.describe is not None:
        det.details.update(d.describe(data))
    return det


def entropy_of(counts: np.ndarray) -> float:
    """Shannon entropy in bits/byte of a 256-bin byte histogram."""
    total = float(counts.sum())
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def _ext(name: str, *exts: str) -> bool:
    low = name.lower()
    return any(low.endswith(e) for e in exts)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while pos < len(buf) and shift < 64:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return result, pos
        shift += 7
    raise ValueError("truncated varint")


def protobuf_fields(buf: bytes, limit: int = 8) -> list[tuple[int, int, int]]:
    """The first ``limit`` top-level protobuf fields (number, wire type, payload length or value)."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos < len(buf) and len(out) < limit:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0 or wt not in (0, 1, 2, 5):
            raise ValueError(f"invalid protobuf key {key}")
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = 8, pos + 8
        elif wt == 5:
            val, pos = 4, pos + 4
        else:
            val, pos = _varint(buf, pos)
            pos += val
        out.append((num, wt, val))
        if pos > len(buf):
            break
    return out


# ----------------------------------------------------------------------------------------- detectors


@detector("tflite", extensions=(".tflite", ".lite"))
def _tflite(head: bytes, name: str, size: int) -> Detection | None:
    from replaybench.extract.tflite import is_tflite

    if is_tflite(head):
        return Detection("tflite", ["flatbuffer file identifier 'TFL3' at offset 4"], needs_full=True)
    return None


@describer("tflite")
def _tflite_describe(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    from replaybench.extract.tflite import parse_tflite

    info = parse_tflite(data)
    info.pop("_extent", None)
    return info


ONNX_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25}


@detector("onnx", extensions=(".onnx",))
def _onnx(head: bytes, name: str, size: int) -> Detection | None:
    # ModelProto starts with ir_version (field 1, varint: 3 since ONNX 1.0, 13 in 2025) and then
    # producer/graph/opset fields. SavedModel (schema version 1) and Core ML (.mlmodel) look alike.
    if len(head) < 4 or head[0] != 0x08 or not 3 <= head[1] <= 40 or _ext(name, ".mlmodel"):
        return None
    try:
        fields = protobuf_fields(head, 4)
    except ValueError:
        return None
    nums = [f[0] for f in fields]
    if not set(nums) <= ONNX_FIELDS or len(nums) < 2 or not ({2, 7, 8} & set(nums)):
        return None
    return Detection("onnx", [f"protobuf ModelProto: ir_version={head[1]}, fields {nums}"], needs_full=True)


@describer("onnx")
def _onnx_describe(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    import onnx

    try:
        model = onnx.load_from_string(bytes(data))
    except Exception as e:  # onnx raises DecodeError / RuntimeError variants
        raise ValueError(f"not a parseable ONNX ModelProto: {e}") from e
    if not model.graph.node:
        raise ValueError("ONNX ModelProto without graph nodes")
    init = {i.name for i in model.graph.initializer}

    def io_of(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            if v.name in init:
                continue
            t = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": onnx.TensorProto.DataType.Name(t.elem_type)})
        return out

    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": io_of(model.graph.input),
        "outputs": io_of(model.graph.output),
        "ops": dict(sorted(ops.items())),
    }


def zip_names(data: bytes | bytearray | memoryview) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        return z.namelist()


def torch_kind(names: list[str]) -> tuple[str, list[str]] | None:
    """TorchScript vs lite interpreter from archive names alone (pickles are never loaded)."""
    roots = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(roots) != 1:
        return None
    root = next(iter(roots))
    has = {n.split("/", 1)[1] for n in names if "/" in n}
    if "bytecode.pkl" in has:
        return "pytorch_lite", [f"zip archive '{root}/' with bytecode.pkl (lite interpreter)"]
    if "constants.pkl" in has or any(h.startswith("code/") for h in has):
        ev = [f"zip archive '{root}/' with code/ and constants.pkl, no bytecode.pkl (full TorchScript)"]
        return "torchscript", ev
    return None


@detector("torchscript", extensions=(".pt", ".pth", ".torchscript", ".ptl"))
def _torchscript(head: bytes, name: str, size: int) -> Detection | None:
    # A zip: the central directory is at the end, so the verdict comes from describe(); the local
    # header of the first entry already names the archive root (``model/data.pkl``, ``archive/...``).
    if head[:4] != b"PK\x03\x04":
        return None
    n = int.from_bytes(head[26:28], "little")
    first = head[30 : 30 + n].decode("utf-8", "replace")
    if re.match(r"^[^/]+/(data\.pkl|code/|constants|bytecode\.pkl|version|\.data/)", first):
        return Detection("torchscript", [f"zip whose first entry is {first!r}"], needs_full=True)
    return None


@describer("torchscript")
def _torch_describe(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    names = zip_names(data)
    kind = torch_kind(names)
    if kind is None:
        raise ValueError("zip archive without TorchScript code/constants.pkl or bytecode.pkl")
    fmt, ev = kind
    root = names[0].split("/", 1)[0]
    details: dict[str, Any] = {"kind": fmt, "archive_root": root, "entries": len(names), "_evidence": ev}
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        if f"{root}/version" in z.namelist():
            details["version"] = z.read(f"{root}/version").decode("ascii", "replace").strip()
        ops = set()
        for n in z.namelist():
            if n.startswith(f"{root}/code/") and n.endswith(".py") and z.getinfo(n).file_size < 1 << 20:
                # Source text (TorchScript code), read as text only to name the ops it calls.
                ops |= set(re.findall(r"ops\.([a-z_]+\.[A-Za-z0-9_]+)", z.read(n).decode("utf-8", "replace")))
        if ops:
            details["ops"] = sorted(ops)[:100]
    return details


@detector("savedmodel", extensions=("saved_model.pb", "saved_model.pbtxt"))
def _savedmodel(head: bytes, name: str, size: int) -> Detection | None:
    if not _ext(name, "saved_model.pb") or len(head) < 4:
        return None
    try:
        nums = [f[0] for f in protobuf_fields(head, 2)]
    except ValueError:
        return None
    if nums[:2] == [1, 2]:
        return Detection("savedmodel", ["saved_model.pb: SavedModel protobuf (schema version, meta_graphs)"])
    return None


@detector("tf_graphdef", extensions=(".pb",))
def _graphdef(head: bytes, name: str, size: int) -> Detection | None:
    if len(head) < 8 or head[0] != 0x0A:
        return None
    ops = re.findall(
        rb"\x12[\x03-\x20](Const|Placeholder|Conv2D|MatMul|Identity|Relu6?|BiasAdd)", head[:4096]
    )
    if ops and (_ext(name, ".pb") or len(ops) >= 3):
        found = sorted({o.decode() for o in ops})
        return Detection("tf_graphdef", [f"GraphDef protobuf with NodeDef ops {found}"])
    return None


@detector("ncnn_param", extensions=(".param",))
def _ncnn_param(head: bytes, name: str, size: int) -> Detection | None:
    if re.match(rb"7767517\s*\r?\n\s*\d+\s+\d+", head):
        m = re.match(rb"7767517\s*\r?\n\s*(\d+)\s+(\d+)", head)
        assert m is not None
        return Detection(
            "ncnn_param",
            ["text starts with ncnn magic 7767517"],
            {"layers": int(m.group(1)), "blobs": int(m.group(2)), "binary": False},
        )
    if head[:4] == (7767517).to_bytes(4, "little"):
        return Detection("ncnn_param", ["binary param magic 7767517 (int32 LE)"], {"binary": True})
    return None


@detector("ncnn_bin", extensions=())
def _ncnn_bin(head: bytes, name: str, size: int) -> Detection | None:
    return None  # no magic: paired with its .param by name after the scan (see scan._pair_ncnn)


@detector("mnn", extensions=(".mnn",))
def _mnn(head: bytes, name: str, size: int) -> Detection | None:
    if not _ext(name, ".mnn") or len(head) < 16:
        return None
    return Detection("mnn", [".mnn name"], needs_full=True)


@describer("mnn")
def _mnn_describe(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """MNN ``Net`` flatbuffer (no file identifier): oplists (field 3) and tensorName (field 7)."""
    from replaybench.extract.flatbuf import FlatbufferError, Reader

    try:
        net = Reader(data).root()
        ops = net.tables(3)
        tensors = net.strings(7)
        outputs = net.strings(4)
        biz = net.string(0)
    except FlatbufferError as e:
        raise ValueError(f"not an MNN Net flatbuffer: {e}") from e
    if not ops or not tensors:
        raise ValueError("MNN Net flatbuffer without ops or tensor names")
    return {
        "ops": len(ops),
        "tensors": len(tensors),
        "outputs": outputs[:20],
        "biz_code": biz,
        "_evidence": [f"MNN Net flatbuffer: {len(ops)} ops, {len(tensors)} named tensors"],
    }


@detector("caffe_prototxt", extensions=(".prototxt",))
def _prototxt(head: bytes, name: str, size: int) -> Detection | None:
    text = head[:8192]
    if b"layer" in text and re.search(rb"\blayers? \{", text) and re.search(rb'\btype: *"?\w+', text):
        return Detection("caffe_prototxt", ["text protobuf with layer { type: ... } blocks"])
    return None


@detector("caffemodel", extensions=(".caffemodel",))
def _caffemodel(head: bytes, name: str, size: int) -> Detection | None:
    if not _ext(name, ".caffemodel") or len(head) < 4:
        return None
    try:
        nums = {f[0] for f in protobuf_fields(head, 3)}
    except ValueError:
        return None
    if nums & {1, 2, 100}:
        return Detection("caffemodel", [f"NetParameter protobuf fields {sorted(nums)}"])
    return None


@detector("paddle_lite", extensions=(".nb",))
def _paddle(head: bytes, name: str, size: int) -> Detection | None:
    # naive buffer: uint16 meta_version, then char[16] opt version like "v2.10"
    if len(head) >= 18 and re.match(rb"v\d+\.\d+", head[2:18]):
        ver = head[2:18].split(b"\0")[0].decode("ascii", "replace")
        return Detection("paddle_lite", [f"naive-buffer header with opt version {ver}"], {"opt_version": ver})
    return None


@detector("snpe_dlc", extensions=(".dlc",))
def _dlc(head: bytes, name: str, size: int) -> Detection | None:
    if head[:4] == b"PK\x03\x04" and _ext(name, ".dlc"):
        return Detection("snpe_dlc", ["zip archive named .dlc"], needs_full=True)
    return None


@describer("snpe_dlc")
def _dlc_describe(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    names = set(zip_names(data))
    if not ({"model", "model.params"} <= names or "dlc.metadata" in names):
        raise ValueError("zip without SNPE model/model.params entries")
    return {"entries": sorted(names)[:20], "_evidence": ["SNPE DLC archive entries"]}


@detector("coreml", extensions=(".mlmodel",))
def _coreml(head: bytes, name: str, size: int) -> Detection | None:
    if (
        _ext(name, ".mlmodel")
        and len(head) > 3
        and head[0] == 0x08
        and 1 <= head[1] <= 12
        and head[2] == 0x12
    ):
        return Detection("coreml", [f"Core ML Model protobuf, specificationVersion {head[1]}"])
    if name.lower().endswith(".mlpackage/manifest.json") and b"com.apple.CoreML" in head:
        return Detection("coreml", ["mlpackage Manifest.json naming com.apple.CoreML"])
    return None


@detector("unknown_high_entropy", extensions=())
def _unknown(head: bytes, name: str, size: int) -> Detection | None:
    return None  # decided after the whole entry was read (entropy) and code evidence is known


for _d in DETECTORS.values():
    for _e in _d.extensions:
        MODEL_EXTENSIONS[_e] = _d.key

# Media and code formats whose entries are never model candidates (skip hashing them entirely).
NON_MODEL_MAGIC = (
    b"\x89PNG",
    b"\xff\xd8\xff",
    b"GIF8",
    b"RIFF",
    b"dex\n",
    b"\x03\x00\x08\x00",  # binary XML
    b"\x02\x00\x0c\x00",  # resources.arsc
    b"OggS",
    b"ID3",
    b"\x00\x01\x00\x00",  # TrueType
    b"OTTO",
    b"wOFF",
)


def is_non_model(head: bytes) -> bool:
    return head.startswith(NON_MODEL_MAGIC) or head[4:8] == b"ftyp"


def high_entropy(entropy: float, size: int) -> bool:
    """Close to 8 bits/byte: compressed or encrypted. 64 KiB+ so tiny files do not qualify by chance."""
    return size >= 64 * 1024 and entropy >= 7.9 - 8 / math.sqrt(size)
