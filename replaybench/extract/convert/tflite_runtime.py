"""The TFLite reference runtime: ai-edge-litert's Interpreter, else tf.lite's."""

from __future__ import annotations

from typing import Any

from replaybench.errors import ConversionError, missing_dependency


def make_interpreter(model_bytes: bytes, *, preserve_all_tensors: bool = False) -> Any:
    """An allocated TFLite interpreter for ``model_bytes`` (ConversionError when TFLite cannot load it)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter  # noqa: N806
        except ImportError as e:
            raise missing_dependency("ai_edge_litert", package="ai-edge-litert") from e
    try:
        interp = Interpreter(
            model_content=model_bytes, experimental_preserve_all_tensors=preserve_all_tensors, num_threads=1
        )
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise ConversionError(f"the TFLite runtime cannot load this model: {str(e).strip()[:300]}") from e
    return interp
