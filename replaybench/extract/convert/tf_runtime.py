"""TensorFlow and tf2onnx, imported once per process (the import costs seconds; conversions are many)."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from replaybench.errors import missing_dependency


@functools.cache
def import_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise missing_dependency("tensorflow", package="tensorflow-cpu") from e
    return tf


@functools.cache
def import_tf2onnx() -> Any:
    import_tensorflow()
    try:
        import tf2onnx
        import tf2onnx.convert  # noqa: F401
    except ImportError as e:
        raise missing_dependency("tf2onnx") from e
    # tf2onnx logs every unsupported op at ERROR and every step at INFO; we report those ourselves.
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    return tf2onnx
