"""TFLite -> ONNX with tf2onnx ``from_tflite``, after the rewrites in ``tflite_rewrite``.

- Sparse weights (DENSIFY) are densified first; MediaPipe ``Convolution2DTransposeBias`` becomes
  TRANSPOSE_CONV + ADD. The parity reference is the *original* model in ai-edge-litert, so a wrong
  rewrite fails parity; only when LiteRT cannot run the original (a custom op it lacks) is the
  rewritten model the reference, and ``Converted.reference`` / ``reference_reason`` say so.
- Any other custom op (``TFLite_Detection_PostProcess``, ...) is cut off: the ONNX graph ends at the
  custom op's inputs, recorded in ``ConversionInfo.cut_at/cut_tensors``. A custom op that TFLite cannot
  run here (so parity is impossible) is a ConversionError naming it.
- Quantised I/O is kept as the model has it (the bundle then matches what the app feeds the model).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from replaybench.bundle import QuantParams
from replaybench.errors import ConversionError, CorruptInputError
from replaybench.extract.convert import tflite_rewrite as rw
from replaybench.extract.convert.registry import Converted, ConvertOptions, SourceTensor, register_converter
from replaybench.extract.convert.tf_runtime import import_tf2onnx
from replaybench.extract.convert.tflite_runtime import make_interpreter, runtime_name

log = logging.getLogger(__name__)

# Custom ops tf2onnx has a handler for, that we still cut before: the ONNX detection post-process is
# an NMS re-implementation whose output order and tie-breaking differ from TFLite's, so it cannot pass
# parity, and replay decodes raw boxes and scores itself.
CUT_EVEN_IF_HANDLED = {"TFLite_Detection_PostProcess"}


def _tensor_quant(t: Any) -> QuantParams | None:
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) != 1 or q.zeroPoint is None or len(q.zeroPoint) != 1:
        return None
    if float(q.scale[0]) == 0.0:
        return None
    return QuantParams(scale=float(q.scale[0]), zero_point=int(q.zeroPoint[0]))


_NP_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8"}


def _model_kind(model: Any) -> str:
    sg = model.subgraphs[0]
    in_types = {sg.tensors[i].type for i in sg.inputs}
    if in_types & {3, 9}:  # uint8 / int8 input: full integer model
        return "quantized"
    types = {t.type for t in sg.tensors}
    ops = {rw.op_name(model, op) for op in sg.operators}
    const_int8 = any(t.type == 9 and t.buffer > 0 for t in sg.tensors)
    if const_int8:
        return "dynamic"
    if 1 in types and "DEQUANTIZE" in ops:
        return "fp16"
    return "float"


def _read_model(path: Path) -> tuple[bytes, Any]:
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise CorruptInputError(f"{path} is not a TFLite model (no TFL3 identifier)")
    try:
        model = rw.read(data)
        if not model.subgraphs:
            raise ValueError("no subgraphs")
        sg = model.subgraphs[0]
        for t in sg.tensors:  # touch the buffers: a truncated file fails here, not deep in tf2onnx
            if t.buffer >= len(model.buffers):
                raise ValueError(f"tensor {t.name!r} refers to a missing buffer")
    except CorruptInputError:
        raise
    except Exception as e:
        raise CorruptInputError(
            f"{path} is a truncated or malformed TFLite model: {type(e).__name__}: {e}"
        ) from e
    return data, model


def _downstream(model: Any, start_ops: list[Any]) -> set[int]:
    """Tensor indices computed from the outputs of ``start_ops``."""
    sg = model.subgraphs[0]
    tainted: set[int] = set()
    for op in start_ops:
        tainted.update(int(i) for i in op.outputs)
    changed = True
    while changed:
        changed = False
        for op in sg.operators:
            if any(int(i) in tainted for i in op.inputs if i >= 0):
                new = {int(i) for i in op.outputs} - tainted
                if new:
                    tainted |= new
                    changed = True
    return tainted


@register_converter("tflite")
def convert_tflite(path: Path, opts: ConvertOptions) -> Converted:
    """Convert a TFLite flatbuffer (float, fp16, dynamic-range, full-integer; sparse; custom ops)."""
    data, model = _read_model(path)
    tf2onnx = import_tf2onnx()
    sg = model.subgraphs[0]
    if len(model.subgraphs) > 1:
        log.info("%s has %d subgraphs; converting the main one", path, len(model.subgraphs))
    notes: list[str] = []
    kind = _model_kind(model)
    from replaybench.extract.tflite import read_metadata

    meta = read_metadata(data)
    notes += meta.notes

    densified = rw.densify(model)
    if densified:
        notes.append(f"densified {len(densified)} sparse weight tensor(s) (DENSIFY) before conversion")
    handled: list[str] = []
    for name, handler in rw.CUSTOM_OP_HANDLERS.items():
        n = handler(model)
        if n:
            handled.append(name)
            notes.append(f"rewrote {n} custom {name} op(s) to builtin TFLite ops before conversion")
    rewrites = ([f"densified {len(densified)} sparse tensor(s)"] if densified else []) + [
        f"rewrote {name}" for name in handled
    ]
    conv_bytes = rw.to_bytes(model) if rewrites else data

    custom_ops = [op for op in sg.operators if _is_custom(model, op)]
    custom_names = sorted({rw.op_name(model, op) for op in custom_ops})
    cut_names: list[str] = []
    cut_tensors: list[str] = []
    output_idx = [int(i) for i in sg.outputs]
    if custom_ops:
        cut_names = custom_names
        tainted = _downstream(model, custom_ops)
        const = {
            i for i, t in enumerate(sg.tensors) if t.buffer > 0 and model.buffers[t.buffer].data is not None
        }
        cut_idx: list[int] = []
        for op in custom_ops:
            for i in op.inputs:
                if i >= 0 and int(i) not in tainted and int(i) not in const and int(i) not in cut_idx:
                    cut_idx.append(int(i))
        kept = [i for i in output_idx if i not in tainted]
        output_idx = kept + [i for i in cut_idx if i not in kept]
        cut_tensors = [_tname(sg.tensors[i]) for i in cut_idx]
        if not output_idx:
            raise ConversionError(f"custom op(s) {', '.join(custom_names)} leave nothing to convert")

    interp, reference_runtime, reference, reference_reason = _reference_interpreter(
        data,
        conv_bytes,
        rewrites,
        sparse=bool(densified),
        preserve=bool(custom_ops),
        custom_names=custom_names,
    )
    with tempfile.TemporaryDirectory(prefix="replaybench-tflite-") as tmp:
        src = Path(tmp) / "model.tflite"
        src.write_bytes(conv_bytes)
        out_names = [_tname(sg.tensors[i]) for i in output_idx] if custom_ops else None
        try:
            onnx_model, _ = tf2onnx.convert.from_tflite(str(src), opset=opts.opset, output_names=out_names)
        except Exception as e:
            raise ConversionError(f"tf2onnx could not convert {path.name}: {type(e).__name__}: {e}") from e
    leftover = sorted(
        {
            n.op_type
            for n in onnx_model.graph.node
            if n.op_type.startswith("TFL_") or n.domain not in ("", "ai.onnx")
        }
    )
    if leftover:
        raise ConversionError(f"ops left unconverted in the ONNX graph: {', '.join(leftover)}")

    in_t = [_source_tensor(sg.tensors[int(i)]) for i in sg.inputs]
    out_t = [_source_tensor(sg.tensors[i]) for i in output_idx]
    in_details = interp.get_input_details()

    def run_source(arrays: list[np.ndarray]) -> list[np.ndarray]:
        for d, a in zip(in_details, arrays, strict=True):
            if tuple(d["shape"]) != a.shape:
                interp.resize_tensor_input(d["index"], a.shape)
                interp.allocate_tensors()
            interp.set_tensor(d["index"], a)
        interp.invoke()
        return [np.array(interp.get_tensor(i)) for i in output_idx]

    if custom_ops:
        notes.append(
            f"graph cut before custom op(s) {', '.join(custom_names)}: the ONNX outputs are their inputs "
            f"({', '.join(cut_tensors)}); decode them in post-processing"
        )
    return Converted(
        onnx_model=onnx_model,
        converter="tf2onnx.from_tflite",
        converter_version=getattr(tf2onnx, "__version__", None),
        reference_runtime=reference_runtime,
        reference=reference,
        reference_reason=reference_reason,
        run_source=run_source,
        inputs=in_t,
        outputs=out_t,
        kind=kind,
        cut_at=cut_names,
        cut_tensors=cut_tensors,
        notes=notes,
        metadata={"mean": meta.mean, "std": meta.std, "labels": meta.labels},
    )


def _reference_interpreter(
    original: bytes,
    rewritten: bytes,
    rewrites: list[str],
    *,
    sparse: bool,
    preserve: bool,
    custom_names: list[str],
) -> tuple[Any, str, Literal["original", "rewritten"], str | None]:
    """The interpreter parity compares against: the original model whenever LiteRT runs it, else the
    rewritten one (with the reason). Returns (interpreter, runtime description, "original" |
    "rewritten", reason).

    The original is tried with XNNPACK (what apps get by default) and with TFLite's builtin kernels
    only. The builtin kernels come first for a model with sparse tensors (XNNPACK mishandles some
    sparse constants, see ``make_interpreter``); XNNPACK is what runs MediaPipe's
    Convolution2DTransposeBias, which the builtin kernels lack. A cut graph reads its cut tensors from
    the interpreter: they are the inputs of a custom op XNNPACK does not take, so they are always
    written (a tensor inside an XNNPACK partition is not, which is why DENSIFY outputs cannot be read).
    """
    name = runtime_name()
    tries = [False, True] if sparse else [True, False]
    original_error: ConversionError | None = None
    for delegates in tries:
        try:
            interp = make_interpreter(original, preserve_all_tensors=preserve, default_delegates=delegates)
        except ConversionError as e:
            original_error = original_error or e
            continue
        return interp, name + ("" if delegates else " (builtin kernels)"), "original", None
    assert original_error is not None
    if rewrites:
        try:
            interp = make_interpreter(rewritten, preserve_all_tensors=preserve)
        except ConversionError:
            pass
        else:
            why = " ".join(original_error.message.split())[:300]
            reason = (
                f"{name} cannot run the original model ({why}); parity is measured against the model "
                f"after: {'; '.join(rewrites)}"
            )
            return interp, name, "rewritten", reason
    if custom_names:
        raise ConversionError(
            f"custom op(s) {', '.join(custom_names)} have no converter and this TFLite runtime cannot "
            f"run them, so the model cannot be converted and validated",
            hint="only MediaPipe Convolution2DTransposeBias has a handler; others are cut when TFLite runs them",
        ) from original_error
    raise original_error


def _is_custom(model: Any, op: Any) -> bool:
    code = model.operatorCodes[op.opcodeIndex]
    if max(code.builtinCode, code.deprecatedBuiltinCode) != rw.CUSTOM:
        return False
    name = rw.op_name(model, op)
    return not name.startswith("Flex") or name in CUT_EVEN_IF_HANDLED


def _tname(t: Any) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def _source_tensor(t: Any) -> SourceTensor:
    sig = t.shapeSignature if t.shapeSignature is not None and len(t.shapeSignature) else t.shape
    shape: list[int | str | None] = [None if int(d) < 0 else int(d) for d in (sig if sig is not None else [])]
    return SourceTensor(
        name=_tname(t),
        shape=shape,
        dtype=_NP_TYPES.get(int(t.type), str(t.type)),
        quantization=_tensor_quant(t),
    )
