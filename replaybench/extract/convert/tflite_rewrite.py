"""Rewrites of a TFLite flatbuffer that make it convertible: densify sparse weights, replace MediaPipe
custom ops with builtin equivalents.

Both work on TensorFlow's flatbuffer object API (``tensorflow.lite.tools.flatbuffer_utils``). The
rewritten model is only converted, never the parity reference while the original runs here: parity
compares the ONNX model with the original model, so a wrong rewrite fails parity.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
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


# Tensor types the sparse constants of TFLite models use (schema TensorType -> numpy).
_SPARSE_VALUE_TYPES = {0: np.float32, 1: np.float16, 9: np.int8, 3: np.uint8, 2: np.int32, 7: np.int16}
# DimensionType (schema.fbs)
DIM_DENSE = 0
DIM_SPARSE_CSR = 1
# SparseIndexVector union: which vector type holds array_segments / array_indices
_INDEX_VECTOR_TYPES = {1: np.int32, 2: np.uint16, 3: np.uint8}
# A sparse tensor claiming more dense elements than this is refused (untrusted models: no huge allocations).
MAX_DENSE_ELEMENTS = 1 << 28


def _index_vector(kind: int, vec: Any, what: str) -> np.ndarray:
    if kind not in _INDEX_VECTOR_TYPES or vec is None or vec.values is None:
        raise ConversionError(f"sparse tensor: {what} has no index vector (SparseIndexVector type {kind})")
    return np.asarray(vec.values, dtype=_INDEX_VECTOR_TYPES[kind]).astype(np.int64)


def sparse_to_dense(values: np.ndarray, shape: Sequence[int], sparsity: Any) -> np.ndarray:
    """The dense tensor a TFLite ``SparsityParameters`` encoding stores (the semantics of TFLite's
    ``FormatConverter::SparseToDense``, tensorflow/lite/kernels/internal/utils/sparsity_format_converter.cc).

    ``dim_metadata`` has one level per traversed dimension: the tensor's dimensions in
    ``traversal_order`` (block dimensions count in blocks), then one level per ``block_map`` entry (the
    position inside a block of that original dimension). A DENSE level has ``dense_size`` entries; a
    SPARSE_CSR level holds, for each position of the levels before it, the range
    ``array_segments[p]:array_segments[p + 1]`` of ``array_indices``. ``values`` are stored in that
    traversal order. A malformed encoding (untrusted model) is a ConversionError, never a wrong tensor.
    """
    shape = [int(d) for d in shape]
    rank = len(shape)
    if any(d < 0 for d in shape):
        raise ConversionError(f"sparse tensor with a dynamic shape {shape}")
    dense_size = math.prod(shape)  # Python ints: a forged shape cannot overflow the size check
    if dense_size > MAX_DENSE_ELEMENTS:
        raise ConversionError(f"sparse tensor of shape {shape} is too large to densify")
    order = [int(i) for i in (sparsity.traversalOrder if sparsity.traversalOrder is not None else [])]
    block_map = [int(i) for i in (sparsity.blockMap if sparsity.blockMap is not None else [])]
    levels = list(sparsity.dimMetadata or [])
    n_levels = rank + len(block_map)
    if len(order) != n_levels or len(levels) != n_levels:
        raise ConversionError(
            f"sparse tensor of rank {rank} with {len(block_map)} block dimension(s) has "
            f"{len(order)} traversal entries and {len(levels)} dimension metadata levels"
        )
    if sorted(order[:rank]) != list(range(rank)) or sorted(order[rank:]) != list(range(rank, n_levels)):
        raise ConversionError(f"unsupported sparse traversal order {order}")
    if block_map != sorted(set(block_map)) or any(not 0 <= d < rank for d in block_map):
        raise ConversionError(f"unsupported sparse block map {block_map}")
    # Block sizes as TFLite reads them: the dense size of the level named by traversal_order[rank + k].
    block_size = [int(levels[order[rank + k]].denseSize) for k in range(len(block_map))]
    for k, d in enumerate(block_map):
        if levels[rank + k].format != DIM_DENSE or block_size[k] <= 0 or shape[d] % block_size[k]:
            raise ConversionError(f"sparse block {block_size[k]} does not tile dimension {d} of {shape}")

    # Walk the levels breadth-first: one row per partial path, its position (TFLite's prev_idx) and
    # the coordinate chosen at every level so far.
    pos = np.zeros(1, dtype=np.int64)
    coords: list[np.ndarray] = []
    for lvl, dm in enumerate(levels):
        if dm.format == DIM_DENSE:
            n = int(dm.denseSize)
            if n < 0 or pos.size * n > dense_size:
                raise ConversionError(f"sparse tensor level {lvl} has a bad dense size {n}")
            coords = [np.repeat(c, n) for c in coords]
            coords.append(np.tile(np.arange(n, dtype=np.int64), pos.size))
            pos = (pos[:, None] * n + np.arange(n, dtype=np.int64)[None, :]).reshape(-1)
        elif dm.format == DIM_SPARSE_CSR:
            seg = _index_vector(dm.arraySegmentsType, dm.arraySegments, f"level {lvl} array_segments")
            idx = _index_vector(dm.arrayIndicesType, dm.arrayIndices, f"level {lvl} array_indices")
            if pos.size and int(pos.max()) + 1 >= seg.size:
                raise ConversionError(f"sparse tensor level {lvl}: array_segments too short")
            start, end = seg[pos], seg[pos + 1]
            counts = end - start
            if (counts < 0).any() or (start < 0).any() or (end > idx.size).any():
                raise ConversionError(f"sparse tensor level {lvl}: array_segments out of order or range")
            total = int(counts.sum())
            if total > dense_size:
                raise ConversionError(f"sparse tensor level {lvl} lists more entries than the tensor holds")
            rows = np.repeat(np.arange(pos.size), counts)
            within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            pos = start[rows] + within
            coords = [c[rows] for c in coords]
            coords.append(idx[pos])
        else:
            raise ConversionError(f"sparse tensor level {lvl} has unknown dimension type {dm.format}")
    if pos.size != values.size:
        raise ConversionError(
            f"sparse tensor stores {values.size} values; its sparsity metadata addresses {pos.size}"
        )
    orig = [np.zeros(pos.size, dtype=np.int64) for _ in range(rank)]
    for lvl in range(rank):
        orig[order[lvl]] = coords[lvl]
    for lvl in range(rank, n_levels):
        k = order[lvl] - rank
        d = block_map[k]
        orig[d] = orig[d] * block_size[k] + coords[lvl]
    for d in range(rank):
        if orig[d].size and (orig[d].min() < 0 or orig[d].max() >= shape[d]):
            raise ConversionError(f"sparse tensor index out of range in dimension {d} of {shape}")
    dense = np.zeros(dense_size, dtype=values.dtype)
    if rank:
        dense[np.ravel_multi_index(orig, shape)] = values
    else:
        dense[:] = values
    return dense.reshape(shape)


def densify(model: Any) -> list[str]:
    """Replace every sparse constant by the dense tensor it encodes and drop the DENSIFY ops that
    read them (their outputs become those constants). Returns the densified tensor names.

    The dense values are decoded here from the flatbuffer (``sparse_to_dense``), never read back
    from an interpreter: intermediate tensors of a delegated graph (XNNPACK densifies fp16 weights
    itself) are not the values the model computes with. Parity then compares the converted model
    with the *original* sparse model, so a wrong decoding cannot pass.
    """
    sg = model.subgraphs[0]
    sparse = [i for i, t in enumerate(sg.tensors) if t.sparsity is not None]
    dens = [op for op in sg.operators if _builtin(model, op) == DENSIFY]
    if not sparse and not dens:
        return []
    dense_buf: dict[int, int] = {}
    for i in sparse:
        t = sg.tensors[i]
        buf = model.buffers[t.buffer] if 0 < t.buffer < len(model.buffers) else None
        if buf is None or buf.data is None:
            raise ConversionError(f"sparse tensor {_name(t)!r} has no constant data to densify")
        if int(t.type) not in _SPARSE_VALUE_TYPES:
            raise ConversionError(f"sparse tensor {_name(t)!r} has unsupported type {t.type}")
        dtype = np.dtype(_SPARSE_VALUE_TYPES[int(t.type)]).newbyteorder("<")
        raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
        if len(raw) % dtype.itemsize:
            raise ConversionError(f"sparse tensor {_name(t)!r}: buffer size is not a multiple of its type")
        values = np.frombuffer(raw, dtype=dtype)
        shape = [int(d) for d in (t.shape if t.shape is not None else [])]
        dense = sparse_to_dense(values, shape, t.sparsity)
        dense_buf[i] = _add_buffer(model, np.ascontiguousarray(dense, dtype=dtype).tobytes())
        t.buffer = dense_buf[i]
        t.sparsity = None
    names = [_name(sg.tensors[i]) for i in sparse]
    for op in dens:
        in_idx, out_idx = int(op.inputs[0]), int(op.outputs[0])
        if in_idx not in dense_buf:
            raise ConversionError(
                f"DENSIFY of tensor {_name(sg.tensors[in_idx])!r}, which is not a sparse constant"
            )
        sg.tensors[out_idx].buffer = dense_buf[in_idx]
        sg.tensors[out_idx].sparsity = None
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
