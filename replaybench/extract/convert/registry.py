"""The converter registry: one converter per source format, keyed by the scan stage's detector keys.

A converter turns a model file into an ONNX ``ModelProto`` and says how to run the source model for
parity. Formats replaybench detects but cannot convert are registered as known-but-unconvertible, so
``get_converter`` can name them in its error; adding a converter is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from replaybench.errors import ConversionError, UnsupportedFormatError

if TYPE_CHECKING:
    import numpy as np

    from replaybench.bundle import QuantParams

# The detector keys the scan stage uses (replaybench/extract/formats*). Converters may only register these.
CONVERTIBLE_FORMATS = ("tflite", "onnx", "torchscript", "pytorch_lite", "savedmodel", "tf_graphdef")
UNCONVERTIBLE_FORMATS = (
    "ncnn_param",
    "mnn",
    "caffe_prototxt",
    "caffemodel",
    "paddle_lite",
    "snpe_dlc",
    "coreml",
)
KNOWN_FORMATS = CONVERTIBLE_FORMATS + UNCONVERTIBLE_FORMATS


@dataclass
class SourceTensor:
    """One input or output of the source model, as its own runtime describes it."""

    name: str
    shape: list[int | str | None]
    dtype: str  # numpy dtype name
    quantization: QuantParams | None = None
    # set when a quantised tensor is exposed as float (keep_quantized_io=False): its integer dtype
    quantized_dtype: str | None = None


@dataclass
class Converted:
    """What a converter hands back: the ONNX model and a callable that runs the source model."""

    onnx_model: Any  # onnx.ModelProto
    converter: str
    converter_version: str | None
    reference_runtime: str
    # Runs the source model on a list of input arrays (ONNX input order) and returns the outputs
    # in ONNX output order; None when the source cannot be run here (parity then says why).
    run_source: Callable[[list[np.ndarray]], list[np.ndarray]] | None
    inputs: list[SourceTensor]
    outputs: list[SourceTensor]
    kind: str = "float"  # float, fp16, dynamic, quantized: chooses the parity tolerance
    # What run_source runs: "original" (the source blob itself) or "rewritten" (a rewrite of it, only
    # when the source runtime cannot run the original here; reference_reason then says why).
    reference: Literal["original", "rewritten"] = "original"
    reference_reason: str | None = None
    cut_at: list[str] = field(default_factory=list)
    cut_tensors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # normalization, labels, ... from the model


@dataclass
class ConvertOptions:
    opset: int | None = None
    keep_quantized_io: bool = True
    input_shapes: list[list[int]] | None = None  # for sources that do not record input shapes (TorchScript)


ConverterFn = Callable[[Path, ConvertOptions], Converted]

_CONVERTERS: dict[str, ConverterFn] = {}


def register_converter(fmt: str) -> Callable[[ConverterFn], ConverterFn]:
    """Register ``fn`` as the converter for detector key ``fmt`` (an unknown key is a bug: rejected)."""
    if fmt not in CONVERTIBLE_FORMATS:
        raise ValueError(f"unknown source format {fmt!r}; known: {', '.join(CONVERTIBLE_FORMATS)}")

    def deco(fn: ConverterFn) -> ConverterFn:
        if fmt in _CONVERTERS:
            raise ValueError(f"a converter for {fmt!r} is already registered")
        _CONVERTERS[fmt] = fn
        return fn

    return deco


def get_converter(fmt: str) -> ConverterFn:
    """The converter for ``fmt``; ConversionError for known formats without one, UnsupportedFormatError else."""
    _load_builtin_converters()
    if fmt in _CONVERTERS:
        return _CONVERTERS[fmt]
    if fmt in KNOWN_FORMATS:
        raise ConversionError(
            f"no converter for {fmt}: replaybench detects {fmt} models but cannot convert them to ONNX",
            hint="convert it with the vendor's tools to ONNX or TFLite, then run 'replaybench convert' on that",
        )
    raise UnsupportedFormatError(f"unknown model format {fmt!r}")


def registered_formats() -> list[str]:
    _load_builtin_converters()
    return sorted(_CONVERTERS)


def _load_builtin_converters() -> None:
    # Imported for their @register_converter side effect; the heavy libraries load inside the converters.
    from replaybench.extract.convert import onnx_source, tensorflow_source, tflite, torchscript  # noqa: F401
