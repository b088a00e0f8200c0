"""``replaybench inspect``: a bundle's document, or the io of a bare model file."""

from __future__ import annotations

from pathlib import Path

from replaybench.bundle import BUNDLE_JSON, Bundle, IOSpec, SourceInfo, load_bundle
from replaybench.errors import InputNotFoundError


def inspect_target(target: Path) -> Bundle:
    """Read a bundle folder, or describe a model file (format, io, default preprocessing; no parity).

    A bare model is converted in memory only to read its io (in a sandbox child, like ``convert``);
    nothing is written.
    """
    target = Path(target)
    if not target.exists():
        raise InputNotFoundError(f"not found: {target}")
    if target.is_dir() and (target / BUNDLE_JSON).is_file():
        return load_bundle(target).bundle
    from replaybench.extract.convert.sandbox import run_task

    res = run_task("inspect", {"model": str(target)}, what=target.name)
    return Bundle.model_validate(res.payload["bundle"])


def describe_model_in_process(target: Path) -> Bundle:
    """The io and default preprocessing of a bare model file, converting it in THIS process (the
    sandbox child's side of ``inspect_target``)."""
    from replaybench.extract.convert.registry import ConvertOptions, get_converter
    from replaybench.extract.convert.sniff import sniff_format
    from replaybench.extract.convert.writer import _io_spec, _sha256, default_preprocess

    fmt = sniff_format(target)
    converted = get_converter(fmt)(target, ConvertOptions())
    io: IOSpec = _io_spec(converted, converted.onnx_model)
    pre = default_preprocess(converted.inputs[0], converted.metadata) if converted.inputs else None
    return Bundle(
        name=target.stem,
        source=SourceInfo(format=fmt, sha256=_sha256(target), entry=target.name),
        io=io,
        preprocess=pre,
    )
