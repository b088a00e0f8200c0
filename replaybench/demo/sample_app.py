"""The sample app the demo audits: what it stores, how it obfuscates its model, how it feeds it.

``org.replaybench.sample`` keeps three models the way real apps do (one plain in assets, one embedded in
a native library, one XOR-obfuscated that it decrypts in memory and actually runs) and preprocesses
camera crops like many Android apps: ``createScaledBitmap(crop, 64, 64, true)`` then
``(pixel - 127.5) / 127.5`` into an NHWC float tensor.

No phone is available to record that app, so ``write_sample_trace`` writes the trace the shipped agent
records on one (same schema, same event kinds, same dump layout), from the app's own logic run here on
the real TFLite interpreter. That logic uses the reference implementations, never replaybench's kernels:
Skia (skia-python) draws ``createScaledBitmap`` as Android does, and the normalisation is TFLite Support's
``NormalizeOp`` arithmetic. So the demo's extract solves the preprocessing from what Android computes.
The Frida capture itself is exercised by the test suite on a local process.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from replaybench.bundle import PreprocessSpec, ResizeSpec

PACKAGE = "org.replaybench.sample"
VERSION_NAME = "1.0"
VERSION_CODE = 1
OBFUSCATED_ASSET = "fa.bin"
NATIVE_LIB = "libfacekit.so"
XOR_KEY_SEED = b"replaybench-sample-key"

#: What the app really does to a face crop (the truth the demo's trace inference must recover).
APP_PREPROCESS = PreprocessSpec(
    resize=ResizeSpec(width=64, height=64, method="bilinear_android"),
    color_order="RGB",
    layout="NHWC",
    dtype="float32",
    scale=[1 / 127.5],
    offset=[-1.0],
)


def xor_keystream(data: bytes, seed: bytes = XOR_KEY_SEED) -> bytes:
    """The app's obfuscation: XOR with a SHA-256 counter keystream (so the blob looks random)."""
    blocks = (len(data) + 31) // 32
    stream = b"".join(hashlib.sha256(seed + i.to_bytes(8, "little")).digest() for i in range(blocks))
    a = np.frombuffer(data, np.uint8)
    return (a ^ np.frombuffer(stream[: len(data)], np.uint8)).tobytes()


def create_scaled_bitmap(img: np.ndarray, width: int, height: int, filter: bool) -> np.ndarray:
    """``Bitmap.createScaledBitmap(src, width, height, filter)`` of an opaque RGB image, drawn by Skia.

    As Android's ``Bitmap.createBitmap(src, 0, 0, w, h, m, filter)`` draws it: ``m.setScale(width /
    (float) w, height / (float) h)``, a ``Canvas`` over a new 8888 bitmap, ``Paint.setFilterBitmap``
    (SkSamplingOptions kLinear / kNearest in hwui), ``drawBitmap(src, srcRect, dstRect, paint)``.
    Needs skia-python (the dev extra).
    """
    import skia

    h, w = img.shape[:2]
    rgba = np.ascontiguousarray(np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], axis=2))
    src = skia.Image.fromarray(rgba, colorType=skia.kRGBA_8888_ColorType, alphaType=skia.kPremul_AlphaType)
    info = skia.ImageInfo.Make(width, height, skia.kRGBA_8888_ColorType, skia.kPremul_AlphaType)
    surface = skia.Surface.MakeRaster(info)
    canvas = surface.getCanvas()
    canvas.concat(
        skia.Matrix.Scale(float(np.float32(width) / np.float32(w)), float(np.float32(height) / np.float32(h)))
    )
    sampling = skia.SamplingOptions(skia.FilterMode.kLinear if filter else skia.FilterMode.kNearest)
    rect = skia.Rect.MakeWH(w, h)
    canvas.drawImageRect(src, rect, rect, sampling, skia.Paint(), skia.Canvas.kFast_SrcRectConstraint)
    out = surface.makeImageSnapshot().toarray(
        colorType=skia.kRGBA_8888_ColorType, alphaType=skia.kPremul_AlphaType
    )
    return np.ascontiguousarray(out[..., :3])


def app_input(crop: np.ndarray) -> np.ndarray:
    """The app's input tensor for a face crop, computed as the phone computes it (no replaybench kernels):
    ``createScaledBitmap(crop, 64, 64, true)``, then TFLite Support's ``NormalizeOp(127.5f, 127.5f)``,
    ``(pixel - mean) / stddev`` in float32, as a (1, 64, 64, 3) NHWC tensor."""
    r = APP_PREPROCESS.resize
    pixels = create_scaled_bitmap(crop, r.width, r.height, filter=True).astype(np.float32)
    mean = stddev = np.float32(127.5)
    tensor: np.ndarray = (pixels - mean) / stddev
    return tensor[None]


def write_sample_trace(folder: Path, model: bytes, crops: list[np.ndarray], *, agent_version: str) -> Path:
    """Write the trace of the sample app scoring ``crops`` (RGB uint8 face crops of any size)."""
    from ai_edge_litert.interpreter import Interpreter

    from replaybench.extract.trace import TraceWriter

    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    model_handle, interp_handle = "0x7b3c001000", "0x7b3c002000"
    t = 0.0
    with TraceWriter(folder) as w:
        w.write(
            {
                "kind": "session",
                "t": t,
                "app": "Face Attributes Sample",
                "package": PACKAGE,
                "version_name": VERSION_NAME,
                "version_code": VERSION_CODE,
                "abi": "arm64",
                "platform": "android",
                "agent_version": agent_version,
                "pid": 4242,
                "java": True,
            }
        )
        w.write({"kind": "library_load", "t": 12.0, "name": NATIVE_LIB, "api": "System.loadLibrary"})
        w.write(
            {
                "kind": "file_open",
                "t": 40.0,
                "path": OBFUSCATED_ASSET,
                "api": "AAssetManager_open",
                "asset": True,
            }
        )
        w.write(
            {
                "kind": "model_load",
                "t": 55.0,
                "runtime": "tflite",
                "api": "Interpreter(ByteBuffer)",
                "handle": model_handle,
                "source": "buffer",
                "address": "0x7b40000000",
                "size": len(model),
            },
            model,
        )
        w.write(
            {
                "kind": "interpreter",
                "t": 56.0,
                "runtime": "tflite",
                "api": "Interpreter",
                "interpreter": interp_handle,
                "model": model_handle,
            }
        )
        for seq, crop in enumerate(crops):
            t = 100.0 + 40.0 * seq
            rgba = np.concatenate([crop, np.full((*crop.shape[:2], 1), 255, np.uint8)], axis=2)
            w.write(
                {
                    "kind": "bitmap",
                    "t": t,
                    "width": crop.shape[1],
                    "height": crop.shape[0],
                    "format": "RGBA_8888",
                    "invoke": seq,
                    "api": "createScaledBitmap",
                },
                rgba.tobytes(),
            )
            x = app_input(crop)
            interp.set_tensor(inp["index"], x)
            interp.invoke()
            y = interp.get_tensor(out["index"])
            common = {
                "kind": "tensor",
                "runtime": "tflite",
                "interpreter": interp_handle,
                "model": model_handle,
                "invoke": seq,
            }
            w.write(
                {
                    **common,
                    "t": t + 1,
                    "io": "input",
                    "index": 0,
                    "name": inp["name"],
                    "shape": list(x.shape),
                    "dtype": "float32",
                    "bytes": x.nbytes,
                },
                x.tobytes(),
            )
            w.write(
                {
                    "kind": "invoke",
                    "t": t + 2,
                    "runtime": "tflite",
                    "api": "Interpreter.run",
                    "seq": seq,
                    "interpreter": interp_handle,
                    "model": model_handle,
                    "duration_ms": 1.5,
                    "tensors": True,
                }
            )
            w.write(
                {
                    **common,
                    "t": t + 3,
                    "io": "output",
                    "index": 0,
                    "name": out["name"],
                    "shape": list(y.shape),
                    "dtype": "float32",
                    "bytes": y.nbytes,
                },
                y.tobytes(),
            )
    return folder
