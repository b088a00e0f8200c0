"""Rewrites of a TFLite flatbuffer that make it convertible: densify sparse weights, replace MediaPipe
custom ops with builtin equivalents.

Both work on TensorFlow's flatbuffer object API (``tensorflow.lite.tools.flatbuffer_utils``); the
rewritten model is still a TFLite model, so the TFLite interpreter validates each rewrite during parity.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from replaybench.errors import ConversionError

# Builtin operator codes (tensorflow/lite/schema/schema.fbs).
DENSIFY = 124
TRANSPOSE_CONV = 67
ADD = 0
CUSTOM = 32
# TensorType
INT32 = 2


def op_name(model: Any, op: Any) -> str:
    """The operator's name: the builtin name, or the custom code for CUSTOM ops."""
    from tensorflow.lite.python import schema_py_generated as schema

    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == CUSTOM:
        cc = code.customCode
        return cc.decode() if isinstance(cc, bytes) else str(cc)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return names.get(builtin, str(builtin))


def _builtin(model: Any, op: Any) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return int(max(code.builtinCode, code.deprecatedBuiltinCode))


def _opcode_index(model: Any, builtin: int, version: int = 1) -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and code.version == version:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _add_buffer(model: Any, data: bytes) -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    buf = schema.BufferT()
    buf.data = np.frombuffer(data, dtype=np.uint8).copy()
    model.buffers.append(buf)
    return len(model.buffers) - 1


def densify(model: Any, model_bytes: bytes) -> list[str]:
    """Replace every DENSIFY op by the dense constant it produces. Returns the densified tensor names.

    The dense values come from the TFLite interpreter itself (it densifies constants while preparing),
    so the sparse encodings (block / CSR) need no reimplementation here.
    """
    sg = model.subgraphs[0]
    dens = [op for op in sg.operators if _builtin(model, op) == DENSIFY]
    if not dens:
        return []
    from replaybench.extract.convert.tflite_runtime import make_interpreter

    interp = make_interpreter(model_bytes, preserve_all_tensors=True)
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
    interp.invoke()
    names = []
    for op in dens:
        out_idx, in_idx = op.outputs[0], op.inputs[0]
        try:
            value = np.asarray(interp.get_tensor(out_idx))
        except ValueError as e:
            raise ConversionError(f"cannot densify tensor {sg.tensors[out_idx].name!r}: {e}") from e
        buf = _add_buffer(model, np.ascontiguousarray(value).tobytes())
        for idx in (out_idx, in_idx):  # the sparse input becomes dense too, so nothing reads a sparse buffer
            sg.tensors[idx].buffer = buf
            sg.tensors[idx].sparsity = None
        names.append(_name(sg.tensors[out_idx]))
    sg.operators = [op for op in sg.operators if _builtin(model, op) != DENSIFY]
    return names


def _name(t: Any) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def rewrite_transpose_conv_bias(model: Any) -> int:
    """MediaPipe ``Convolution2DTransposeBias`` -> builtin TRANSPOSE_CONV + ADD(bias). Returns the count.

    MediaPipe's kernel (mediapipe/util/tflite/operations/transpose_conv_bias.cc) takes (input,
    weights OHWI, bias) and reads its options as a raw ``TfLiteTransposeConvParams`` struct:
    int32 padding (1 SAME, 2 VALID), int32 stride_width, int32 stride_height.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    sg = model.subgraphs[0]
    count = 0
    new_ops = []
    for op in sg.operators:
        if op_name(model, op) != "Convolution2DTransposeBias":
            new_ops.append(op)
            continue
        raw = bytes(op.customOptions) if op.customOptions is not None else b""
        if len(raw) < 12:
            raise ConversionError("Convolution2DTransposeBias has no readable options (expected 12 bytes)")
        padding, stride_w, stride_h = struct.unpack("<iii", raw[:12])
        x, w, b = op.inputs[0], op.inputs[1], op.inputs[2]
        y = op.outputs[0]
        out_t = sg.tensors[y]
        # output_shape operand of TRANSPOSE_CONV
        shape_t = schema.TensorT()
        shape_t.shape = np.array([4], dtype=np.int32)
        shape_t.type = INT32
        shape_t.name = _name(out_t) + "/output_shape"
        shape_t.buffer = _add_buffer(model, np.asarray(out_t.shape, dtype=np.int32).tobytes())
        sg.tensors.append(shape_t)
        shape_idx = len(sg.tensors) - 1
        mid = schema.TensorT()
        mid.shape = np.asarray(out_t.shape, dtype=np.int32)
        mid.type = out_t.type
        mid.name = _name(out_t) + "/no_bias"
        mid.buffer = 0
        sg.tensors.append(mid)
        mid_idx = len(sg.tensors) - 1

        tc = schema.OperatorT()
        tc.opcodeIndex = _opcode_index(model, TRANSPOSE_CONV, 1)
        tc.inputs = np.array([shape_idx, w, x], dtype=np.int32)
        tc.outputs = np.array([mid_idx], dtype=np.int32)
        opts = schema.TransposeConvOptionsT()
        opts.padding = 0 if padding == 1 else 1  # schema Padding: SAME=0, VALID=1
        opts.strideW, opts.strideH = stride_w, stride_h
        tc.builtinOptionsType = schema.BuiltinOptions.TransposeConvOptions
        tc.builtinOptions = opts
        add = schema.OperatorT()
        add.opcodeIndex = _opcode_index(model, ADD, 1)
        add.inputs = np.array([mid_idx, b], dtype=np.int32)
        add.outputs = np.array([y], dtype=np.int32)
        add.builtinOptionsType = schema.BuiltinOptions.AddOptions
        add.builtinOptions = schema.AddOptionsT()
        new_ops += [tc, add]
        count += 1
    sg.operators = new_ops
    return count


# MediaPipe custom ops with a rewrite above; everything else custom is cut or refused.
CUSTOM_OP_HANDLERS = {"Convolution2DTransposeBias": rewrite_transpose_conv_bias}


def to_bytes(model: Any) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read(model_bytes: bytes) -> Any:
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
