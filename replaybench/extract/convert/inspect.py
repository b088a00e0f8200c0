"""``replaybench inspect``: a bundle's document, or the io of a bare model file."""

from __future__ import annotations

from pathlib import Path

from replaybench.bundle import BUNDLE_JSON, Bundle, IOSpec, RuntimeInfo, SourceInfo, load_bundle
from replaybench.errors import InputNotFoundError


def inspect_target(target: Path, input_shape: list[int] | None = None) -> Bundle:
    """Read a bundle folder, or describe a model file (format, io, default preprocessing; no parity).

    A bare model is converted (or opened in its engine) in memory only to read its io, in a sandbox
    child like ``convert``; nothing is written.
    """
    target = Path(target)
    if not target.exists():
        raise InputNotFoundError(f"not found: {target}")
    if target.is_dir() and (target / BUNDLE_JSON).is_file():
        return load_bundle(target).bundle
    from replaybench.extract.convert.sandbox import run_task

    request = {"model": str(target), "input_shape": input_shape}
    res = run_task("inspect", request, what=target.name)
    return Bundle.model_validate(res.payload["bundle"])


def describe_model_in_process(target: Path, input_shape: list[int] | None = None) -> Bundle:
    """The io and default preprocessing of a bare model file, read in THIS process (the sandbox
    child's side of ``inspect_target``)."""
    from replaybench.extract.convert.registry import (
        ConvertOptions,
        SourceTensor,
        get_converter,
        registered_formats,
    )
    from replaybench.extract.convert.sniff import sniff_format
    from replaybench.extract.convert.writer import _io_spec, _sha256, default_preprocess, native_io
    from replaybench.replay.runtimes import native_runtime_for

    fmt = sniff_format(target)
    native = native_runtime_for(fmt)
    if native is not None and fmt not in registered_formats():  # NCNN, MNN: the engine describes it
        from replaybench.replay.runtimes import ncnn_pair

        files = list(ncnn_pair([target])) if fmt == "ncnn_param" else [target]
        _, native_spec = native_io(native.name, files, input_shape)
        t = native_spec.inputs[0]
        return Bundle(
            name=target.stem,
            source=SourceInfo(format=fmt, sha256=_sha256(target), entry=target.name),
            io=native_spec,
            preprocess=default_preprocess(SourceTensor(t.name, t.shape, t.dtype, t.quantization)),
            runtime=RuntimeInfo(
                name=native.name, files=[f.name for f in files], reason="inspected, not converted"
            ),  # type: ignore[arg-type]
        )
    converted = get_converter(fmt)(target, ConvertOptions())
    io: IOSpec = _io_spec(converted, converted.onnx_model)
    pre = default_preprocess(converted.inputs[0], converted.metadata) if converted.inputs else None
    return Bundle(
        name=target.stem,
        source=SourceInfo(format=fmt, sha256=_sha256(target), entry=target.name),
        io=io,
        preprocess=pre,
    )
