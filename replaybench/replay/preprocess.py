"""Image -> input tensor, exactly as a bundle's ``PreprocessSpec`` says. Implemented once, used everywhere.

Replay runs it for every image; trace-based preprocessing inference (``extract/preprocess.py``) runs the
same kernels to test candidate settings against captured tensors, so the two can never disagree.

Input images are ``uint8`` arrays of shape (H, W, 3) in RGB order. Resize kernels return ``float32``
(H', W', C); the kernels that model an 8-bit intermediate image (an Android Bitmap, a PIL image) round to
integers, the TF kernels do not.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import numpy as np

from replaybench.bundle import PreprocessSpec, ResizeMethod, ResizeSpec

_PIL_FILTERS = {"bilinear_pil": "BILINEAR", "area": "BOX", "bicubic_pil": "BICUBIC"}
RESIZE_METHODS: tuple[ResizeMethod, ...] = (
    "nearest",
    "bilinear_android",
    "bilinear_tf",
    "bilinear_tf_legacy",
    "bilinear_pil",
    "area",
    "bicubic_pil",
)


@lru_cache(maxsize=256)
def _bilinear_axis(n_in: int, n_out: int, half_pixel: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and the weight of hi for one axis of a bilinear resize."""
    scale = n_in / n_out
    dst = np.arange(n_out, dtype=np.float64)
    src = (dst + 0.5) * scale - 0.5 if half_pixel else dst * scale
    src = np.clip(src, 0.0, None)  # TF clamps negative coordinates to 0 (half-pixel at the border)
    lo = np.floor(src).astype(np.int64)
    lo = np.minimum(lo, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (src - lo).astype(np.float32)
    return lo, hi, w


@lru_cache(maxsize=256)
def _nearest_axis(n_in: int, n_out: int) -> np.ndarray:
    # Skia / Android nearest: sample at pixel centres.
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _bilinear(img: np.ndarray, width: int, height: int, half_pixel: bool) -> np.ndarray:
    h, w = img.shape[:2]
    y0, y1, wy = _bilinear_axis(h, height, half_pixel)
    x0, x1, wx = _bilinear_axis(w, width, half_pixel)
    # Gather the four neighbours in the input dtype first and convert only output-sized arrays (a 1080px
    # photo resized to 224 touches 4 x 224 x 224 pixels), then lerp in place as TF's kernel does:
    # top = tl + (tr - tl) * x_lerp; bottom likewise; out = top + (bottom - top) * y_lerp.
    f32 = np.float32
    rows0, rows1 = np.take(img, y0, axis=0), np.take(img, y1, axis=0)
    top = np.take(rows0, x0, axis=1).astype(f32)
    right = np.take(rows0, x1, axis=1).astype(f32)
    wx3 = wx[None, :, None]
    right -= top
    right *= wx3
    top += right
    bottom = np.take(rows1, x0, axis=1).astype(f32)
    right = np.take(rows1, x1, axis=1).astype(f32)
    right -= bottom
    right *= wx3
    bottom += right
    bottom -= top
    bottom *= wy[:, None, None]
    top += bottom
    return top


class _OrtBilinear:
    """The same bilinear geometry run by onnxruntime's ``Resize`` kernel (one session per process).

    numpy needs ~16 whole-array passes for one bilinear resize; the C++ kernel does one (measured on a
    200px face -> 128x128: 0.85 ms in numpy, 0.26 ms here, identical values; 1080px -> 224: differences
    below 0.03 pixel steps, from float32 instead of float64 source coordinates). ONNX ``half_pixel``
    clamps negative source coordinates to the edge as TF does; ``asymmetric`` is TF's legacy geometry.
    """

    _sessions: dict[bool, Any] = {}

    @classmethod
    def run(cls, img: np.ndarray, width: int, height: int, half_pixel: bool) -> np.ndarray:
        sess = cls._sessions.get(half_pixel)
        if sess is None:
            sess = cls._sessions[half_pixel] = cls._open(half_pixel)
        sizes = np.array([height, width, img.shape[2]], dtype=np.int64)
        out: np.ndarray = sess.run(None, {"image": np.ascontiguousarray(img), "sizes": sizes})[0]
        return out

    @staticmethod
    def _open(half_pixel: bool) -> Any:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        mode = "half_pixel" if half_pixel else "asymmetric"
        graph = helper.make_graph(
            [
                helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
                helper.make_node(
                    "Resize",
                    ["pixels", "", "", "sizes"],
                    ["resized"],
                    mode="linear",
                    coordinate_transformation_mode=mode,
                ),
            ],
            "bilinear",
            [
                helper.make_tensor_value_info("image", TensorProto.UINT8, ["H", "W", "C"]),
                helper.make_tensor_value_info("sizes", TensorProto.INT64, [3]),
            ],
            [helper.make_tensor_value_info("resized", TensorProto.FLOAT, None)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        so = ort.SessionOptions()
        # One image per call inside a worker process: threads would only contend with the other workers.
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


ResizeBackend = Literal["numpy", "onnxruntime"]


def resize(
    img: np.ndarray, width: int, height: int, method: ResizeMethod, backend: ResizeBackend = "numpy"
) -> np.ndarray:
    """Resize an (H, W, C) uint8 image to (height, width, C) float32 with the named kernel.

    ``bilinear_tf`` is ``tf.image.resize(..., "bilinear")`` (half-pixel centres, no antialiasing), which the
    TFLite support library's ``ResizeOp`` uses; ``bilinear_android`` is the same geometry rounded to 8 bits,
    as ``Bitmap.createScaledBitmap(.., filter=true)`` produces a new 8-bit Bitmap.

    ``backend="onnxruntime"`` runs the bilinear kernels of uint8 images in onnxruntime's ``Resize`` (about
    3x faster, within 0.03 pixel steps of the numpy reference); replay's workers use it.
    """
    if img.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {img.shape}")
    if img.shape[0] == height and img.shape[1] == width:
        return img.astype(np.float32)
    if method == "nearest":
        return img[_nearest_axis(img.shape[0], height)][:, _nearest_axis(img.shape[1], width)].astype(
            np.float32
        )
    if method in ("bilinear_tf", "bilinear_android", "bilinear_tf_legacy"):
        half_pixel = method != "bilinear_tf_legacy"
        if backend == "onnxruntime" and img.dtype == np.uint8:
            out = _OrtBilinear.run(img, width, height, half_pixel)
        else:
            out = _bilinear(img, width, height, half_pixel=half_pixel)
        return np.rint(out, out=out) if method == "bilinear_android" else out
    if method in _PIL_FILTERS:
        from PIL import Image

        resample = getattr(Image.Resampling, _PIL_FILTERS[method])
        channels = [
            np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize((width, height), resample))
            for c in range(img.shape[2])
        ]
        return np.stack(channels, axis=-1).astype(np.float32)
    raise ValueError(f"unknown resize method {method!r}; known: {', '.join(RESIZE_METHODS)}")


def crop(img: np.ndarray, spec: ResizeSpec) -> np.ndarray:
    """Apply the spec's crop box, then its centre crop to the target aspect ratio (before resizing)."""
    h, w = img.shape[:2]
    if spec.crop_box is not None:
        x0, y0, x1, y1 = spec.crop_box
        img = img[int(round(y0 * h)) : int(round(y1 * h)), int(round(x0 * w)) : int(round(x1 * w))]
        h, w = img.shape[:2]
    if spec.crop == "center":
        target = spec.width / spec.height
        if w / h > target:  # too wide: trim the sides
            cw = max(1, int(round(h * target)))
            left = (w - cw) // 2
            img = img[:, left : left + cw]
        elif w / h < target:
            ch = max(1, int(round(w / target)))
            top = (h - ch) // 2
            img = img[top : top + ch]
    return img


def _letterbox(img: np.ndarray, spec: ResizeSpec, backend: ResizeBackend = "numpy") -> np.ndarray:
    h, w = img.shape[:2]
    s = min(spec.width / w, spec.height / h)
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    inner = resize(img, nw, nh, spec.method, backend)
    out = np.zeros((spec.height, spec.width, img.shape[2]), dtype=np.float32)
    top, left = (spec.height - nh) // 2, (spec.width - nw) // 2
    out[top : top + nh, left : left + nw] = inner
    return out


def to_color_order(img: np.ndarray, order: str) -> np.ndarray:
    """Convert an RGB (H, W, 3) image (any dtype) to the spec's colour order."""
    if order == "RGB":
        return img
    if order == "BGR":
        return img[..., ::-1]
    if order == "GRAY":  # ITU-R BT.601 luma, as Android's ColorMatrix.setSaturation(0) and PIL "L"
        gray = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
        return gray[..., None].astype(np.float32)
    raise ValueError(f"unknown colour order {order!r}")


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """``tensor = pixel * scale + offset`` per channel, then quantise / cast to the spec's dtype."""
    scale = np.asarray(spec.scale, dtype=np.float32)
    offset = np.asarray(spec.offset, dtype=np.float32)
    t = pixels.astype(np.float32, copy=False) * scale + offset
    if spec.quantization is not None:
        t = np.rint(t / np.float32(spec.quantization.scale)) + spec.quantization.zero_point
    if spec.dtype in ("uint8", "int8"):
        info = np.iinfo(spec.dtype)
        return np.clip(np.rint(t), info.min, info.max).astype(spec.dtype)
    return t.astype(spec.dtype, copy=False)


def apply_preprocess(img: np.ndarray, spec: PreprocessSpec, backend: ResizeBackend = "numpy") -> np.ndarray:
    """The whole spec: crop, resize, colour order, normalise/quantise, layout. Returns no batch axis.

    ``backend``: see ``resize`` (replay's workers pass ``"onnxruntime"``).

    Example::

        >>> spec = PreprocessSpec(resize=ResizeSpec(width=2, height=2))
        >>> apply_preprocess(np.full((4, 4, 3), 255, np.uint8), spec).shape
        (2, 2, 3)
    """
    r = spec.resize
    img = crop(img, r)
    if r.keep_aspect and r.crop == "none":
        pixels = _letterbox(img, r, backend)
    else:
        pixels = resize(img, r.width, r.height, r.method, backend)
    pixels = to_color_order(pixels, spec.color_order)
    if spec.dtype == "float32" and spec.quantization is None and pixels.dtype == np.float32:
        # ``pixels`` is a fresh array owned here: normalise in place (same arithmetic as ``normalize``).
        pixels *= np.asarray(spec.scale, dtype=np.float32)
        pixels += np.asarray(spec.offset, dtype=np.float32)
        tensor = pixels
    else:
        tensor = normalize(pixels, spec)
    if spec.layout == "NCHW":
        tensor = np.ascontiguousarray(tensor.transpose(2, 0, 1))
    return tensor
