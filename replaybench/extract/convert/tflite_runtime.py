"""The TFLite reference runtime: ai-edge-litert's Interpreter (the LiteRT build apps ship)."""

from __future__ import annotations

from typing import Any

from replaybench.errors import ConversionError


def runtime_name() -> str:
    """``ai-edge-litert <version>``: the runtime parity runs TFLite models in."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ai-edge-litert {version('ai-edge-litert')}"
    except PackageNotFoundError:  # an unpackaged build on the path: still the same runtime
        return "ai-edge-litert"


def make_interpreter(
    model_bytes: bytes, *, preserve_all_tensors: bool = False, default_delegates: bool = True
) -> Any:
    """An allocated TFLite interpreter for ``model_bytes`` (ConversionError when TFLite cannot load it).

    ``default_delegates=False`` runs TFLite's builtin kernels only (no XNNPACK): XNNPACK refuses
    sparse int8 weights and reads a sparse constant fed straight to FULLY_CONNECTED as if it were
    dense (NaN outputs, ai-edge-litert 2.3.0), while the builtin kernels implement the sparse format.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if default_delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = Interpreter(
            model_content=model_bytes,
            experimental_preserve_all_tensors=preserve_all_tensors,
            experimental_op_resolver_type=resolver,
            num_threads=1,
        )
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise ConversionError(f"the TFLite runtime cannot load this model: {str(e).strip()[:300]}") from e
    return interp
