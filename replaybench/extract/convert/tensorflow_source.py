"""TensorFlow SavedModel and frozen GraphDef -> ONNX with tf2onnx (TensorFlow imported once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from replaybench.errors import ConversionError, CorruptInputError
from replaybench.extract.convert.registry import Converted, ConvertOptions, SourceTensor, register_converter
from replaybench.extract.convert.tf_ops import check_graph, check_saved_model
from replaybench.extract.convert.tf_runtime import import_tensorflow, import_tf2onnx


def _read_saved_model(path: Path) -> Any:
    """The SavedModel protobuf (binary or text), parsed without loading anything into TensorFlow."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        if (path / "saved_model.pb").is_file():
            sm.ParseFromString((path / "saved_model.pb").read_bytes())
        else:
            text_format.Parse((path / "saved_model.pbtxt").read_text(encoding="utf-8"), sm)
    except Exception as e:  # DecodeError, ParseError, UnicodeDecodeError: all mean "not a SavedModel"
        raise CorruptInputError(f"{path} is not a loadable SavedModel: {type(e).__name__}: {e}") from e
    return sm


def _spec_shape(shape: Any) -> list[int | str | None]:
    return [None if d is None else int(d) for d in shape.as_list()] if shape.rank is not None else []


@register_converter("savedmodel")
def convert_savedmodel(path: Path, opts: ConvertOptions) -> Converted:
    """SavedModel folder: its ``serving_default`` signature -> ONNX; TensorFlow runs it for parity."""
    tf = import_tensorflow()
    tf2onnx = import_tf2onnx()
    check_saved_model(_read_saved_model(path), path.name)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise CorruptInputError(f"{path} is not a loadable SavedModel: {type(e).__name__}: {e}") from e
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" not in sigs:
        raise ConversionError(f"{path} has no serving_default signature (has: {', '.join(sigs) or 'none'})")
    fn = sigs["serving_default"]
    arg_specs = fn.structured_input_signature[1]
    names = sorted(arg_specs)
    specs = [tf.TensorSpec(arg_specs[n].shape, arg_specs[n].dtype, name=n) for n in names]
    out_keys = sorted(fn.structured_outputs)

    def call(*args: Any) -> Any:
        res = fn(**dict(zip(names, args, strict=True)))
        return [res[k] for k in out_keys]

    tfn = tf.function(call, input_signature=specs)
    try:
        onnx_model, _ = tf2onnx.convert.from_function(tfn, input_signature=specs, opset=opts.opset)
    except Exception as e:
        raise ConversionError(f"tf2onnx could not convert {path.name}: {type(e).__name__}: {e}") from e

    def run_source(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [t.numpy() for t in tfn(*arrays)]

    concrete = tfn.get_concrete_function()
    return Converted(
        onnx_model=onnx_model,
        converter="tf2onnx.from_function",
        converter_version=getattr(tf2onnx, "__version__", None),
        reference_runtime="tensorflow",
        run_source=run_source,
        inputs=[
            SourceTensor(s.name or n, _spec_shape(s.shape), s.dtype.name)
            for n, s in zip(names, specs, strict=True)
        ],
        outputs=[
            SourceTensor(k, _spec_shape(t.shape), t.dtype.name)
            for k, t in zip(out_keys, concrete.structured_outputs, strict=True)
        ],
    )


@register_converter("tf_graphdef")
def convert_graphdef(path: Path, opts: ConvertOptions) -> Converted:
    """Frozen GraphDef: Placeholders are the inputs, unconsumed nodes the outputs."""
    tf = import_tensorflow()
    tf2onnx = import_tf2onnx()
    from tensorflow.core.framework import graph_pb2

    gd = graph_pb2.GraphDef()
    try:
        gd.ParseFromString(path.read_bytes())
    except Exception as e:
        raise CorruptInputError(f"{path} is not a GraphDef: {e}") from e
    check_graph(gd, path.name)
    consumed = {i.split(":")[0].lstrip("^") for n in gd.node for i in n.input}
    inputs = [n for n in gd.node if n.op == "Placeholder"]
    outputs = [
        n
        for n in gd.node
        if n.name not in consumed and n.op not in ("Const", "NoOp", "Placeholder", "Assert")
    ]
    if not inputs or not outputs:
        raise ConversionError(
            f"{path}: cannot tell the graph's inputs and outputs (no Placeholder or no sink)"
        )
    in_names = [n.name + ":0" for n in inputs]
    out_names = [n.name + ":0" for n in outputs]
    try:
        onnx_model, _ = tf2onnx.convert.from_graph_def(
            gd, input_names=in_names, output_names=out_names, opset=opts.opset
        )
    except Exception as e:
        raise ConversionError(f"tf2onnx could not convert {path.name}: {type(e).__name__}: {e}") from e

    def _import() -> Any:
        tf.graph_util.import_graph_def(gd, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    fn = wrapped.prune(
        [wrapped.graph.get_tensor_by_name(n) for n in in_names],
        [wrapped.graph.get_tensor_by_name(n) for n in out_names],
    )

    def run_source(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [t.numpy() for t in fn(*[tf.constant(a) for a in arrays])]

    def spec(name: str) -> SourceTensor:
        t = wrapped.graph.get_tensor_by_name(name)
        return SourceTensor(name, _spec_shape(t.shape), t.dtype.name)

    return Converted(
        onnx_model=onnx_model,
        converter="tf2onnx.from_graph_def",
        converter_version=getattr(tf2onnx, "__version__", None),
        reference_runtime="tensorflow",
        run_source=run_source,
        inputs=[spec(n) for n in in_names],
        outputs=[spec(n) for n in out_names],
    )
