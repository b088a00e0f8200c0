"""ONNX -> validated passthrough: checker, opset (optionally converted), shape inference.

External data files are resolved only inside the model's own folder: a location that escapes it
(``../``, an absolute path, a symlink out) is refused with UnsafeInputError before anything is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from replaybench.errors import ConversionError, CorruptInputError, UnsafeInputError
from replaybench.extract.convert.registry import Converted, ConvertOptions, SourceTensor, register_converter

_ONNX_NP = {
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
}


def check_external_data(model: Any, folder: Path) -> None:
    """Raise UnsafeInputError when any external-data location resolves outside ``folder``."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    root = folder.resolve()
    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        loc = ExternalDataInfo(t).location
        target = (root / loc).resolve()
        if Path(loc).is_absolute() or not target.is_relative_to(root):
            raise UnsafeInputError(
                f"ONNX external data {loc!r} of tensor {t.name!r} points outside the model's folder {root}"
            )
        if not target.is_file():
            raise CorruptInputError(f"ONNX external data file {loc!r} of tensor {t.name!r} is missing")


def tensor_specs(values: Any) -> list[SourceTensor]:
    out = []
    for v in values:
        tt = v.type.tensor_type
        # tf2onnx names unknown dims "unk__N": that is no information, so it is recorded as None
        shape: list[int | str | None] = [
            d.dim_value
            if d.HasField("dim_value")
            else (d.dim_param if d.dim_param and not d.dim_param.startswith("unk__") else None)
            for d in tt.shape.dim
        ]
        out.append(
            SourceTensor(name=v.name, shape=shape, dtype=_ONNX_NP.get(tt.elem_type, str(tt.elem_type)))
        )
    return out


@register_converter("onnx")
def convert_onnx(path: Path, opts: ConvertOptions) -> Converted:
    """Validate an ONNX model and pass it through (parity: the source file vs the written model)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise CorruptInputError(f"{path} is not a readable ONNX model: {e}") from e
    check_external_data(model, path.parent)
    try:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, OSError, ValueError) as e:
        raise CorruptInputError(f"{path} fails the ONNX checker: {e}") from e
    notes = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opts.opset and opset != opts.opset:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, opts.opset)
        except Exception as e:
            raise ConversionError(
                f"cannot convert {path.name} from opset {opset} to {opts.opset}: {e}"
            ) from e
        notes.append(f"opset converted {opset} -> {opts.opset}")
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # shape inference is informative; a failure is noted, not fatal
        notes.append(f"shape inference failed: {e}")
    from replaybench.extract.convert.parity import onnx_session

    init = {i.name for i in model.graph.initializer}
    source_bytes = model.SerializeToString() if not opts.opset else None
    ref = onnx_session(source_bytes if source_bytes is not None else _load_bytes(path))

    def run_source(arrays: list[np.ndarray]) -> list[np.ndarray]:
        names = [i.name for i in ref.get_inputs()]
        return list(ref.run(None, dict(zip(names, arrays, strict=True))))

    inputs = tensor_specs([i for i in model.graph.input if i.name not in init])
    return Converted(
        onnx_model=model,
        converter="passthrough",
        converter_version=onnx.__version__,
        reference_runtime="onnxruntime (source file)",
        run_source=run_source,
        inputs=inputs,
        outputs=tensor_specs(model.graph.output),
        kind="float",
        notes=notes,
    )


def _load_bytes(path: Path) -> bytes:
    import onnx

    m = onnx.load(str(path))
    return bytes(m.SerializeToString())
