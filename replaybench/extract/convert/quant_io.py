"""Float I/O for quantised models: wrap the ONNX graph in QuantizeLinear / DequantizeLinear.

By default a bundle keeps the model's own integer I/O (it then takes exactly what the app feeds the
model). With ``keep_quantized_io=False`` the bundle takes and returns real values instead; the source
runner is wrapped the same way, so parity still compares like with like.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from replaybench.extract.convert.registry import Converted, SourceTensor

_INT_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}
_ONNX_TYPE = {"uint8": 2, "int8": 3}


def _rename_uses(graph, old: str, new: str) -> None:  # type: ignore[no-untyped-def]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def _float_boundary(g: Any, vi: Any, src: SourceTensor, quantize: bool) -> tuple[SourceTensor, Any]:
    """Make graph input/output ``vi`` float32 when its source tensor is quantised: the tensor inside the
    graph is renamed ``<name>__quantized`` and a QuantizeLinear (inputs, ``quantize``) or
    DequantizeLinear (outputs) with the source's scale and zero point joins it to ``vi``. Returns the
    new tensor description and the node (None when the tensor is not quantised)."""
    from onnx import TensorProto, helper, numpy_helper

    q = src.quantization
    if q is None or src.dtype not in _ONNX_TYPE:
        return src, None
    inner = vi.name + "__quantized"
    _rename_uses(g, vi.name, inner)
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(q.scale, dtype=np.float32), inner + "_scale"),
            numpy_helper.from_array(np.array(q.zero_point, dtype=src.dtype), inner + "_zp"),
        ]
    )
    qparams = [inner + "_scale", inner + "_zp"]
    if quantize:
        node = helper.make_node("QuantizeLinear", [vi.name, *qparams], [inner])
    else:
        node = helper.make_node("DequantizeLinear", [inner, *qparams], [vi.name])
    vi.type.tensor_type.elem_type = TensorProto.FLOAT
    return dataclasses.replace(src, dtype="float32", quantized_dtype=src.dtype), node


def dequantize_io(converted: Converted) -> Converted:
    """Return ``converted`` with float32 inputs/outputs wherever the source tensor is quantised."""

    model = converted.onnx_model
    g = model.graph
    init = {i.name for i in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in init]
    ins = [_float_boundary(g, vi, converted.inputs[k], True) for k, vi in enumerate(graph_inputs)]
    outs = [_float_boundary(g, vo, converted.outputs[k], False) for k, vo in enumerate(g.output)]
    new_inputs = [t for t, _ in ins]
    new_outputs = [t for t, _ in outs]
    nodes = [n for _, n in ins if n is not None]
    tail = [n for _, n in outs if n is not None]
    all_nodes = nodes + list(g.node) + tail
    del g.node[:]
    g.node.extend(all_nodes)

    run = converted.run_source
    in_src, out_src = converted.inputs, converted.outputs

    def run_source(arrays: list[np.ndarray]) -> list[np.ndarray]:
        assert run is not None
        fed = []
        for a, s in zip(arrays, in_src, strict=True):
            if s.quantization is not None and s.dtype in _INT_RANGE:
                lo, hi = _INT_RANGE[s.dtype]
                qa = np.clip(np.rint(a / s.quantization.scale) + s.quantization.zero_point, lo, hi)
                fed.append(qa.astype(s.dtype))
            else:
                fed.append(a)
        outs = run(fed)
        res = []
        for o, s in zip(outs, out_src, strict=False):
            if s.quantization is not None and s.dtype in _INT_RANGE:
                res.append(
                    ((o.astype(np.float32) - s.quantization.zero_point) * s.quantization.scale).astype(
                        np.float32
                    )
                )
            else:
                res.append(o)
        return res

    return dataclasses.replace(
        converted,
        onnx_model=model,
        run_source=run_source if run is not None else None,
        inputs=new_inputs,
        outputs=new_outputs,
        notes=[
            *converted.notes,
            "quantised I/O replaced by float I/O (QuantizeLinear/DequantizeLinear added)",
        ],
    )
