"""Image -> input tensor, exactly as a bundle's ``PreprocessSpec`` says. Implemented once, used everywhere.

Replay runs it for every image; trace-based preprocessing inference (``extract/preprocess.py``) runs the
same kernels to test candidate settings against captured tensors, so the two can never disagree.

Input images are ``uint8`` arrays of shape (H, W, 3) in RGB order. Resize kernels return ``float32``
(H', W', C); the kernels that model an 8-bit intermediate image (an Android Bitmap, a PIL image) round to
integers, the TF kernels do not.
"""

from __future__ import annotations

from functools import lru_cache

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


def resize(img: np.ndarray, width: int, height: int, method: ResizeMethod) -> np.ndarray:
    """Resize an (H, W, C) uint8 image to (height, width, C) float32 with the named kernel.

    ``bilinear_tf`` is ``tf.image.resize(..., "bilinear")`` (half-pixel centres, no antialiasing), which the
    TFLite support library's ``ResizeOp`` uses; ``bilinear_android`` is the same geometry rounded to 8 bits,
    as ``Bitmap.createScaledBitmap(.., filter=true)`` produces a new 8-bit Bitmap.
    """
    if img.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {img.shape}")
    if img.shape[0] == height and img.shape[1] == width:
        return img.astype(np.float32)
    if method == "nearest":
        return img[_nearest_axis(img.shape[0], height)][:, _nearest_axis(img.shape[1], width)].astype(
            np.float32
        )
    if method == "bilinear_tf":
        return _bilinear(img, width, height, half_pixel=True)
    if method == "bilinear_android":
        return np.rint(_bilinear(img, width, height, half_pixel=True))
    if method == "bilinear_tf_legacy":
        return _bilinear(img, width, height, half_pixel=False)
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


def _letterbox(img: np.ndarray, spec: ResizeSpec) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(spec.width / w, spec.height / h)
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    inner = resize(img, nw, nh, spec.method)
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


def apply_preprocess(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The whole spec: crop, resize, colour order, normalise/quantise, layout. Returns no batch axis.

    Example::

        >>> spec = PreprocessSpec(resize=ResizeSpec(width=2, height=2))
        >>> apply_preprocess(np.full((4, 4, 3), 255, np.uint8), spec).shape
        (2, 2, 3)
    """
    r = spec.resize
    img = crop(img, r)
    if r.keep_aspect and r.crop == "none":
        pixels = _letterbox(img, r)
    else:
        pixels = resize(img, r.width, r.height, r.method)
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
