"""Valid inputs the fuzzers start from, so mutations get past every magic number and header check.

* ``tflite_model()``: a real TFLite flatbuffer (FULLY_CONNECTED, an int8-quantised tensor, a
  ``TFLITE_METADATA`` buffer holding TFLite Support metadata with normalisation, stats and an associated
  label file, a ``min_runtime_version`` buffer) followed by the zip of associated files, as the TFLite
  Support metadata writer lays it out. Built with the generated schema of ai-edge-litert; the LiteRT
  interpreter loads and runs it (``test_seeds_are_valid``).
* ``dex_file()``: a DEX assembled by smali from a class that names TFLite APIs (so the androguard path runs).
* ``elf_library(arch)``: a shared library compiled by gcc with a TFLite model in .rodata and TFLite symbols.
* zips (APK, XAPK with a nested APK and an OBB, APKM) made with ``zipfile`` from the above.
"""

from __future__ import annotations

import io
import json
import subprocess
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

from tests.fixtures.cache import cached_build

LABELS = ["female", "male"]
_METADATA_ID = b"M001"

# Binary AndroidManifest.xml is produced by aapt; a fuzzed manifest only needs the chunk header.
AXML_HEAD = b"\x03\x00\x08\x00"


def _metadata_flatbuffer() -> bytes:
    """TFLite Support ModelMetadata (metadata_schema.fbs) with the generic flatbuffers builder."""
    import flatbuffers

    b = flatbuffers.Builder(256)

    def floats(values: list[float]) -> int:
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependFloat32(v)
        return b.EndVector()

    def offsets(values: list[int]) -> int:
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependUOffsetTRelative(v)
        return b.EndVector()

    # AssociatedFile { name:0, description:1, type:2 (TENSOR_AXIS_LABELS = 2), locale:3 }
    fname, fdesc = b.CreateString("labels.txt"), b.CreateString("output labels")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, fname, 0)
    b.PrependUOffsetTRelativeSlot(1, fdesc, 0)
    b.PrependInt8Slot(2, 2, 0)
    assoc = b.EndObject()
    # NormalizationOptions { mean:0, std:1 } inside ProcessUnit { options_type:0, options:1 }
    mean, std = floats([127.5, 127.5, 127.5]), floats([127.5, 127.5, 127.5])
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, mean, 0)
    b.PrependUOffsetTRelativeSlot(1, std, 0)
    norm = b.EndObject()
    b.StartObject(2)
    b.PrependUint8Slot(0, 1, 0)
    b.PrependUOffsetTRelativeSlot(1, norm, 0)
    unit = b.EndObject()
    # Stats { max:0, min:1 }
    smax, smin = floats([1.0]), floats([-1.0])
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, smax, 0)
    b.PrependUOffsetTRelativeSlot(1, smin, 0)
    stats = b.EndObject()
    # TensorMetadata { name:0, description:1, ..., process_units:4, stats:5, associated_files:6 }
    in_name, units = b.CreateString("image"), offsets([unit])
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(0, in_name, 0)
    b.PrependUOffsetTRelativeSlot(4, units, 0)
    b.PrependUOffsetTRelativeSlot(5, stats, 0)
    tin = b.EndObject()
    out_name, files = b.CreateString("probability"), offsets([assoc])
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(0, out_name, 0)
    b.PrependUOffsetTRelativeSlot(6, files, 0)
    tout = b.EndObject()
    # SubGraphMetadata { name:0, ..., input_tensor_metadata:2, output_tensor_metadata:3 }
    sg_name, ins, outs = b.CreateString("main"), offsets([tin]), offsets([tout])
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, sg_name, 0)
    b.PrependUOffsetTRelativeSlot(2, ins, 0)
    b.PrependUOffsetTRelativeSlot(3, outs, 0)
    sg = b.EndObject()
    # ModelMetadata { name:0, description:1, version:2, subgraph_metadata:3, author:4, license:5, ...:7 }
    name, desc, ver = b.CreateString("fuzz seed"), b.CreateString("a tiny model"), b.CreateString("v1")
    author, lic, parser = b.CreateString("tests"), b.CreateString("Apache-2.0"), b.CreateString("1.0.0")
    sgs = offsets([sg])
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, desc, 0)
    b.PrependUOffsetTRelativeSlot(2, ver, 0)
    b.PrependUOffsetTRelativeSlot(3, sgs, 0)
    b.PrependUOffsetTRelativeSlot(4, author, 0)
    b.PrependUOffsetTRelativeSlot(5, lic, 0)
    b.PrependUOffsetTRelativeSlot(7, parser, 0)
    root = b.EndObject()
    b.Finish(root, file_identifier=_METADATA_ID)
    return bytes(b.Output())


def labels_zip() -> bytes:
    """The zip of associated files the metadata writer appends after the model."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("labels.txt", "\n".join(LABELS) + "\n")
    return buf.getvalue()


@lru_cache(maxsize=1)
def tflite_model() -> bytes:
    """A valid TFLite model: input f32[1,4] -> FULLY_CONNECTED(int8 weights, dequantised) -> f32[1,2]."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as s

    def tensor(name: str, shape: list[int], ttype: int, buffer: int, quant: bool = False) -> object:
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), shape, ttype, buffer
        if quant:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint = [0.05], [0]
            t.quantization = q
        return t

    weights_q = np.array([[10, -20, 30, -40], [5, 15, -25, 35]], dtype=np.int8)
    bias = np.array([0.25, -0.5], dtype=np.float32)
    buffers = []
    for data in (None, weights_q.tobytes(), bias.tobytes(), _metadata_flatbuffer(), b"1.14.0\0"):
        buf = s.BufferT()
        if data is not None:
            buf.data = list(data)
        buffers.append(buf)
    sg = s.SubGraphT()
    sg.tensors = [
        tensor("input", [1, 4], s.TensorType.FLOAT32, 0),
        tensor("weights_q", [2, 4], s.TensorType.INT8, 1, quant=True),
        tensor("weights", [2, 4], s.TensorType.FLOAT32, 0),
        tensor("bias", [2], s.TensorType.FLOAT32, 2),
        tensor("probability", [1, 2], s.TensorType.FLOAT32, 0),
    ]
    sg.inputs, sg.outputs, sg.name = [0], [4], b"main"
    codes = []
    for builtin in (s.BuiltinOperator.DEQUANTIZE, s.BuiltinOperator.FULLY_CONNECTED):
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = builtin, builtin, 1
        codes.append(oc)
    deq = s.OperatorT()
    deq.opcodeIndex, deq.inputs, deq.outputs = 0, [1], [2]
    fc = s.OperatorT()
    fc.opcodeIndex, fc.inputs, fc.outputs = 1, [0, 2, 3], [4]
    fc.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    fc.builtinOptions = s.FullyConnectedOptionsT()
    sg.operators = [deq, fc]
    model = s.ModelT()
    model.version, model.description = 3, b"replaybench fuzz seed"
    model.operatorCodes, model.subgraphs, model.buffers = codes, [sg], buffers
    meta = []
    for name, index in (("TFLITE_METADATA", 3), ("min_runtime_version", 4)):
        m = s.MetadataT()
        m.name, m.buffer = name.encode(), index
        meta.append(m)
    model.metadata = meta
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    flat = bytes(b.Output())
    return flat + b"\0" * (-len(flat) % 4) + labels_zip()


def _smali_source() -> str:
    return """.class public Lorg/example/fuzz/Main;
.super Ljava/lang/Object;

.method public static run()V
    .registers 6
    new-instance v0, Lorg/tensorflow/lite/Interpreter;
    new-instance v1, Ljava/io/File;
    const-string v2, "models/age.tflite"
    invoke-direct {v1, v2}, Ljava/io/File;-><init>(Ljava/lang/String;)V
    invoke-direct {v0, v1}, Lorg/tensorflow/lite/Interpreter;-><init>(Ljava/io/File;)V
    new-instance v0, Lorg/tensorflow/lite/support/common/ops/NormalizeOp;
    const/high16 v1, 0x42ff0000
    const/high16 v2, 0x42ff0000
    invoke-direct {v0, v1, v2}, Lorg/tensorflow/lite/support/common/ops/NormalizeOp;-><init>(FF)V
    const/4 v0, 0x0
    const/16 v1, 0xe0
    const/16 v2, 0xe0
    const/4 v3, 0x1
    invoke-static {v0, v1, v2, v3}, Landroid/graphics/Bitmap;->createScaledBitmap(Landroid/graphics/Bitmap;IIZ)Landroid/graphics/Bitmap;
    const-string v0, "tflitejni"
    invoke-static {v0}, Ljava/lang/System;->loadLibrary(Ljava/lang/String;)V
    const-string v0, "data/m.enc"
    return-void
.end method
"""


def _build_dex(out: Path) -> None:
    src = out / "smali" / "Main.smali"
    src.parent.mkdir()
    src.write_text(_smali_source())
    subprocess.run(
        ["smali", "assemble", "-o", str(out / "classes.dex"), str(src.parent)],
        check=True,
        capture_output=True,
    )


@lru_cache(maxsize=1)
def dex_file() -> bytes:
    """A real DEX (smali) whose code names TFLite, NormalizeOp, createScaledBitmap and loadLibrary."""
    return (cached_build("fuzz-dex", _build_dex) / "classes.dex").read_bytes()


@lru_cache(maxsize=2)
def elf_library(arch: str = "x86_64") -> bytes:
    """A real shared library (gcc) with the seed TFLite model in .rodata and TFLite symbols."""
    import tempfile

    from tests.fixtures.elf import build_so

    with tempfile.TemporaryDirectory() as d:
        so = build_so(
            Path(d) / "libtflitejni.so",
            arch=arch,  # type: ignore[arg-type]
            blob=tflite_model(),
            symbols=["TfLiteInterpreterCreate", "_ZN6tflite11InterpreterC1Ev"],
            strings=["tflite::", "conv2d", "softmax"],
        )
        return so.read_bytes()


def make_zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A zip of (name, data, compress_type) entries, in memory."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as z:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are wanted in generated trees
        for name, data, ctype in entries:
            z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compress_type=ctype)
    return buf.getvalue()


def apk_bytes() -> bytes:
    """An APK-shaped zip: manifest, DEX, a stored model asset, a stored native library."""
    return make_zip(
        [
            ("AndroidManifest.xml", AXML_HEAD, zipfile.ZIP_DEFLATED),
            ("classes.dex", dex_file(), zipfile.ZIP_DEFLATED),
            ("assets/models/age.tflite", tflite_model(), zipfile.ZIP_STORED),
            ("lib/x86_64/libtflitejni.so", elf_library("x86_64"), zipfile.ZIP_STORED),
        ]
    )


def obb_bytes() -> bytes:
    """An OBB expansion file: a zip holding a model."""
    return make_zip([("models/gender.tflite", tflite_model(), zipfile.ZIP_DEFLATED)])


def xapk_bytes() -> bytes:
    """An XAPK: manifest.json, a nested APK (stored) and an OBB (deflated)."""
    manifest = {"xapk_version": 2, "package_name": "org.example.fuzz", "split_apks": [{"file": "base.apk"}]}
    return make_zip(
        [
            ("manifest.json", json.dumps(manifest).encode(), zipfile.ZIP_DEFLATED),
            ("base.apk", apk_bytes(), zipfile.ZIP_STORED),
            ("Android/obb/org.example.fuzz/main.1.org.example.fuzz.obb", obb_bytes(), zipfile.ZIP_DEFLATED),
        ]
    )


def apkm_bytes() -> bytes:
    """An APKM: info.json and a deflated nested APK (spilled to a temp file when walked)."""
    return make_zip(
        [
            ("info.json", b'{"pname": "org.example.fuzz"}', zipfile.ZIP_DEFLATED),
            ("base.apk", apk_bytes(), zipfile.ZIP_DEFLATED),
        ]
    )
