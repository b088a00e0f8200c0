"""TensorFlow and tf2onnx, imported once per process (the import costs seconds; conversions are many)."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any


@functools.cache
def import_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # a required dependency: a broken install fails loudly, not as a skip

    return tf


@functools.cache
def import_tf2onnx() -> Any:
    import_tensorflow()
    import tf2onnx
    import tf2onnx.convert  # noqa: F401

    # tf2onnx logs every unsupported op at ERROR and every step at INFO; we report those ourselves.
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    return tf2onnx
