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
from typing import Any, Literal, Protocol

import numpy as np

from replaybench.bundle import PreprocessSpec, Provenance, QuantParams, ResizeMethod, ResizeSpec
from replaybench.errors import TraceError
from replaybench.replay.preprocess import (
    RESIZE_METHODS,
    apply_preprocess,
    center_crop_offsets,
    center_crop_to_aspect,
    geometry,
    letterbox_geometry,
    orient,
    resize,
    shorter_side_size,
    to_color_order,
)

log = logging.getLogger(__name__)

Layout = Literal["NHWC", "NCHW"]
ColorOrder = Literal["RGB", "BGR", "GRAY"]

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


GeometryKind = Literal["stretch", "center", "letterbox", "shorter_side"]


@dataclass(frozen=True)
class Geometry:
    """One way from the source image to the tensor's width x height, orientation included."""

    kind: GeometryKind
    rotation: int = 0
    mirror: bool = False
    placement: Literal["center", "center_up", "top_left"] = "center"  # letterbox
    rounding: Literal["round", "floor", "half_up"] = "round"  # letterbox
    shorter_side: int | None = None  # shorter_side

    def resize_spec(
        self, width: int, height: int, method: ResizeMethod, pad: Sequence[float] = (0.0,)
    ) -> ResizeSpec:
        return ResizeSpec(
            width=width,
            height=height,
            method=method,
            crop="center" if self.kind == "center" else "none",
            keep_aspect=self.kind == "letterbox",
            placement=self.placement,
            rounding=self.rounding,
            pad_value=[float(x) for x in pad],
            shorter_side=self.shorter_side if self.kind == "shorter_side" else None,
        )

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {"geometry": self.kind, "rotation": self.rotation, "mirror": self.mirror}
        if self.kind == "letterbox":
            d |= {"placement": self.placement, "rounding": self.rounding}
        if self.kind == "shorter_side":
            d["shorter_side"] = self.shorter_side
        return d

    @property
    def simplicity(self) -> int:
        """Tie-break order: the plainest explanation first (no turn, no mirror, then stretch ... S)."""
        kinds: tuple[GeometryKind, ...] = ("stretch", "center", "letterbox", "shorter_side")
        return (self.rotation // 90) * 2 + int(self.mirror) + 8 * kinds.index(self.kind)


@dataclass(frozen=True)
class Candidate:
    geometry: Geometry
    method: ResizeMethod
    color_order: ColorOrder
    layout: Layout

    def describe(self) -> dict[str, object]:
        return {
            **self.geometry.describe(),
            "crop": "center" if self.geometry.kind == "center" else "none",
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
    pad: list[float] | None = None  # letterbox padding, RGB pixel units
    spec: PreprocessSpec | None = None
    repro_max: float = np.inf  # max |error| of the full spec, real units (quantised: in steps)
    repro_mean: float = np.inf
    reproduced: list[np.ndarray] | None = None
    pixels: list[np.ndarray] | None = None
    masks: list[np.ndarray | None] | None = None


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


# ------------------------------------------------------------------------------------------- fitting


def _fit_channels(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Closed-form per-channel least squares ``y = p * scale + offset`` on (N, C) arrays.

    Returns scale, offset and the sum of squared residuals. A constant channel (no variance in the
    pixels) gets scale 0 and the mean as offset. Sums run on (C, N) rows (contiguous reductions).
    """
    pt, yt = np.ascontiguousarray(p.T), np.ascontiguousarray(y.T)
    n = pt.shape[1]
    pm, ym = pt.mean(axis=1), yt.mean(axis=1)
    dp, dy = pt - pm[:, None], yt - ym[:, None]
    var = np.einsum("cn,cn->c", dp, dp)
    cov = np.einsum("cn,cn->c", dp, dy)
    scale = np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0)
    offset = ym - scale * pm
    yy = np.einsum("cn,cn->c", dy, dy)
    sse = float(np.maximum(yy - scale * cov, 0.0).sum()) if n else 0.0
    return scale, offset, sse


def _masked(
    pixels: list[np.ndarray], targets: list[np.ndarray], masks: list[np.ndarray | None], step: int = 1
):
    """Content pixels and targets as (N, C) arrays, and the pad targets (N', C) (letterbox)."""
    ps, ys, pads = [], [], []
    for px, t, m in zip(pixels, targets, masks, strict=True):
        if step > 1:
            px, t = px[::step, ::step], t[::step, ::step]
            m = m[::step, ::step] if m is not None else None
        c = t.shape[-1]
        if m is None:
            ps.append(px.reshape(-1, px.shape[-1]))
            ys.append(t.reshape(-1, c))
        else:
            ps.append(px[m])
            ys.append(t[m])
            pads.append(t[~m])
    p = np.concatenate(ps).astype(np.float64)
    y = np.concatenate(ys).astype(np.float64)
    pad = np.concatenate(pads).astype(np.float64) if pads else np.zeros((0, y.shape[1]))
    return p, y, pad


def _fit(
    pixels: list[np.ndarray],
    targets: list[np.ndarray],
    masks: list[np.ndarray | None] | None = None,
    step: int = 1,
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Per-channel linear map on the content, a constant per channel on the padding. Returns scale,
    offset, RMS over every tensor value, and the padding's mean tensor value per channel."""
    masks = masks or [None] * len(pixels)
    p, y, pad = _masked(pixels, targets, masks, step)
    scale, offset, sse = _fit_channels(p, y)
    pad_mean = pad.mean(axis=0) if len(pad) else np.zeros(y.shape[1])
    if len(pad):
        sse += float(((pad - pad_mean) ** 2).sum())
    n = (len(y) + len(pad)) * y.shape[1]
    return scale, offset, float(np.sqrt(sse / max(n, 1))), pad_mean


def _snap(
    scale: np.ndarray, offset: np.ndarray, p: np.ndarray, y: np.ndarray, rms: float
) -> tuple[np.ndarray, np.ndarray, float, str | None]:
    """Replace a fitted map by a well-known normalisation when that fits as well (within noise)."""
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


# ----------------------------------------------------------------------------------------- geometry


def _oriented_size(img: np.ndarray, rotation: int) -> tuple[int, int]:
    h, w = img.shape[:2]
    return (h, w) if rotation in (90, 270) else (w, h)


def _render(
    img: np.ndarray, g: Geometry, method: ResizeMethod, width: int, height: int
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Exactly what replay does for this geometry (RGB float32 pixels) and the content mask of a
    letterbox (None otherwise); None when the geometry does not apply to this image."""
    src = orient(img, g.rotation, g.mirror)
    spec = g.resize_spec(width, height, method)
    if g.kind == "shorter_side":
        assert g.shorter_side is not None
        nw, nh = shorter_side_size(src.shape[1], src.shape[0], g.shorter_side)
        if nw < width or nh < height:
            return None
    px = geometry(src, spec)
    if g.kind != "letterbox":
        return px, None
    nw, nh, left, top = letterbox_geometry(src.shape[1], src.shape[0], spec)
    mask = np.zeros((height, width), bool)
    mask[top : top + nh, left : left + nw] = True
    return px, mask


class _CoarseRenderer:
    """Cheap stand-in for ``_render`` in the geometry search: the resize runs once per rotation class
    on the un-turned image (a 90-degree turn swaps the target size) and the small result is turned and
    mirrored, instead of resizing all eight orientations of a full-size photo. Symmetric kernels make
    the two orders agree up to rounding; the exact order is what the final ranking uses."""

    def __init__(self, img: np.ndarray, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.size = (img.shape[0], img.shape[1])  # the real source size: every geometry is computed on it
        # A camera frame or a 12 MP photo feeding a 224 px tensor: the coarse search resizes a copy shrunk
        # (area) to 4x the tensor, so the search costs what the tensor size costs, not the photo size.
        limit = 4 * max(width, height)
        if min(self.size) > limit:
            k = limit / min(self.size)
            from PIL import Image

            small = Image.fromarray(img).resize(
                (max(1, round(img.shape[1] * k)), max(1, round(img.shape[0] * k))), Image.Resampling.BOX
            )
            img = np.asarray(small)
        self.img = img
        self._cache: dict[tuple[object, ...], np.ndarray | None] = {}

    def _base(self, g: Geometry, method: ResizeMethod, swap: bool) -> np.ndarray | None:
        key = (g.kind, g.placement, g.rounding, g.shorter_side, method, swap)
        if key in self._cache:
            return self._cache[key]
        img = self.img
        h, w = self.size
        tw, th = (self.height, self.width) if swap else (self.width, self.height)
        out: np.ndarray | None
        if g.kind == "stretch":
            out = resize(img, tw, th, method)
        elif g.kind == "center":
            out = resize(center_crop_to_aspect(img, tw, th), tw, th, method)
        elif g.kind == "shorter_side":
            assert g.shorter_side is not None
            nw, nh = shorter_side_size(w, h, g.shorter_side)
            out = resize(img, nw, nh, method) if nw >= tw and nh >= th else None
        else:  # letterbox: the content only, sized in the turned frame
            ow, oh = (h, w) if swap else (w, h)
            nw, nh, _, _ = letterbox_geometry(ow, oh, g.resize_spec(self.width, self.height, method))
            out = resize(img, nh, nw, method) if swap else resize(img, nw, nh, method)
        self._cache[key] = out
        return out

    def render(self, g: Geometry, method: ResizeMethod) -> tuple[np.ndarray, np.ndarray | None] | None:
        base = self._base(g, method, g.rotation in (90, 270))
        if base is None:
            return None
        turned = orient(base, g.rotation, g.mirror)
        if g.kind == "shorter_side":
            left, top = center_crop_offsets(turned.shape[1], turned.shape[0], self.width, self.height)
            return turned[top : top + self.height, left : left + self.width], None
        if g.kind != "letterbox":
            return turned, None
        ow, oh = (self.size[0], self.size[1]) if g.rotation in (90, 270) else (self.size[1], self.size[0])
        nw, nh, left, top = letterbox_geometry(ow, oh, g.resize_spec(self.width, self.height, method))
        canvas = np.zeros((self.height, self.width, turned.shape[2]), np.float32)
        canvas[top : top + nh, left : left + nw] = turned
        mask = np.zeros((self.height, self.width), bool)
        mask[top : top + nh, left : left + nw] = True
        return canvas, mask


_ORIENTATIONS = [(r, m) for r in (0, 90, 180, 270) for m in (False, True)]
_COARSE_METHODS: tuple[ResizeMethod, ...] = ("area", "bilinear_tf")  # antialiased and not: one fits each
_KEEP_GEOMETRIES = 4
_RANK_PAIRS = 3  # pairs every exact candidate is fitted on before the finalists see them all


def _colors(channels: int) -> list[ColorOrder]:
    return ["GRAY"] if channels == 1 else ["RGB", "BGR"]


def _sample_step(t: np.ndarray, samples: int = 4096) -> int:
    """Pixel stride that leaves about ``samples`` pixels of a tensor for the coarse fits."""
    return max(1, int(np.sqrt(t.shape[0] * t.shape[1] / samples)))


def _coarse_score(
    renderers: list[_CoarseRenderer], targets: list[np.ndarray], g: Geometry, channels: int, spread: float
) -> float:
    """Relative RMS (of the tensor's standard deviation) of the best linear fit, over cheap kernels."""
    best = np.inf
    for method in _COARSE_METHODS:
        rendered = [r.render(g, method) for r in renderers]
        if any(x is None for x in rendered):
            return np.inf
        masks = [x[1] for x in rendered if x is not None]
        for color in _colors(channels):
            px = [to_color_order(x[0], color) for x in rendered if x is not None]
            _, _, rms, _ = _fit(px, targets, masks, step=_sample_step(targets[0]))
            best = min(best, rms)
    return best / spread


def _search_geometry(
    images: list[np.ndarray], targets: list[np.ndarray], width: int, height: int
) -> tuple[list[Geometry], int]:
    """Coarse-to-fine geometry and orientation search on up to two pairs with cheap kernels: every
    orientation x (stretch, centre crop, letterbox placements/roundings, shorter side S on a grid of
    step ~1/56 of the size, then S refined to 1 pixel around the best). Returns the best few geometries
    and the number of settings scored."""
    renderers = [_CoarseRenderer(img, width, height) for img in images[:2]]
    tgts = targets[:2]
    channels = tgts[0].shape[-1]
    scored: dict[Geometry, float] = {}
    spread = float(np.concatenate([t.ravel() for t in tgts]).std()) or 1.0

    def score(g: Geometry) -> float:
        if g not in scored:
            scored[g] = _coarse_score(renderers, tgts, g, channels, spread)
        return scored[g]

    for rot, mir in _ORIENTATIONS:
        score(Geometry("stretch", rot, mir))
        aspects = {_oriented_size(img, rot) for img in images}
        if any(abs(w / h - width / height) > 1e-6 for w, h in aspects):
            score(Geometry("center", rot, mir))
            seen: set[tuple[tuple[int, int, int, int], ...]] = set()
            for placement in ("center", "center_up", "top_left"):
                for rounding in ("round", "floor", "half_up"):
                    g = Geometry("letterbox", rot, mir, placement, rounding)  # type: ignore[arg-type]
                    # Roundings that place every image's content identically are one candidate.
                    boxes = tuple(
                        letterbox_geometry(*_oriented_size(img, rot), g.resize_spec(width, height, "area"))
                        for img in images
                    )
                    if boxes not in seen:
                        seen.add(boxes)
                        score(g)
    # Shorter side S: torchvision-style Resize(S) + CenterCrop. S from the smallest that covers the crop
    # to 1.6x the crop (Resize(256)+CenterCrop(224) is 1.14x), coarse then to one pixel.
    lo = max(width, height)
    hi = int(1.6 * max(width, height))
    step = max(1, round(max(width, height) / 28))
    best_orients = sorted(scored, key=lambda g: scored[g])[:2]
    orients = {(g.rotation, g.mirror) for g in best_orients} | {(0, False)}
    for rot, mir in orients:
        coarse = {
            s: score(Geometry("shorter_side", rot, mir, shorter_side=s)) for s in range(lo, hi + 1, step)
        }
        finite = {s: v for s, v in coarse.items() if np.isfinite(v)}
        if not finite:
            continue
        s0 = min(finite, key=lambda s: finite[s])
        for s in range(max(lo, s0 - step + 1), s0 + step):
            score(Geometry("shorter_side", rot, mir, shorter_side=s))
    ranked = sorted(scored, key=lambda g: (round(scored[g], 4), g.simplicity))
    ranked = [g for g in ranked if np.isfinite(scored[g])]
    keep: list[Geometry] = []
    for g in ranked:
        if len(keep) >= _KEEP_GEOMETRIES:
            break
        keep.append(g)
    # A turn's mirror image can score alike on symmetric content (faces): keep it for the exact ranking.
    if keep:
        g0 = keep[0]
        twin = Geometry(g0.kind, g0.rotation, not g0.mirror, g0.placement, g0.rounding, g0.shorter_side)
        if twin not in keep and twin in scored:
            keep.append(twin)
    return keep, len(scored)


# ----------------------------------------------------------------------------------- crop box search


def _gray(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64).mean(axis=-1)  # channel mean: the same for RGB and BGR


def _ncc_best(source: np.ndarray, template: np.ndarray) -> tuple[float, int, int]:
    """Best normalised cross-correlation of ``template`` inside ``source`` (2-D): (score, x, y)."""
    from scipy.signal import fftconvolve

    th, tw = template.shape
    t0 = template - template.mean()
    tnorm = float(np.sqrt((t0 * t0).sum()))
    if tnorm == 0 or th > source.shape[0] or tw > source.shape[1]:
        return -1.0, 0, 0
    corr = fftconvolve(source, t0[::-1, ::-1], mode="valid")
    ones = np.ones((th, tw))
    s1 = fftconvolve(source, ones, mode="valid")
    s2 = fftconvolve(source * source, ones, mode="valid")
    var = np.maximum(s2 - s1 * s1 / (th * tw), 1e-9)
    ncc = corr / (np.sqrt(var) * tnorm)
    y, x = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    return float(ncc[y, x]), int(x), int(y)


def _box_residual(
    img: np.ndarray, box: tuple[int, int, int, int], target: np.ndarray, method: ResizeMethod
) -> float:
    x0, y0, x1, y1 = box
    h, w = target.shape[:2]
    px = resize(img[y0:y1, x0:x1], w, h, method)
    best = np.inf
    for color in _colors(target.shape[-1]):
        _, _, rms, _ = _fit([to_color_order(px, color)], [target], None, step=_sample_step(target, 8192))
        best = min(best, rms)
    return best


def _find_box(
    img: np.ndarray,
    target: np.ndarray,
    method: ResizeMethod = "area",
    start: tuple[int, int, int, int] | None = None,
) -> tuple[tuple[int, int, int, int], float]:
    """The source region (x0, y0, x1, y1 in pixels) that, stretched to the tensor, explains it best.

    Coarse: normalised cross-correlation of the tensor (shrunk to each candidate box size, the tensor's
    aspect, sizes 2% apart) against the source shrunk to ~160 px. Fine: coordinate descent on the four
    edges at full resolution with the real resize and a linear fit, steps halving down to one pixel.
    Returns the box and its relative residual (RMS / tensor standard deviation).
    """
    from PIL import Image

    H, W = img.shape[:2]
    h, w = target.shape[:2]
    spread = float(target.std()) or 1.0
    if start is None:
        f = min(1.0, 160.0 / max(H, W))
        small = np.asarray(
            Image.fromarray(img).resize((max(1, round(W * f)), max(1, round(H * f))), Image.Resampling.BOX)
        )
        sg = _gray(small)
        tg = Image.fromarray(_gray(target).astype(np.float32), mode="F")
        best = (-2.0, 0, 0, W, H)
        bw = float(W)
        while bw * f >= 6:
            bh = bw * h / w
            if bh <= H:
                tw_, th_ = max(2, round(bw * f)), max(2, round(bh * f))
                tmpl = np.asarray(tg.resize((tw_, th_), Image.Resampling.BOX), dtype=np.float64)
                score, x, y = _ncc_best(sg, tmpl)
                if score > best[0]:
                    best = (score, x, y, tw_, th_)
            bw /= 1.02
        _, x, y, tw_, th_ = best
        box = [round(x / f), round(y / f), round((x + tw_) / f), round((y + th_) / f)]
        step = max(1, int(round(1 / f)))
    else:
        box, step = list(start), 1
    box = [min(max(box[0], 0), W - 1), min(max(box[1], 0), H - 1), min(box[2], W), min(box[3], H)]
    cur = _box_residual(img, tuple(box), target, method)  # type: ignore[arg-type]
    while step >= 1:
        improved = True
        while improved:
            improved = False
            for i in range(4):
                for d in (-step, step):
                    cand = list(box)
                    cand[i] += d
                    if not (0 <= cand[0] < cand[2] <= W and 0 <= cand[1] < cand[3] <= H):
                        continue
                    r = _box_residual(img, tuple(cand), target, method)  # type: ignore[arg-type]
                    if r < cur - 1e-12:
                        box, cur, improved = cand, r, True
        step //= 2
    return (box[0], box[1], box[2], box[3]), cur / spread


# ---------------------------------------------------------------------------------------- inference


def acceptance_tolerance(captured: Sequence[np.ndarray], dtype: str) -> float:
    """The acceptance rule: a solved spec must reproduce every captured tensor within 1 quantisation
    step (integer inputs: the error is measured in steps) or 1e-3 of the captured tensors' range
    (float inputs)."""
    if dtype in ("uint8", "int8"):
        return 1.0
    lo = min(float(np.min(c)) for c in captured)
    hi = max(float(np.max(c)) for c in captured)
    return 1e-3 * max(hi - lo, 1e-12)


def _spec(fit: _Fit, width: int, height: int, dtype: str, q: QuantParams | None) -> PreprocessSpec:
    g = fit.cand.geometry
    return PreprocessSpec(
        rotation=g.rotation,  # type: ignore[arg-type]
        mirror=g.mirror,
        resize=g.resize_spec(width, height, fit.cand.method, fit.pad or (0.0,)),
        color_order=fit.cand.color_order,
        layout=fit.cand.layout,
        dtype=dtype,  # type: ignore[arg-type]
        scale=[float(x) for x in fit.scale],
        offset=[float(x) for x in fit.offset],
        quantization=q,
    )


def _pad_pixels(
    pad_tensor: np.ndarray, scale: np.ndarray, offset: np.ndarray, color: ColorOrder
) -> list[float]:
    """The letterbox padding in RGB pixel units from its tensor value per channel."""
    px = np.where(scale != 0, (pad_tensor - offset) / np.where(scale != 0, scale, 1.0), 0.0)
    if color == "BGR":
        px = px[::-1]
    return [float(x) for x in px]


def _reproduce(fit: _Fit, images: list[np.ndarray], captured: list[np.ndarray]) -> None:
    assert fit.spec is not None
    outs = [apply_preprocess(img, fit.spec) for img in images]
    errs = [
        np.abs(o.astype(np.float64) - c.astype(np.float64)).ravel()
        for o, c in zip(outs, captured, strict=True)
    ]
    allerr = np.concatenate(errs)
    fit.repro_max = float(allerr.max())
    fit.repro_mean = float(allerr.mean())
    fit.reproduced = outs


_DTYPES = {"float32", "float16", "uint8", "int8"}


def infer_preprocess(
    pairs: Sequence[tuple[np.ndarray, TensorSample]],
    *,
    methods: Sequence[ResizeMethod] = RESIZE_METHODS,
    top: int = 8,
    allow_box: bool = True,
) -> PreprocessSpec:
    """Solve for the preprocessing from (source image, captured input tensor) pairs.

    Images are (H, W, 3|4) uint8 RGB(A) (a Bitmap's non-premultiplied pixels, or a camera frame already
    converted with ``replay.yuv.packed_yuv420_to_rgb``); tensors carry their captured dtype and quantisation.

    The search is coarse to fine: the geometry (stretch, centre crop, letterbox with its placement and
    rounding, torchvision shorter side S + centre crop) and orientation (rotation, mirror) are ranked
    first with two cheap kernels on two pairs; the best few are then run exactly as replay runs them for
    every resize kernel x colour order x layout on all pairs, with a closed-form least-squares
    ``tensor = pixel * scale + offset`` per channel (a letterbox's padding is fitted as a constant and
    reported as ``resize.pad_value``). The finalists are ranked by how exactly the full spec (with
    quantisation) reproduces the captured tensors. When no whole-image geometry passes (``allow_box``),
    the region of each image the app cut out is searched for (``_find_box``) and the solve repeated on it.

    The winner is accepted only when it reproduces every captured tensor within ``acceptance_tolerance``
    (1 quantisation step, or 1e-3 of the tensor range). Otherwise the returned spec is the best candidate
    with every field's provenance ``trace_unresolved``: use ``spec.unresolved`` to tell. ``residual``
    holds the fit residuals and the tolerance, ``alternatives`` the ranked runners-up (``equivalent:
    true`` where a runner-up reproduces the captured tensors exactly as the winner does).

    Example::

        spec = infer_preprocess(preprocessing_pairs(trace, model_sha256))
        spec.unresolved, spec.resize.method, spec.mean, spec.residual["max_error"]
    """
    if not pairs:
        raise TraceError("no (bitmap, input tensor) pairs to infer preprocessing from")
    images = [_rgb(img) for img, _ in pairs]
    raw = [_squeeze(np.asarray(t.array)) for _, t in pairs]
    shapes = {r.shape for r in raw}
    if len(shapes) != 1:
        raise TraceError(f"the pairs' tensors differ in shape: {sorted(shapes)}")
    dtype = str(raw[0].dtype)
    if dtype not in _DTYPES:
        raise TraceError(f"cannot infer preprocessing for a {dtype} input tensor")
    q = _quant(pairs[0][1].quantization) if np.issubdtype(raw[0].dtype, np.integer) else None
    spec = _solve(images, raw, q, methods, top)
    if spec.unresolved and allow_box:
        boxed = _solve_with_boxes(images, raw, q, methods, top, spec)
        if boxed is not None:
            spec = boxed
    return spec


def _solve_with_boxes(
    images: list[np.ndarray],
    raw: list[np.ndarray],
    q: QuantParams | None,
    methods: Sequence[ResizeMethod],
    top: int,
    plain: PreprocessSpec,
) -> PreprocessSpec | None:
    """No whole-image geometry explains the tensors: look for the region of each image the app cut out
    (a face fed to a classifier), solve on those crops, and keep that when it explains the tensors better.
    One box for every image (as fractions) becomes ``crop_box``; boxes that differ ``roi: per_image``."""
    layout = _layouts(raw[0].shape)[0]
    targets = [_dequantize(_hwc(r, layout), q) for r in raw]
    found = [_find_box(img, t) for img, t in zip(images, targets, strict=True)]
    if any(rel > 0.5 for _, rel in found):  # nothing in the image resembles the tensor
        return None
    boxes = [b for b, _ in found]
    spec: PreprocessSpec | None = None
    for _ in range(2):  # the coarse kernel can leave an edge one pixel off: refine with the solved one
        cropped = [img[y0:y1, x0:x1] for img, (x0, y0, x1, y1) in zip(images, boxes, strict=True)]
        spec = _solve(cropped, raw, q, methods, top)
        if not spec.unresolved:
            break
        boxes = [
            _find_box(img, t, spec.resize.method, b)[0]
            for img, t, b in zip(images, targets, boxes, strict=True)
        ]
    assert spec is not None
    if spec.residual.get("max_error", np.inf) >= plain.residual.get("max_error", np.inf):
        return None
    fractions = [
        (x0 / img.shape[1], y0 / img.shape[0], x1 / img.shape[1], y1 / img.shape[0])
        for img, (x0, y0, x1, y1) in zip(images, boxes, strict=True)
    ]
    tol = 1.0 / min(min(img.shape[:2]) for img in images)
    prov = spec.provenance.get("resize", Provenance.TRACE)
    spec.provenance["resize.crop_box"] = prov
    if all(np.abs(np.subtract(f, fractions[0])).max() <= tol for f in fractions):
        spec.resize.crop_box = tuple(float(x) for x in fractions[0])  # type: ignore[assignment]
        spec.notes.append(f"crop box {[round(x, 4) for x in fractions[0]]} (fractions) solved from the pairs")
        # Re-check on the whole images: the box's edges round to whole pixels on each image.
        _recheck(spec, images, raw, q)
    else:
        spec.resize.roi = "per_image"
        spec.notes.append(
            "the app crops a different region of every image (solved per pair: "
            + "; ".join(str(b) for b in boxes[:4])
            + "): replay must be given such crops (a dataset of crops, or --faces)"
        )
    return spec


def _recheck(
    spec: PreprocessSpec, images: list[np.ndarray], raw: list[np.ndarray], q: QuantParams | None
) -> None:
    """Recompute the reproduction error of a spec on the pairs and re-apply the acceptance rule."""
    errs = [
        np.abs(apply_preprocess(img, spec).astype(np.float64) - r.astype(np.float64)).max()
        for img, r in zip(images, raw, strict=True)
    ]
    spec.residual["max_error"] = float(max(errs))
    accept = acceptance_tolerance(raw, str(raw[0].dtype))
    prov = Provenance.TRACE if spec.residual["max_error"] <= accept else Provenance.TRACE_UNRESOLVED
    for k in spec.provenance:
        spec.provenance[k] = prov


def _solve(
    images: list[np.ndarray],
    raw: list[np.ndarray],
    q: QuantParams | None,
    methods: Sequence[ResizeMethod],
    top: int,
) -> PreprocessSpec:
    """``infer_preprocess`` on prepared images and squeezed tensors (see there)."""
    shape = raw[0].shape
    dtype = str(raw[0].dtype)
    layouts = _layouts(shape)

    fits: list[_Fit] = []
    searched = 0
    rank_step = 1
    for layout in layouts:
        hwc = [_hwc(r, layout) for r in raw]
        height, width, channels = hwc[0].shape
        reals = [_dequantize(t, q) for t in hwc]
        geometries, n = _search_geometry(images, reals, width, height)
        searched += n
        # The cheap kernels can place S one pixel off: give the exact ranking its neighbours too.
        for g in list(geometries):
            if g.kind == "shorter_side" and g is geometries[0] and g.shorter_side is not None:
                for d in (-1, 1):
                    nb = Geometry(g.kind, g.rotation, g.mirror, shorter_side=g.shorter_side + d)
                    if nb not in geometries:
                        geometries.append(nb)
        rank_step = _sample_step(reals[0], 16384)
        for g in geometries:
            for method in methods:
                # Ranked on the first few pairs; the finalists are refitted and checked on all of them.
                rendered = [_render(img, g, method, width, height) for img in images[:_RANK_PAIRS]]
                if any(x is None for x in rendered):
                    continue
                masks = [x[1] for x in rendered if x is not None]
                for color in _colors(channels):
                    px = [to_color_order(x[0], color) for x in rendered if x is not None]
                    scale, offset, rms, pad_t = _fit(px, reals[: len(px)], masks, step=rank_step)
                    f = _Fit(Candidate(g, method, color, layout), scale, offset, rms)
                    if g.kind == "letterbox":
                        f.pad = _pad_pixels(pad_t, scale, offset, color)
                    fits.append(f)
    if not fits:
        raise TraceError(f"no preprocessing geometry fits the captured {list(shape)} tensors")

    fits.sort(key=lambda f: f.rms)
    finalists = fits[:top]
    for f in finalists:
        h, w = (shape[0], shape[1]) if f.cand.layout == "NHWC" else (shape[1], shape[2])
        hwc_real = [_dequantize(_hwc(r, f.cand.layout), q) for r in raw]
        rendered = [_render(img, f.cand.geometry, f.cand.method, w, h) for img in images]
        if any(x is None for x in rendered):  # the geometry does not fit a pair outside the ranked ones
            continue
        f.pixels = [to_color_order(x[0], f.cand.color_order) for x in rendered if x is not None]
        f.masks = [x[1] for x in rendered if x is not None]
        if (
            rank_step > 1 or len(images) > _RANK_PAIRS
        ):  # the ranking fitted a sample of the pixels: refit the finalists on all
            f.scale, f.offset, f.rms, pad_t = _fit(f.pixels, hwc_real, f.masks)
            if f.cand.geometry.kind == "letterbox":
                f.pad = _pad_pixels(pad_t, f.scale, f.offset, f.cand.color_order)
        p, y, _ = _masked(f.pixels, hwc_real, f.masks)
        content_rms = float(np.sqrt(np.mean((p * f.scale + f.offset - y) ** 2)))
        f.scale, f.offset, _, snapped = _snap(f.scale, f.offset, p, y, content_rms)
        if f.cand.geometry.kind == "letterbox" and snapped:
            _, _, _, pad_t = _fit(f.pixels, hwc_real, f.masks)
            f.pad = _pad_pixels(pad_t, f.scale, f.offset, f.cand.color_order)
        f.spec = _spec(f, w, h, dtype, q)
        if snapped:
            f.spec.notes.append(f"scale/offset match the well-known normalisation {snapped}")
        _reproduce(f, images, raw)
        f.pixels = f.masks = None
    # The winner reproduces the captured tensors best (mean error, then worst error, then fit RMS);
    # ties keep the simplest geometry and the order of RESIZE_METHODS (simplest kernel first).
    order = {m: i for i, m in enumerate(RESIZE_METHODS)}
    finalists = [f for f in finalists if f.spec is not None]
    if not finalists:
        raise TraceError(f"no preprocessing geometry fits every captured {list(shape)} tensor's image")
    finalists.sort(
        key=lambda f: (
            round(f.repro_mean, 9),
            round(f.repro_max, 9),
            round(f.rms, 9),
            f.cand.geometry.simplicity,
            order.get(f.cand.method, 99),
        )
    )
    best = finalists[0]
    assert best.spec is not None and best.reproduced is not None
    spec = best.spec
    tol = 0.5 if q is not None or np.issubdtype(raw[0].dtype, np.integer) else 1e-6
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
        f.reproduced = None
    spec.alternatives = alternatives
    margin = (finalists[1].repro_mean - best.repro_mean) if len(finalists) > 1 else float("inf")
    accept = acceptance_tolerance(raw, dtype)
    spec.residual = {
        "fit_rms": best.rms,
        "max_error": best.repro_max,
        "mean_error": best.repro_mean,
        "runner_up_margin": margin,
        "tolerance": accept,
    }
    if np.issubdtype(raw[0].dtype, np.integer):
        spec.residual["max_error_steps"] = best.repro_max  # integer tensors: errors are in steps
    resolved = best.repro_max <= accept
    prov = Provenance.TRACE if resolved else Provenance.TRACE_UNRESOLVED
    fields = ["resize", "color_order", "layout", "dtype", "scale", "offset", "quantization"]
    fields += ["rotation", "mirror"]
    for name in fields:
        spec.provenance[name] = prov
    g = best.cand.geometry
    notes = [
        f"solved from {len(images)} (bitmap, tensor) pairs: {searched} geometries searched, "
        f"{len(fits)} exact settings fitted",
        f"output size {spec.resize.width}x{spec.resize.height} and layout {spec.layout} from the tensor "
        f"shape {list(shape)}" + (" (ambiguous axis: both layouts fitted)" if len(layouts) > 1 else ""),
        "geometry: " + ", ".join(f"{k} {v}" for k, v in g.describe().items()),
        "mean/std (pixel units): "
        + ", ".join(f"{m:.4g}/{s:.4g}" for m, s in zip(spec.mean, spec.std, strict=True)),
    ]
    if g.kind == "letterbox":
        notes.append(
            "letterbox padding (RGB pixel units): " + ", ".join(f"{v:.4g}" for v in spec.resize.pad_value)
        )
    spec.notes = notes + spec.notes
    if q is not None:
        spec.notes.append(
            f"quantisation scale {q.scale:.6g}, zero point {q.zero_point} from the captured tensor"
        )
    equivalents = [a for a in alternatives if a["equivalent"]]
    if equivalents:
        spec.notes.append(
            "the evidence cannot separate "
            + ", ".join(f"{a['geometry']}/{a['method']}/{a['color_order']}" for a in equivalents)
            + f" from {g.kind}/{best.cand.method}/{best.cand.color_order}: they reproduce the captured "
            "tensors identically"
        )
    unit = "quantisation steps" if np.issubdtype(raw[0].dtype, np.integer) else "(tensor units)"
    if resolved:
        spec.notes.append(f"accepted: max error {best.repro_max:.3g} {unit} <= tolerance {accept:.3g}")
    else:
        spec.notes.append(
            f"UNRESOLVED: the best candidate misses the captured tensors by up to {best.repro_max:.3g} {unit}"
            f" (tolerance {accept:.3g}); no searched pipeline reproduces what the app computes"
        )
    log.info("preprocessing: %s (fit rms %.3g, resolved %s)", best.cand, best.rms, resolved)
    return spec


class InvokeLike(Protocol):
    """A traced invoke (``trace_match.TracedInvoke`` is one)."""

    @property
    def bitmap(self) -> np.ndarray | None: ...
    @property
    def inputs(self) -> Sequence[Any]: ...
    @property
    def crop(self) -> tuple[float, float, float, float] | None: ...
    @property
    def source_format(self) -> str: ...


def infer_from_invokes(invokes: Sequence[InvokeLike], **kwargs: Any) -> PreprocessSpec:
    """``infer_preprocess`` on a model's traced invokes (image, first input tensor), then what the
    trace says beyond the pairs: the crop the app passed (one box for every image: ``crop_box``; a box
    per image, such as a detected face: ``roi: per_image``) and a camera-frame source format.
    """
    used = [inv for inv in invokes if inv.bitmap is not None and inv.inputs]
    pairs = [(inv.bitmap, min(inv.inputs, key=lambda t: t.index)) for inv in used]
    spec = infer_preprocess(pairs, **kwargs)  # type: ignore[arg-type]
    crops = [inv.crop for inv in used]
    if any(c is not None for c in crops):
        boxes = [c or (0.0, 0.0, 1.0, 1.0) for c in crops]
        sizes = [inv.bitmap.shape[:2] for inv in used if inv.bitmap is not None]
        # One pixel of the (cropped) images' size: the app's box, captured in whole pixels.
        tol = max(1.0 / min(min(s) for s in sizes), 1e-6)
        same = all(np.abs(np.subtract(b, boxes[0])).max() <= tol for b in boxes)
        if same:
            spec.resize.crop_box = tuple(float(x) for x in boxes[0])  # type: ignore[assignment]
            spec.notes.append(f"crop box {list(np.round(boxes[0], 4))} (fractions) passed by the app")
        else:
            spec.resize.roi = "per_image"
            spec.notes.append(
                "the app crops a different region of every image (captured per call): replay must be "
                "given such crops (a dataset of crops, or --faces)"
            )
        spec.provenance["resize.crop_box"] = spec.provenance.get("resize", Provenance.TRACE)
    formats = {inv.source_format for inv in used}
    if formats and formats != {"rgb"}:
        if len(formats) > 1:
            spec.notes.append(f"the app fed images of several formats: {sorted(formats)}")
        fmt = sorted(formats - {"rgb"})[0]
        spec.source_format = fmt  # type: ignore[assignment]
        spec.provenance["source_format"] = spec.provenance.get("resize", Provenance.TRACE)
        spec.notes.append(
            f"source: camera frames ({fmt}), converted to RGB with BT.601 limited range (libyuv); replay "
            "round-trips RGB photos through that format"
        )
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
