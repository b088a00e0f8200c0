"""DEX code evidence (androguard): ML API uses, loaded libraries, model file names, preprocessing constants.

Kept to the ML-relevant part on purpose (real apps carry 100+ MB of DEX): a DEX whose string table
names no ML API and no model-like file is not disassembled at all; otherwise each method is walked once
with a tiny constant tracker (``const*`` into registers) so constant arguments of preprocessing calls
(``new NormalizeOp(127.5f, 127.5f)``, ``createScaledBitmap(b, 224, 224, true)``) are read statically.
Obfuscated names are fine: what is found is reported with its class and method.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from replaybench.extract.inventory import CodeReference

# Class-name prefixes (DEX descriptors) of ML APIs, and the framework each belongs to.
ML_APIS: dict[str, str] = {
    "Lorg/tensorflow/lite/": "tflite",
    "Lcom/google/android/gms/tflite/": "tflite",
    "Lorg/tensorflow/contrib/android/": "tensorflow_mobile",
    "Lorg/pytorch/": "pytorch_mobile",
    "Lai/onnxruntime/": "onnxruntime",
    "Lcom/google/mlkit/": "mlkit",
    "Lcom/google/firebase/ml/": "mlkit",
    "Lcom/google/android/gms/vision/": "mlkit",
    "Lcom/google/mediapipe/": "mediapipe",
    "Lcom/tencent/ncnn/": "ncnn",
    "Lcom/taobao/android/mnn/": "mnn",
    "Lcom/alibaba/android/mnn/": "mnn",
    "Lcom/baidu/paddle/lite/": "paddle_lite",
    "Lcom/qualcomm/qti/snpe/": "snpe",
    "Lorg/opencv/dnn/": "opencv_dnn",
    "Landroid/hardware/neuralnetworks/": "nnapi",
}
# Calls whose constant arguments describe preprocessing: (class, method) -> the parameters read.
PREPROCESS_CALLS: dict[tuple[str, str], str] = {
    ("Lorg/tensorflow/lite/support/common/ops/NormalizeOp;", "<init>"): "NormalizeOp(mean, std)",
    ("Lorg/tensorflow/lite/support/image/ops/ResizeOp;", "<init>"): "ResizeOp(height, width, method)",
    (
        "Lorg/tensorflow/lite/support/image/ops/ResizeWithCropOrPadOp;",
        "<init>",
    ): "ResizeWithCropOrPadOp(h, w)",
    ("Landroid/graphics/Bitmap;", "createScaledBitmap"): "createScaledBitmap(src, width, height, filter)",
    ("Lorg/pytorch/torchvision/TensorImageUtils;", "bitmapToFloat32Tensor"): "bitmapToFloat32Tensor(...)",
}
MODEL_FILE = re.compile(
    r"^[\w\-./]{1,200}\.(tflite|lite|onnx|ort|pt|ptl|pth|torchscript|param|mnn|nb|dlc|pb|caffemodel|"
    r"prototxt|mlmodel|tfl|model|bin)$",
    re.IGNORECASE,
)
LOAD_LIBRARY = ("Ljava/lang/System;", "loadLibrary")


def _float_args(desc: str) -> list[str]:
    """Parameter type letters of a method descriptor ``(FFI)V`` -> ['F','F','I'] (objects as 'L')."""
    params = desc[desc.index("(") + 1 : desc.index(")")].replace(" ", "")
    out = []
    i = 0
    while i < len(params):
        c = params[i]
        if c == "L":
            i = params.index(";", i)
            out.append("L")
        elif c == "[":
            while params[i] == "[":
                i += 1
            if params[i] == "L":
                i = params.index(";", i)
            out.append("L")
        else:
            out.append(c)
        i += 1
    return out


def _typed(value: int | str | None, kind: str) -> float | int | bool | str | None:
    if value is None or isinstance(value, str):
        return value
    if kind == "F":
        return round(struct.unpack("<f", struct.pack("<I", value & 0xFFFFFFFF))[0], 6)
    if kind == "Z":
        return bool(value)
    return value


def quiet_androguard() -> None:
    """androguard logs every parsed item at DEBUG through loguru (its dependency): silence it."""
    from loguru import logger  # androguard's own dependency

    logger.disable("androguard")


def dex_strings(data: bytes, dex_name: str = "classes.dex") -> list[str]:
    """The DEX string table (string_ids -> MUTF-8 data), read directly: milliseconds, not seconds.

    Decoded as UTF-8: MUTF-8 surrogate pairs become replacement characters, which is harmless here
    (every marker searched for is ASCII).

    Raises ValueError when the header or an offset is out of bounds.
    """
    if data[:4] != b"dex\n" or len(data) < 0x70:
        raise ValueError(f"{dex_name} is not a DEX file")
    n, off = struct.unpack_from("<II", data, 0x38)
    if off + 4 * n > len(data):
        raise ValueError(f"{dex_name}: string table runs past the end of the file")
    out = []
    for o in struct.unpack_from(f"<{n}I", data, off):
        while o < len(data) and data[o] & 0x80:  # skip the uleb128 utf16 length
            o += 1
        end = data.find(b"\0", o + 1)
        if end < 0:
            raise ValueError(f"{dex_name}: unterminated string at {o}")
        out.append(data[o + 1 : end].decode("utf-8", "replace"))
    return out


def has_ml_markers(strings: list[str]) -> bool:
    """Whether a DEX string table names any ML API or model-like file (else nothing to disassemble)."""
    return any(s.startswith(tuple(ML_APIS)) or MODEL_FILE.match(s) for s in strings)


FILE_LIKE = re.compile(r"^[\w\-./]{1,200}\.[A-Za-z0-9]{1,10}$")


def analyze_dex(data: bytes, dex_name: str) -> tuple[list[CodeReference], set[str]]:
    """Code references to ML APIs in one DEX file, and every file-name-like string of its string table
    (to tie blobs with unusual names, e.g. an encrypted ``m.enc``, to the code).

    Raises ValueError for a DEX androguard rejects.
    """
    # The string table alone decides whether androguard (seconds per MB: it parses every item) runs.
    strings = dex_strings(data, dex_name)
    file_names = {s for s in strings if FILE_LIKE.match(s)}
    if not has_ml_markers(strings):
        return [], file_names
    quiet_androguard()  # androguard logs every parsed item at DEBUG through loguru
    from androguard.core.dex import DEX

    try:
        dex = DEX(data)
    except Exception as e:  # androguard raises bare exceptions on malformed DEX
        raise ValueError(f"androguard could not parse {dex_name}: {e}") from e
    refs: list[CodeReference] = []
    seen: set[tuple[Any, ...]] = set()

    def add(ref: CodeReference) -> None:
        key = (ref.kind, ref.api, ref.class_name, ref.method, ref.value, tuple(map(str, ref.args)))
        if key not in seen:
            seen.add(key)
            refs.append(ref)

    for cls in dex.get_classes():
        cname = cls.get_name()
        for m in cls.get_methods():
            regs: dict[str, int | str] = {}
            mname = f"{m.get_name()}{m.get_descriptor()}".replace(" ", "")
            for ins in m.get_instructions():
                op = ins.get_name()
                out = ins.get_output()
                if op.startswith("const"):
                    reg = out.split(",", 1)[0].strip()
                    if op.startswith("const-string"):
                        value = out.split(",", 1)[1].strip().strip('"')
                        regs[reg] = value
                        if MODEL_FILE.match(value):
                            add(CodeReference(kind="file_name", api="const-string", class_name=cname,
                                              method=mname, dex=dex_name, value=value))  # fmt: skip
                    elif op.startswith("const-class"):
                        regs.pop(reg, None)
                    else:
                        lits = ins.get_literals()
                        if lits:
                            regs[reg] = int(lits[0])
                    continue
                if op.startswith("move-result") or op.startswith("move"):
                    regs.pop(out.split(",", 1)[0].strip(), None)
                    continue
                ref_target = out.rsplit(", ", 1)[-1] if "," in out else out
                if op.startswith(("new-instance", "invoke", "sget", "sput", "iget", "iput", "check-cast")):
                    owner = ref_target.split("->", 1)[0]
                    framework = next((fw for p, fw in ML_APIS.items() if owner.startswith(p)), None)
                    if framework is not None and op.startswith(("new-instance", "invoke")):
                        api = ref_target.split("(", 1)[0] if "->" in ref_target else owner
                        add(CodeReference(kind="api", api=api, class_name=cname, method=mname,
                                          dex=dex_name, value=framework))  # fmt: skip
                if op.startswith("invoke") and "->" in ref_target:
                    owner, rest = ref_target.split("->", 1)
                    meth = rest.split("(", 1)[0]
                    args = _registers(out, op)
                    kinds = _float_args(rest)
                    if op.startswith("invoke-static") is False:
                        args = args[1:]  # drop `this`
                    values = [regs.get(a) for a in args]
                    if (owner, meth) == LOAD_LIBRARY and values and isinstance(values[0], str):
                        add(CodeReference(kind="load_library", api="System.loadLibrary", class_name=cname,
                                          method=mname, dex=dex_name, value=values[0]))  # fmt: skip
                    label = PREPROCESS_CALLS.get((owner, meth))
                    if label is not None:
                        typed = [_typed(v, k) for v, k in zip(values, _wide(kinds), strict=False)]
                        add(CodeReference(kind="preprocess_arg", api=f"{owner}->{meth}", class_name=cname,
                                          method=mname, dex=dex_name, value=label, args=typed))  # fmt: skip
    return refs, file_names


def _wide(kinds: list[str]) -> list[str]:
    """Registers per parameter: long/double take two (the second is padding here)."""
    out = []
    for k in kinds:
        out.append(k)
        if k in ("J", "D"):
            out.append("-")
    return out


def _registers(out: str, op: str) -> list[str]:
    head = out.rsplit(", ", 1)[0] if ", L" in out or ", [" in out else ""
    if "/range" in op:
        m = re.match(r"v(\d+)\s*\.\.\.\s*v(\d+)", head)
        if m:
            return [f"v{i}" for i in range(int(m.group(1)), int(m.group(2)) + 1)]
        return [t.strip() for t in head.split(",") if t.strip().startswith("v")]
    return [t.strip() for t in head.split(",") if t.strip().startswith("v")]
