"""Image -> input tensor, exactly as a bundle's ``PreprocessSpec`` says. Implemented once, used everywhere.

Replay runs it for every image; trace-based preprocessing inference (``extract/preprocess.py``) runs the
same kernels to test candidate settings against captured tensors, so the two can never disagree.

Input images are ``uint8`` arrays of shape (H, W, 3) in RGB order. Resize kernels return ``float32``
(H', W', C); the kernels that model an 8-bit intermediate image (an Android Bitmap, a PIL image, an OpenCV
``Mat``) are integers, the TF kernels are not.

Each kernel is checked against the library it names, on real photos (tests/replay/test_kernel_references.py):
``bilinear_android`` / ``nearest`` against Skia (skia-python, drawn as ``Bitmap.createScaledBitmap`` draws),
``bilinear_tf*`` against TensorFlow, the PIL kernels against Pillow, ``area`` against OpenCV.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import numpy as np

from replaybench.bundle import PreprocessSpec, ResizeMethod, ResizeSpec

_PIL_FILTERS = {"bilinear_pil": "BILINEAR", "bicubic_pil": "BICUBIC"}
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
def _skia_centres(n_in: int, n_out: int) -> np.ndarray:
    """Source-space x of each output pixel centre, in Skia's float32 arithmetic.

    ``Bitmap.createScaledBitmap`` sets ``Matrix.setScale(dstWidth / (float) width, ...)``; Skia inverts it
    (1 / scale, float32) and maps each destination pixel centre ``x + 0.5`` through the inverse.
    """
    f32 = np.float32
    inverse = f32(1) / (f32(n_out) / f32(n_in))
    centres: np.ndarray = (np.arange(n_out, dtype=f32) + f32(0.5)) * inverse
    return centres


@lru_cache(maxsize=256)
def _nearest_axis(n_in: int, n_out: int) -> np.ndarray:
    # createScaledBitmap(.., filter=false): hwui draws with SkFilterMode::kNearest (the same Android 12+
    # path as _skia_bilinear's docstring). Skia picks the pixel containing the mapped centre, and a
    # centre exactly on a pixel boundary goes to the pixel before it: ceil(x) - 1, not floor(x) (measured
    # against skia-python 144: 200 -> 5 samples columns 19, 59, ...; floor would give 20, 60, ...).
    idx = np.ceil(_skia_centres(n_in, n_out)).astype(np.int64) - 1
    return np.clip(idx, 0, n_in - 1)


@lru_cache(maxsize=256)
def _skia_bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Taps (lo, hi) and the signed Q15 weight of one axis of Skia's 8-bit bilinear sampler.

    Skia's raster pipeline samples an 8888 image with ``SkFilterMode::kLinear`` in its low-precision
    stage ``bilerp_clamp_8888`` (src/opts/SkRasterPipeline_opts.h): the sample coordinate ``x - 0.5`` is
    quantised to 16.16 fixed point, the integer part picks the taps (clamped to the image: clamp tiling),
    and the 16-bit fraction, offset by -0.5 (``q ^ 0x8000`` read as int16), is the Q15 weight.
    """
    q = np.floor(np.float32(65536) * _skia_centres(n_in, n_out) + np.float32(0.5)).astype(np.int64) - 32768
    whole = q >> 16
    frac = (q & 0xFFFF) ^ 0x8000
    weight = np.where(frac >= 32768, frac - 65536, frac).astype(np.int32)
    lo = np.clip(whole, 0, n_in - 1)
    hi = np.clip(whole + 1, 0, n_in - 1)
    return lo, hi, weight


def _skia_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``Bitmap.createScaledBitmap(src, width, height, true)`` on an opaque ARGB_8888 bitmap.

    Skia's lowp ``bilerp_clamp_8888``: each tap is scaled to 15 bits (``<< 7``); the horizontal lerp
    keeps one extra bit, ``(q15(tx, r - l) + r + l + 1) >> 1``; the vertical one rounds back to 8 bits,
    ``(q15(ty, b - t) + b + t + 128) >> 8``, where ``q15(a, b) = (a * b + 2^14) >> 15`` is the rounding
    Q15 multiply (ARM vqrdmulh, x86 pmulhrsw). Bit-exact with skia-python 144 (Skia m144) on real photos,
    up- and downscaling by integer and non-integer factors (tests/replay/test_kernel_references.py).

    Which Android versions this is: ``Bitmap.createScaledBitmap`` -> ``createBitmap(src, 0, 0, w, h, m,
    filter)`` draws with ``Paint.setFilterBitmap(filter)`` on a ``Canvas`` over a new software bitmap
    (frameworks/base graphics/java/android/graphics/Bitmap.java, read in Android 16's copy,
    github.com/bluestacks/frameworks-base-a16); hwui's ``SkiaCanvas::drawBitmap(src rect, dst rect)``
    calls ``drawImageRect(image, src, dst, paint.sampling(), ..., kFast_SrcRectConstraint)``, where the
    filter flag becomes ``SkSamplingOptions(SkFilterMode::kLinear)`` (libs/hwui/SkiaCanvas.cpp, read in
    Android 15's copy, github.com/muhomorr/platform_frameworks_base-15). Android 12 and later pass
    sampling options this way; older releases used SkFilterQuality and Skia's legacy SkBitmapProcState
    sampler (4-bit weights), which this kernel does not model. Within 12+, a device's Skia milestone
    may differ from m144 in this stage's arithmetic; that was not measured on devices.
    """
    y0, y1, ty = _skia_bilinear_axis(img.shape[0], height)
    x0, x1, tx = _skia_bilinear_axis(img.shape[1], width)
    wx = tx[None, :, None]

    # In-place int32 arithmetic on output-sized arrays (no product can overflow: |weight| <= 2^15 and
    # |tap difference << 7| < 2^15). 1080x1440 -> 224: 12 ms, against 20 ms with temporaries.
    def horizontal(rows: np.ndarray) -> np.ndarray:
        r = np.take(img, rows, axis=0)
        left = np.take(r, x0, axis=1).astype(np.int32)
        d = np.take(r, x1, axis=1).astype(np.int32)
        d -= left  # right - left
        left <<= 1
        left += d
        left <<= 7  # (right + left) << 7
        d <<= 7
        d *= wx
        d += 1 << 14
        d >>= 15  # q15(tx, (right - left) << 7)
        d += left
        d += 1
        d >>= 1
        return d

    top, bottom = horizontal(y0), horizontal(y1)
    total = top + bottom
    bottom -= top
    bottom *= ty[:, None, None]
    bottom += 1 << 14
    bottom >>= 15  # q15(ty, bottom - top)
    bottom += total
    bottom += 128
    bottom >>= 8
    return bottom.astype(np.float32)


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

    - ``bilinear_tf``: ``tf.image.resize(..., "bilinear")`` (half-pixel centres, no antialiasing; TFLite's
      ``RESIZE_BILINEAR`` with ``half_pixel_centers=True``);
    - ``bilinear_tf_legacy``: ``tf.compat.v1.image.resize_bilinear(align_corners=False)``;
    - ``bilinear_android`` / ``nearest``: ``Bitmap.createScaledBitmap(.., filter=true / false)``, i.e.
      Skia's 8-bit bilinear / nearest sampling (see ``_skia_bilinear``); the TFLite Support library's
      ``ResizeOp`` on a Bitmap calls exactly this;
    - ``bilinear_pil`` / ``bicubic_pil``: Pillow's ``Image.resize`` (antialiased when downscaling);
    - ``area``: OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_AREA)`` (pixel-area averaging when
      downscaling, bilinear when upscaling).

    ``backend="onnxruntime"`` runs the TF bilinear kernels of uint8 images in onnxruntime's ``Resize``
    (about 3x faster, within 0.03 pixel steps of the numpy reference); replay's workers use it.
    """
    if img.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {img.shape}")
    if img.shape[0] == height and img.shape[1] == width:
        return img.astype(np.float32)
    if method == "nearest":
        return img[_nearest_axis(img.shape[0], height)][:, _nearest_axis(img.shape[1], width)].astype(
            np.float32
        )
    if method == "bilinear_android":
        return _skia_bilinear(img, width, height)
    if method in ("bilinear_tf", "bilinear_tf_legacy"):
        half_pixel = method == "bilinear_tf"
        if backend == "onnxruntime" and img.dtype == np.uint8:
            return _OrtBilinear.run(img, width, height, half_pixel)
        return _bilinear(img, width, height, half_pixel=half_pixel)
    if method == "area":
        import cv2

        # cv2 takes (width, height); a 1-channel result loses its channel axis, so keep (H, W, C).
        out = cv2.resize(np.ascontiguousarray(img), (width, height), interpolation=cv2.INTER_AREA)
        return out.reshape(height, width, img.shape[2]).astype(np.float32)
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
    img = crop_box(img, spec.crop_box)
    if spec.crop == "center" and spec.shorter_side is None:
        img = center_crop_to_aspect(img, spec.width, spec.height)
    return img


def center_crop_to_aspect(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """The largest centred window of the width:height aspect (the odd pixel goes after it)."""
    h, w = img.shape[:2]
    target = width / height
    if w / h > target:  # too wide: trim the sides
        cw = max(1, int(round(h * target)))
        left = (w - cw) // 2
        return img[:, left : left + cw]
    if w / h < target:
        ch = max(1, int(round(w / target)))
        top = (h - ch) // 2
        return img[top : top + ch]
    return img


def crop_box(img: np.ndarray, box: tuple[float, float, float, float] | None) -> np.ndarray:
    """The (x0, y0, x1, y1) box given as fractions of the image (edges rounded to whole pixels)."""
    if box is None:
        return img
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box
    top, bottom = int(round(y0 * h)), int(round(y1 * h))
    left, right = int(round(x0 * w)), int(round(x1 * w))
    if bottom <= top or right <= left:
        raise ValueError(f"crop box {box} is empty on a {w}x{h} image")
    return img[top:bottom, left:right]


def orient(img: np.ndarray, rotation: int, mirror: bool) -> np.ndarray:
    """Rotate clockwise by ``rotation`` degrees (0/90/180/270), then mirror left-right when ``mirror``.

    The eight combinations are every way a camera frame can be turned (sensor orientation, front camera).
    """
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    k = (rotation // 90) % 4
    if k:
        img = np.rot90(img, k=-k)  # numpy turns counter-clockwise for positive k
    if mirror:
        img = img[:, ::-1]
    return img


def letterbox_geometry(src_w: int, src_h: int, spec: ResizeSpec) -> tuple[int, int, int, int]:
    """(content width, content height, left, top) of a letterbox of a src_w x src_h image.

    The content keeps the source aspect and fits inside width x height; its size rounds as the spec says
    (``floor``: Java's ``(int) (w * scale)``, with a 1e-6 allowance for float error on the fitting side;
    ``round``: Python/YOLO ``round``, half to even; ``half_up``: Java's ``Math.round``); ``center``
    puts the odd pixel of padding after the content, ``center_up`` before it.
    """
    s = min(spec.width / src_w, spec.height / src_h)
    if spec.rounding == "floor":
        nw, nh = int(np.floor(src_w * s + 1e-6)), int(np.floor(src_h * s + 1e-6))
    elif spec.rounding == "half_up":
        nw, nh = int(np.floor(src_w * s + 0.5)), int(np.floor(src_h * s + 0.5))
    else:
        nw, nh = int(round(src_w * s)), int(round(src_h * s))
    nw, nh = min(max(1, nw), spec.width), min(max(1, nh), spec.height)
    if spec.placement == "top_left":
        return nw, nh, 0, 0
    if spec.placement == "center_up":
        return nw, nh, (spec.width - nw + 1) // 2, (spec.height - nh + 1) // 2
    return nw, nh, (spec.width - nw) // 2, (spec.height - nh) // 2


def _letterbox(img: np.ndarray, spec: ResizeSpec, backend: ResizeBackend = "numpy") -> np.ndarray:
    h, w = img.shape[:2]
    nw, nh, left, top = letterbox_geometry(w, h, spec)
    inner = resize(img, nw, nh, spec.method, backend)
    pad = np.resize(np.asarray(spec.pad_value, dtype=np.float32), img.shape[2])
    out = np.empty((spec.height, spec.width, img.shape[2]), dtype=np.float32)
    out[...] = pad
    out[top : top + nh, left : left + nw] = inner
    return out


def shorter_side_size(src_w: int, src_h: int, shorter: int) -> tuple[int, int]:
    """torchvision ``Resize(S)``: the shorter side becomes S, the longer ``int(S * long / short)``."""
    if src_w <= src_h:
        return shorter, int(shorter * src_h / src_w)
    return int(shorter * src_w / src_h), shorter


def center_crop_offsets(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int]:
    """torchvision ``CenterCrop``: (left, top) = ``int(round((src - crop) / 2))`` (Python's round)."""
    return int(round((src_w - width) / 2.0)), int(round((src_h - height) / 2.0))


def _shorter_side_crop(img: np.ndarray, spec: ResizeSpec, backend: ResizeBackend = "numpy") -> np.ndarray:
    assert spec.shorter_side is not None
    h, w = img.shape[:2]
    nw, nh = shorter_side_size(w, h, spec.shorter_side)
    if nw < spec.width or nh < spec.height:
        raise ValueError(
            f"shorter side {spec.shorter_side} of a {w}x{h} image is smaller than the {spec.width}x"
            f"{spec.height} crop"
        )
    resized = resize(img, nw, nh, spec.method, backend)
    left, top = center_crop_offsets(nw, nh, spec.width, spec.height)
    return resized[top : top + spec.height, left : left + spec.width]


def geometry(img: np.ndarray, r: ResizeSpec, backend: ResizeBackend = "numpy") -> np.ndarray:
    """The resize/crop/letterbox part of a spec on an (already oriented) RGB image: float32 pixels."""
    if r.shorter_side is not None:
        return _shorter_side_crop(img, r, backend)
    if r.keep_aspect and r.crop == "none":
        return _letterbox(img, r, backend)
    if r.crop == "center":
        img = center_crop_to_aspect(img, r.width, r.height)
    return resize(img, r.width, r.height, r.method, backend)


# ------------------------------------------------------------------------------- camera frames (YUV)
# BT.601 limited range ("video range"), as Android camera frames are and as libyuv converts them
# (NV21ToARGB / I420ToARGB with kYuvI601Constants). Chroma is 2x2 subsampled and upsampled by
# repetition (libyuv's row functions use one U/V pair for two pixels on two rows).


# libyuv row_common.cc YuvPixel, 6-bit fixed point: YG = round(1.164 * 64 * 256 * 256 / 257),
# YGB = 1.164 * 64 * -16 + 64 / 2, UB = max(-128, round(-2.018 * 64)), UG = round(0.391 * 64),
# VG = round(0.813 * 64), VR = round(-1.596 * 64).
def source_roundtrip(img: np.ndarray, source_format: str) -> np.ndarray:
    """RGB -> the spec's camera format -> RGB (``rgb``: unchanged)."""
    if source_format == "rgb":
        return img
    from replaybench.replay.yuv import packed_yuv420_to_rgb, rgb_to_yuv420

    layout = {"nv21": "NV21", "i420": "I420"}[source_format]
    h, w = img.shape[:2]
    return packed_yuv420_to_rgb(rgb_to_yuv420(img, layout), w, h, layout)


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
    """The whole spec: camera-format round trip, crop box, orientation, geometry (stretch, centre crop,
    letterbox or shorter side + centre crop), colour order, normalise/quantise, layout. No batch axis.

    ``backend``: see ``resize`` (replay's workers pass ``"onnxruntime"``).

    Example::

        >>> spec = PreprocessSpec(resize=ResizeSpec(width=2, height=2))
        >>> apply_preprocess(np.full((4, 4, 3), 255, np.uint8), spec).shape
        (2, 2, 3)
    """
    r = spec.resize
    img = source_roundtrip(img, spec.source_format)
    img = orient(crop_box(img, r.crop_box), spec.rotation, spec.mirror)
    pixels = geometry(img, r, backend)
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
