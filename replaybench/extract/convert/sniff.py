"""Minimal format sniffing for loose model files (magic bytes first, then structure, never the name alone).

The scan stage has the full detector registry (replaybench/extract/formats*); this is the small subset
``convert`` needs to pick a converter for a file given on the command line.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from replaybench.errors import CorruptInputError, InputNotFoundError, UnsupportedFormatError


def sniff_format(path: Path) -> str:
    """Return the detector key of the model at ``path`` (file or SavedModel folder).

    Raises InputNotFoundError, UnsupportedFormatError (not a model we know) or CorruptInputError.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"model not found: {path}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise UnsupportedFormatError(
            f"{path} is a folder but not a TensorFlow SavedModel (no saved_model.pb)"
        )
    with path.open("rb") as f:
        head = f.read(64)
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if head[:4] == b"PK\x03\x04":
        return _sniff_zip(path)
    if head.startswith(b"7767517") or head[:4] == (7767517).to_bytes(4, "little"):  # text or binary param
        return "ncnn_param"
    if path.suffix.lower() == ".mnn" and _looks_like_mnn(path):
        return "mnn"
    if _looks_like_onnx(path):
        return "onnx"
    if _looks_like_graphdef(path):
        return "tf_graphdef"
    raise UnsupportedFormatError(f"{path} is not a model format replaybench recognises")


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CorruptInputError(f"{path} starts like a zip archive but cannot be read: {e}") from e
    # TorchScript archives have one root folder: <root>/code/, <root>/constants.pkl, <root>/data.pkl;
    # the lite interpreter adds <root>/bytecode.pkl.
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "bytecode.pkl" in tails:
        return "pytorch_lite"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    models = sorted(n for n in names if n.lower().endswith((".tflite", ".onnx", ".param", ".mnn", ".bin")))
    if models:  # a MediaPipe .task (or another model zip): say what is inside
        raise UnsupportedFormatError(
            f"{path} is a zip of models, not one model: {', '.join(models[:20])}",
            hint=f"unzip it and convert one of them (replaybench scan {path.name} lists them too)",
        )
    raise UnsupportedFormatError(f"{path} is a zip archive but not a TorchScript / PyTorch Mobile model")


def _looks_like_mnn(path: Path) -> bool:
    # MNN has no magic: the file must parse as an MNN Net flatbuffer with ops and tensor names.
    from replaybench.extract.formats import _mnn_describe

    try:
        _mnn_describe(path.read_bytes())
    except ValueError:
        return False
    return True


def _looks_like_onnx(path: Path) -> bool:
    # ONNX ModelProto starts with field 1 (ir_version, varint: 0x08) and carries a graph (field 7).
    # Parse it properly: the protobuf parser is cheap next to a false positive.
    with path.open("rb") as f:
        first = f.read(1)
    if first != b"\x08":
        return False
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return m.ir_version > 0 and m.HasField("graph")


def _looks_like_graphdef(path: Path) -> bool:
    # A frozen GraphDef starts with field 1 (node, length-delimited: 0x0a) and parses as a GraphDef.
    with path.open("rb") as f:
        first = f.read(1)
    if first != b"\x0a":
        return False
    from tensorflow.core.framework import graph_pb2

    g = graph_pb2.GraphDef()
    try:
        g.ParseFromString(path.read_bytes())
    except Exception:
        return False
    return len(g.node) > 0 and all(n.op for n in g.node)
