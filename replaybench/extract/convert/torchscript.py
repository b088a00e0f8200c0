"""TorchScript (.pt) and PyTorch Mobile lite (.ptl) -> ONNX via torch.jit.load + torch.onnx.export.

``torch.jit.load`` is the only loader used (no pickle). TorchScript records no input shapes, so the
caller gives them (``--input-shape``, or the preprocessing spec's resize). Models using ops this torch
build cannot run (XNNPACK prepacked ops from ``optimize_for_mobile``) fail with the ops named; they are
read from the archive's TorchScript source text, never executed.

A TorchScript archive is a program, and ``torch.jit.load`` already runs part of it (a class's
``__setstate__``). Before loading, the archive's code/ text and pickles are scanned statically: every op
called (``ops.NS.name``, ``torch.name``) must be in the aten, prim, quantized or prepacked (torch's own
XNNPACK kernels) namespaces and not one of the few that touch files or the network (``aten::from_file``,
``aten::save``, ``prim::rpc_*``), and custom classes only torch's quantized/xnnpack ones. After loading,
every method's inlined graph is checked the same way before ``forward`` runs.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np

from replaybench.errors import ConversionError, CorruptInputError, UnsafeInputError
from replaybench.extract.containers import ZIP_ERRORS
from replaybench.extract.convert.registry import Converted, ConvertOptions, SourceTensor, register_converter

_MOBILE_OPS = re.compile(rb"(ops\.prepacked\.\w+|torch\.classes\.xnnpack\.\w+|ops\.quantized\.\w+)")
MAX_CODE_BYTES = 16 * 1024 * 1024

# Op namespaces TorchScript code may call; prepacked: torch's own XNNPACK kernels (optimize_for_mobile).
ALLOWED_OP_NAMESPACES = frozenset({"aten", "prim", "quantized", "prepacked"})
# ... less these, which read or write files or reach the network
REFUSED_OPS = frozenset(
    {
        "aten::from_file",
        "aten::save",
        "prim::rpc_async",
        "prim::rpc_remote",
        "prim::rpc_sync",
        "prim::PythonOp",
    }
)
ALLOWED_CLASS_NAMESPACES = frozenset({"quantized", "xnnpack"})  # torch.classes.NS.* packed params
_OP_CALL = re.compile(rb"\bops\s*\.\s*(\w+)\s*\.\s*(\w+)")
_TORCH_CALL = re.compile(rb"\btorch\s*\.\s*(\w+)\s*\(")
_CLASS_REF = re.compile(rb"\btorch\s*\.\s*classes\s*\.\s*(\w+)\s*\.\s*(\w+)")
_CLASS_GLOBAL = re.compile(rb"torch\.classes\.(\w+)\s+(\w+)")  # a pickle GLOBAL "module\nname"


def _op_allowed(qualified: str) -> bool:
    return qualified.split("::")[0] in ALLOWED_OP_NAMESPACES and qualified not in REFUSED_OPS


def archive_refusals(path: Path) -> list[str]:
    """Ops and classes named in the archive's code/ text and pickles that are not allowed (static)."""
    found: set[str] = set()
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                is_code = "/code/" in info.filename and info.filename.endswith(".py")
                if not is_code and not info.filename.endswith(".pkl"):
                    continue
                if info.file_size > MAX_CODE_BYTES:
                    raise UnsafeInputError(
                        f"{path.name}: {info.filename} is {info.file_size} bytes, over the "
                        f"{MAX_CODE_BYTES}-byte cap for TorchScript code that replaybench checks before loading"
                    )
                text = z.read(info).replace(b"\\\n", b"")  # line continuations cannot split a name
                if is_code:
                    for ns, name in _OP_CALL.findall(text):
                        found.add(f"{ns.decode()}::{name.decode()}")
                    found.update(f"aten::{n.decode()}" for n in _TORCH_CALL.findall(text))
                for ns, name in _CLASS_REF.findall(text) + _CLASS_GLOBAL.findall(text):
                    if ns.decode() not in ALLOWED_CLASS_NAMESPACES:
                        found.add(f"torch.classes.{ns.decode()}.{name.decode()}")
    except (zipfile.BadZipFile, OSError):
        return []  # not a zip: _load says so
    return sorted(q for q in found if q.startswith("torch.classes.") or not _op_allowed(q))


def graph_refusals(module) -> list[str]:  # type: ignore[no-untyped-def]
    """Ops in the inlined graphs of every method of ``module`` and its submodules that are not allowed."""
    import torch

    kinds: set[str] = set()

    def walk(block) -> None:  # type: ignore[no-untyped-def]
        for node in block.nodes():
            kinds.add(node.kind())
            for sub in node.blocks():
                walk(sub)

    for sub in module.modules():
        for name in sub._c._method_names():
            g = sub._c._get_method(name).graph.copy()
            torch._C._jit_pass_inline(g)
            walk(g)
    return sorted(k for k in kinds if not _op_allowed(k))


def _refuse(path: Path, ops: list[str], when: str) -> UnsafeInputError:
    return UnsafeInputError(
        f"{path.name} calls ops outside aten/prim/quantized (or ones that touch files or the network): "
        f"{', '.join(ops)}; found {when}, so the model is not run",
        hint="custom ops and classes are code replaybench will not run; export the model without them",
    )


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
    refused = archive_refusals(path)
    if refused:
        raise _refuse(path, refused, "in its TorchScript code before loading")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
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
    refused = graph_refusals(module)
    if refused:
        raise _refuse(path, refused, "in its loaded graphs")
    return module


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
