"""TorchScript (.pt) and PyTorch Mobile lite (.ptl) -> ONNX via torch.jit.load + torch.onnx.export.

``torch.jit.load`` is the only loader used (no pickle). TorchScript records no input shapes, so the
caller gives them (``--input-shape``, or the preprocessing spec's resize). Models using ops this torch
build cannot run (XNNPACK prepacked ops from ``optimize_for_mobile``) fail with the ops named; they are
read from the archive's TorchScript source text, never executed.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np

from replaybench.errors import ConversionError, CorruptInputError
from replaybench.extract.containers import ZIP_ERRORS
from replaybench.extract.convert.registry import Converted, ConvertOptions, SourceTensor, register_converter

_MOBILE_OPS = re.compile(rb"(ops\.prepacked\.\w+|torch\.classes\.xnnpack\.\w+|ops\.quantized\.\w+)")
MAX_CODE_BYTES = 16 * 1024 * 1024


def mobile_ops(path: Path) -> list[str]:
    """The mobile-only ops (XNNPACK prepacked, quantized) named in the archive's code/ files."""
    found: set[str] = set()
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if (
                    "/code/" in info.filename
                    and info.filename.endswith(".py")
                    and info.file_size < MAX_CODE_BYTES
                ):
                    found.update(m.decode() for m in _MOBILE_OPS.findall(z.read(info)))
    except ZIP_ERRORS:
        return []
    return sorted(found)


def _load(path: Path, fmt: str):  # type: ignore[no-untyped-def]
    import torch

    try:
        zipfile.ZipFile(path).close()
    except ZIP_ERRORS as e:
        raise CorruptInputError(f"{path} is not a TorchScript archive (not a zip): {e}") from e
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        ops = mobile_ops(path)
        if ops:
            raise ConversionError(
                f"{path.name} uses ops this torch build cannot run: {', '.join(ops)} "
                f"(saved after optimize_for_mobile); torch.jit.load failed: {str(e).strip().splitlines()[0]}",
                hint="convert the model from its pre-optimize_for_mobile version, or use a torch build with XNNPACK",
            ) from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if fmt == "pytorch_lite" and not _has_torchscript_code(path):
            raise ConversionError(
                f"{path.name} is a lite-interpreter-only PyTorch Mobile file (bytecode.pkl, no TorchScript "
                f"code/): torch.jit.load cannot read it and there is no desktop loader for bytecode: {first}",
                hint="find the app's TorchScript (.pt) or the model's source; lite bytecode cannot be exported",
            ) from e
        what = "PyTorch Mobile lite-interpreter file" if fmt == "pytorch_lite" else "TorchScript file"
        raise ConversionError(f"torch.jit.load cannot read this {what} {path.name}: {first}") from e


def _has_torchscript_code(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _convert(path: Path, opts: ConvertOptions, fmt: str) -> Converted:
    import torch

    module = _load(path, fmt)
    module.eval()
    if not opts.input_shapes:
        raise ConversionError(
            f"{path.name}: TorchScript does not record input shapes",
            hint="give one with --input-shape 1,3,224,224 or a --preprocess spec",
        )
    example = tuple(torch.zeros(*s) for s in opts.input_shapes)
    in_names = [f"input_{i}" for i in range(len(example))]
    with torch.no_grad():
        out = module(*example)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    out_names = [f"output_{i}" for i in range(len(outs))]
    buf = io.BytesIO()
    try:
        torch.onnx.export(
            module,
            example,
            buf,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=opts.opset or 17,
            input_names=in_names,
            output_names=out_names,
        )
    except Exception as e:
        raise ConversionError(f"torch.onnx.export failed for {path.name}: {type(e).__name__}: {e}") from e
    import onnx

    onnx_model = onnx.load_from_string(buf.getvalue())

    def run_source(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            r = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        rs = r if isinstance(r, (tuple, list)) else (r,)
        return [t.detach().numpy() for t in rs]

    return Converted(
        onnx_model=onnx_model,
        converter="torch.onnx.export(dynamo=False)",
        converter_version=torch.__version__,
        reference_runtime="torch.jit",
        run_source=run_source,
        inputs=[
            SourceTensor(n, list(s), "float32") for n, s in zip(in_names, opts.input_shapes, strict=True)
        ],
        outputs=[
            SourceTensor(n, list(o.shape), str(o.dtype).replace("torch.", ""))
            for n, o in zip(out_names, outs, strict=True)
        ],
    )


@register_converter("torchscript")
def convert_torchscript(path: Path, opts: ConvertOptions) -> Converted:
    """TorchScript archive (torch.jit.save) -> ONNX."""
    return _convert(path, opts, "torchscript")


@register_converter("pytorch_lite")
def convert_pytorch_lite(path: Path, opts: ConvertOptions) -> Converted:
    """PyTorch Mobile lite-interpreter archive (.ptl with bytecode.pkl) -> ONNX, through its TorchScript part."""
    return _convert(path, opts, "pytorch_lite")
