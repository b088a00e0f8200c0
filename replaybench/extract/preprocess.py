"""Preprocessing inference: solve for how an app turns a Bitmap into its model's input tensor.

From (source pixels, captured input tensor) pairs, every candidate setting (crop x resize method x colour
order x layout) is run through the replay kernels themselves (``replaybench.replay.preprocess``: the one
implementation replay uses), a per-channel linear map ``tensor = pixel * scale + offset`` is fitted by
least squares, and the candidates are ranked by fit residual, then by how exactly the full spec (with
quantisation) reproduces the captured tensors. Candidates that reproduce the tensors identically are
reported as numerically equivalent alternatives: the evidence cannot separate them, and either is right.

Without pairs, ``preprocess_from_static`` builds the spec from static evidence (TFLite metadata
NormalizationOptions, constants read from app code) and then documented defaults, marking each field's
``Provenance``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any, Literal, Protocol

import numpy as np

from replaybench.bundle import PreprocessSpec, Provenance, QuantParams, ResizeMethod, ResizeSpec
from replaybench.errors import TraceError
from replaybench.replay.preprocess import RESIZE_METHODS, apply_preprocess, crop, resize, to_color_order

log = logging.getLogger(__name__)

Layout = Literal["NHWC", "NCHW"]
ColorOrder = Literal["RGB", "BGR", "GRAY"]
CropMode = Literal["none", "center"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Well-known (mean, std) pairs in 0..255 pixel units, per channel; a fitted map close to one is snapped
# to it (the constants apps actually write), when that does not worsen the fit.
_KNOWN_NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "[0,1]": ((0.0,), (255.0,)),
    "[-1,1] (127.5)": ((127.5,), (127.5,)),
    "[-1,1] (128)": ((128.0,), (128.0,)),
    "raw 0..255": ((0.0,), (1.0,)),
    "centred raw (-128)": ((128.0,), (1.0,)),
    "ImageNet mean/std": (tuple(m * 255 for m in IMAGENET_MEAN), tuple(s * 255 for s in IMAGENET_STD)),
    "ImageNet mean/std on [0,255]": (tuple(m * 255 for m in IMAGENET_MEAN), (1.0,)),
}


class QuantLike(Protocol):
    @property
    def scale(self) -> float: ...
    @property
    def zero_point(self) -> int: ...


class TensorSample(Protocol):
    """A captured input tensor (``trace_match.TracedTensor`` is one)."""

    @property
    def array(self) -> np.ndarray: ...
    @property
    def quantization(self) -> Any: ...


@dataclass(frozen=True)
class Candidate:
    crop: CropMode
    method: ResizeMethod
    color_order: ColorOrder
    layout: Layout

    def describe(self) -> dict[str, object]:
        return {
            "crop": self.crop,
            "method": self.method,
            "color_order": self.color_order,
            "layout": self.layout,
        }


@dataclass
class _Fit:
    cand: Candidate
    scale: np.ndarray
    offset: np.ndarray
    rms: float
    spec: PreprocessSpec | None = None
    repro_max: float = np.inf  # max |error| of the full spec, real units (quantised: in steps)
    repro_mean: float = np.inf
    reproduced: list[np.ndarray] | None = None


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise TraceError(f"a source bitmap must be (H, W, 3|4) uint8, got {img.shape} {img.dtype}")
    return np.ascontiguousarray(img[..., :3])


def _squeeze(t: np.ndarray) -> np.ndarray:
    """Drop leading batch axes of 1 down to 3 dimensions (a 2-D tensor is one grey channel)."""
    while t.ndim > 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 2:
        t = t[..., None]
    if t.ndim != 3:
        raise TraceError(f"the input tensor is not an image tensor: shape {t.shape}")
    return t


def _layouts(shape: tuple[int, ...]) -> list[Layout]:
    hwc = shape[2] in (1, 3)
    chw = shape[0] in (1, 3)
    if hwc and not chw:
        return ["NHWC"]
    if chw and not hwc:
        return ["NCHW"]
    if hwc and chw:
        return ["NHWC", "NCHW"]
    raise TraceError(f"cannot find the channel axis of an image tensor of shape {shape}")


def _dequantize(t: np.ndarray, q: QuantLike | None) -> np.ndarray:
    if q is not None and np.issubdtype(t.dtype, np.integer):
        return (t.astype(np.float64) - q.zero_point) * q.scale
    return t.astype(np.float64)


def _hwc(t: np.ndarray, layout: Layout) -> np.ndarray:
    return t.transpose(1, 2, 0) if layout == "NCHW" else t


def _quant(q: Any) -> QuantParams | None:
    if q is None or not getattr(q, "scale", 0):
        return None
    return QuantParams(scale=float(q.scale), zero_point=int(q.zero_point))


def _resized(img: np.ndarray, cand: Candidate, width: int, height: int) -> np.ndarray:
    spec = ResizeSpec(width=width, height=height, method=cand.method, crop=cand.crop)
    return to_color_order(resize(crop(img, spec), width, height, cand.method), cand.color_order)


def _fit(pixels: list[np.ndarray], targets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-channel least squares ``target = pixel * scale + offset``; returns scale, offset, RMS."""
    p = np.concatenate([x.reshape(-1, x.shape[-1]) for x in pixels]).astype(np.float64)
    y = np.concatenate([x.reshape(-1, x.shape[-1]) for x in targets])
    channels = y.shape[1]
    scale = np.zeros(channels)
    offset = np.zeros(channels)
    sq = 0.0
    for c in range(channels):
        a = np.stack([p[:, c], np.ones(len(p))], axis=1)
        (s, o), *_ = np.linalg.lstsq(a, y[:, c], rcond=None)
        scale[c], offset[c] = s, o
        sq += float(np.sum((p[:, c] * s + o - y[:, c]) ** 2))
    return scale, offset, float(np.sqrt(sq / y.size))


def _snap(
    scale: np.ndarray, offset: np.ndarray, pixels: list[np.ndarray], targets: list[np.ndarray], rms: float
) -> tuple[np.ndarray, np.ndarray, float, str | None]:
    """Replace a fitted map by a well-known normalisation when that fits as well (within noise)."""
    p = np.concatenate([x.reshape(-1, x.shape[-1]) for x in pixels]).astype(np.float64)
    y = np.concatenate([x.reshape(-1, x.shape[-1]) for x in targets])
    best: tuple[float, np.ndarray, np.ndarray, str] | None = None
    for name, (mean, std) in _KNOWN_NORMALISATIONS.items():
        c = len(scale)
        m = np.resize(np.asarray(mean, dtype=np.float64), c)
        s = np.resize(np.asarray(std, dtype=np.float64), c)
        sc, of = 1.0 / s, -m / s
        if not np.allclose(sc, scale, rtol=5e-3, atol=1e-9) or not np.allclose(
            of, offset, atol=5e-3 * np.abs(sc).max() * 255
        ):
            continue
        r = float(np.sqrt(np.mean((p * sc + of - y) ** 2)))
        if r <= rms * 1.05 + 1e-7 and (best is None or r < best[0]):
            best = (r, sc, of, name)
    if best is None:
        return scale, offset, rms, None
    return best[1], best[2], best[0], best[3]


def _spec(fit: _Fit, width: int, height: int, dtype: str, q: QuantParams | None) -> PreprocessSpec:
    return PreprocessSpec(
        resize=ResizeSpec(width=width, height=height, method=fit.cand.method, crop=fit.cand.crop),
        color_order=fit.cand.color_order,
        layout=fit.cand.layout,
        dtype=dtype,  # type: ignore[arg-type]
        scale=[float(x) for x in fit.scale],
        offset=[float(x) for x in fit.offset],
        quantization=q,
    )


def _reproduce(
    fit: _Fit, images: list[np.ndarray], captured: list[np.ndarray], q: QuantParams | None
) -> None:
    assert fit.spec is not None
    outs = [apply_preprocess(img, fit.spec) for img in images]
    errs = []
    for out, cap in zip(outs, captured, strict=True):
        d = np.abs(out.astype(np.float64) - cap.astype(np.float64))
        errs.append(d)
    allerr = np.concatenate([e.ravel() for e in errs])
    fit.repro_max = float(allerr.max())
    fit.repro_mean = float(allerr.mean())
    fit.reproduced = outs


_DTYPES = {"float32", "float16", "uint8", "int8"}


def infer_preprocess(
    pairs: Sequence[tuple[np.ndarray, TensorSample]],
    *,
    methods: Sequence[ResizeMethod] = RESIZE_METHODS,
    top: int = 8,
) -> PreprocessSpec:
    """Solve for the preprocessing from (source image, captured input tensor) pairs.

    Images are (H, W, 3|4) uint8 RGB(A) (a Bitmap's non-premultiplied pixels); tensors carry their
    captured dtype and quantisation. Returns a ``PreprocessSpec`` whose fields all have provenance
    ``trace``, the fit residuals in ``residual`` and the ranked runners-up in ``alternatives`` (with
    ``equivalent: true`` where a runner-up reproduces the captured tensors exactly as the winner does).

    Example::

        spec = infer_preprocess(preprocessing_pairs(trace, model_sha256))
        spec.resize.method, spec.mean, spec.std, spec.residual["fit_rms"]
    """
    if not pairs:
        raise TraceError("no (bitmap, input tensor) pairs to infer preprocessing from")
    images = [_rgb(img) for img, _ in pairs]
    raw = [_squeeze(np.asarray(t.array)) for _, t in pairs]
    shapes = {r.shape for r in raw}
    if len(shapes) != 1:
        raise TraceError(f"the pairs' tensors differ in shape: {sorted(shapes)}")
    shape = raw[0].shape
    dtype = str(raw[0].dtype)
    if dtype not in _DTYPES:
        raise TraceError(f"cannot infer preprocessing for a {dtype} input tensor")
    q = _quant(pairs[0][1].quantization) if np.issubdtype(raw[0].dtype, np.integer) else None
    layouts = _layouts(shape)
    step = q.scale if q is not None else (1.0 if np.issubdtype(raw[0].dtype, np.integer) else None)

    fits: list[_Fit] = []
    for layout in layouts:
        hwc = [_hwc(r, layout) for r in raw]
        height, width, channels = hwc[0].shape
        reals = [_dequantize(t, q) for t in hwc]
        colors: list[ColorOrder] = ["GRAY"] if channels == 1 else ["RGB", "BGR"]
        # A centre crop changes nothing when every source already has the target aspect: do not offer it.
        crops: list[CropMode] = ["none"]
        if any(abs(img.shape[1] / img.shape[0] - width / height) > 1e-6 for img in images):
            crops.append("center")
        for crop_mode, method in product(crops, methods):
            base = Candidate(crop_mode, method, "RGB", layout)
            resized = [_resized(img, base, width, height) for img in images]
            for color in colors:
                px = [to_color_order(r, color) for r in resized]
                scale, offset, rms = _fit(px, reals)
                fits.append(_Fit(Candidate(crop_mode, method, color, layout), scale, offset, rms))
                fits[-1].reproduced = px  # temporarily: the pixels, for snapping the winner

    fits.sort(key=lambda f: f.rms)
    finalists = fits[:top]
    for f in finalists:
        h, w = (shape[0], shape[1]) if f.cand.layout == "NHWC" else (shape[1], shape[2])
        hwc_real = [_dequantize(_hwc(r, f.cand.layout), q) for r in raw]
        assert f.reproduced is not None
        f.scale, f.offset, f.rms, snapped = _snap(f.scale, f.offset, f.reproduced, hwc_real, f.rms)
        f.spec = _spec(f, w, h, dtype, q)
        if snapped:
            f.spec.notes.append(f"scale/offset match the well-known normalisation {snapped}")
        _reproduce(f, images, raw, q)
    # The winner reproduces the captured tensors best (mean error, then worst error, then fit RMS);
    # ties keep the order of RESIZE_METHODS (simplest kernel first) through the stable sort.
    finalists.sort(key=lambda f: (round(f.repro_mean, 9), round(f.repro_max, 9), f.rms))
    best = finalists[0]
    assert best.spec is not None and best.reproduced is not None
    spec = best.spec
    tol = 0.5 if step is not None else 1e-6
    alternatives: list[dict[str, object]] = []
    for f in finalists[1:]:
        assert f.reproduced is not None
        equivalent = all(
            np.abs(a.astype(np.float64) - b.astype(np.float64)).max() <= tol
            for a, b in zip(f.reproduced, best.reproduced, strict=True)
        )
        alternatives.append(
            {
                **f.cand.describe(),
                "fit_rms": f.rms,
                "max_error": f.repro_max,
                "mean_error": f.repro_mean,
                "scale": [float(x) for x in f.scale],
                "offset": [float(x) for x in f.offset],
                "equivalent": equivalent,
            }
        )
    spec.alternatives = alternatives
    margin = (finalists[1].repro_mean - best.repro_mean) if len(finalists) > 1 else float("inf")
    spec.residual = {
        "fit_rms": best.rms,
        "max_error": best.repro_max,
        "mean_error": best.repro_mean,
        "runner_up_margin": margin,
    }
    if np.issubdtype(raw[0].dtype, np.integer):
        spec.residual["max_error_steps"] = best.repro_max  # integer tensors: errors are in steps
    for name in ("resize", "color_order", "layout", "dtype", "scale", "offset", "quantization"):
        spec.provenance[name] = Provenance.TRACE
    equivalents = [a for a in alternatives if a["equivalent"]]
    spec.notes.extend(
        [
            f"solved from {len(pairs)} (bitmap, tensor) pairs over {len(fits)} candidate settings",
            f"output size {spec.resize.width}x{spec.resize.height} and layout {spec.layout} from the tensor "
            f"shape {list(shape)}" + (" (ambiguous axis: both layouts fitted)" if len(layouts) > 1 else ""),
            "mean/std (pixel units): "
            + ", ".join(f"{m:.4g}/{s:.4g}" for m, s in zip(spec.mean, spec.std, strict=True)),
        ]
    )
    if q is not None:
        spec.notes.append(
            f"quantisation scale {q.scale:.6g}, zero point {q.zero_point} from the captured tensor"
        )
    if equivalents:
        spec.notes.append(
            "the evidence cannot separate "
            + ", ".join(f"{a['method']}/{a['crop']}/{a['color_order']}" for a in equivalents)
            + f" from {best.cand.method}/{best.cand.crop}/{best.cand.color_order}: they reproduce the captured "
            "tensors identically"
        )
    log.info("preprocessing: %s (fit rms %.3g)", best.cand, best.rms)
    return spec


# ---------------------------------------------------------------------------------- static evidence


@dataclass(frozen=True)
class Normalization:
    """``(pixel - mean) / std`` per channel in 0..255 units, as found statically."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    provenance: Provenance  # METADATA (TFLite NormalizationOptions), APP_CODE, USER

    @classmethod
    def from_unit(cls, mean: Sequence[float], std: Sequence[float], provenance: Provenance) -> Normalization:
        """From mean/std on 0..1 pixels (torchvision style)."""
        return cls(tuple(m * 255 for m in mean), tuple(s * 255 for s in std), provenance)


def preprocess_from_static(
    input_shape: Sequence[int],
    input_dtype: str,
    quantization: QuantParams | None = None,
    *,
    normalization: Sequence[Normalization] = (),
    resize_method: ResizeMethod | None = None,
    resize_provenance: Provenance = Provenance.APP_CODE,
    color_order: ColorOrder | None = None,
) -> PreprocessSpec:
    """A spec without a trace: the model's input tensor gives size, layout, dtype and quantisation
    (``metadata``); the strongest normalisation given (metadata over app code) gives scale/offset;
    everything else is a documented default: bilinear_tf resize, RGB, float inputs on [0,1], and
    integer inputs fed raw pixel bytes (uint8) or pixel - 128 (int8).
    """
    shape = tuple(int(x) for x in input_shape)
    t = shape
    while len(t) > 3 and t[0] == 1:
        t = t[1:]
    if len(t) == 2:
        t = (*t, 1)
    if len(t) != 3:
        raise TraceError(f"the model input is not an image tensor: shape {list(shape)}")
    layout: Layout = _layouts(t)[0]
    h, w, c = (t[0], t[1], t[2]) if layout == "NHWC" else (t[1], t[2], t[0])
    if input_dtype not in _DTYPES:
        raise TraceError(f"cannot build preprocessing for a {input_dtype} input tensor")
    prov: dict[str, Provenance] = {
        "resize": Provenance.METADATA,
        "layout": Provenance.METADATA,
        "dtype": Provenance.METADATA,
        "quantization": Provenance.METADATA,
    }
    notes = [f"size {w}x{h}, layout {layout}, dtype {input_dtype} from the model's input tensor"]
    method: ResizeMethod = resize_method or "bilinear_tf"
    if resize_method is None:
        notes.append("resize method: default bilinear_tf (TFLite Support ResizeOp geometry)")
    else:
        notes.append(f"resize method {resize_method} from {resize_provenance.value}")
    order: ColorOrder = color_order or ("GRAY" if c == 1 else "RGB")
    prov["color_order"] = Provenance.APP_CODE if color_order else Provenance.DEFAULT
    ranked = sorted(normalization, key=lambda n: list(Provenance).index(n.provenance))
    if ranked:
        n = ranked[0]
        mean = np.resize(np.asarray(n.mean, np.float64), c)
        std = np.resize(np.asarray(n.std, np.float64), c)
        scale, offset = list(1.0 / std), list(-mean / std)
        prov["scale"] = prov["offset"] = n.provenance
        notes.append(f"mean {list(n.mean)} / std {list(n.std)} from {n.provenance.value}")
        if len(ranked) > 1 and (ranked[1].mean != n.mean or ranked[1].std != n.std):
            notes.append(
                f"{ranked[1].provenance.value} says mean {list(ranked[1].mean)} / std {list(ranked[1].std)}: "
                f"{n.provenance.value} wins"
            )
    elif input_dtype in ("uint8", "int8"):
        shift = 0 if input_dtype == "uint8" else -128
        qs, zp = (quantization.scale, quantization.zero_point) if quantization else (1.0, 0)
        # q = pixel + shift  <=>  real = (pixel + shift - zp) * qs
        scale, offset = [qs], [(shift - zp) * qs]
        prov["scale"] = prov["offset"] = Provenance.DEFAULT
        notes.append(f"default: {input_dtype} input fed the raw pixel bytes" + (" - 128" if shift else ""))
    else:
        scale, offset = [1.0 / 255.0], [0.0]
        prov["scale"] = prov["offset"] = Provenance.DEFAULT
        notes.append("default: float input on [0, 1] (pixel / 255)")
    return PreprocessSpec(
        resize=ResizeSpec(width=w, height=h, method=method),
        color_order=order,
        layout=layout,
        dtype=input_dtype,  # type: ignore[arg-type]
        scale=[float(x) for x in scale],
        offset=[float(x) for x in offset],
        quantization=quantization if input_dtype in ("uint8", "int8") else None,
        provenance=prov | {"resize.method": resize_provenance if resize_method else Provenance.DEFAULT},
        notes=notes,
    )
