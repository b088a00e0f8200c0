"""Conversion of model files to validated ONNX bundles (see DESIGN.md, "Bundle").

Public API::

    from replaybench.extract.convert import convert_model, convert_many, inspect_target, sniff_format
"""

from __future__ import annotations

from replaybench.extract.convert.inspect import inspect_target
from replaybench.extract.convert.registry import (
    KNOWN_FORMATS,
    Converted,
    ConvertOptions,
    get_converter,
    register_converter,
    registered_formats,
)
from replaybench.extract.convert.sniff import sniff_format
from replaybench.extract.convert.writer import (
    ConversionJob,
    ConversionOutcome,
    convert_many,
    convert_model,
    default_preprocess,
)

__all__ = [
    "KNOWN_FORMATS",
    "ConversionJob",
    "ConversionOutcome",
    "ConvertOptions",
    "Converted",
    "convert_many",
    "convert_model",
    "default_preprocess",
    "get_converter",
    "inspect_target",
    "register_converter",
    "registered_formats",
    "sniff_format",
]
