"""The optional face stage: run a face-detector bundle, decode boxes, NMS, crop with a margin.

Two detector families are decoded, chosen by ``postprocess.detection["kind"]`` (or by the output shapes):

- ``ultraface`` (Linzaer Ultra-Light-Fast-Generic-Face-Detector, the ONNX export *with* post-processing):
  ``scores [1, N, 2]`` (softmaxed, column 1 = face) and ``boxes [1, N, 4]`` corner boxes normalised to
  0..1. Defaults per the authors' demo: score threshold 0.7, IoU 0.3.
- ``blazeface`` (MediaPipe face_detection_short_range, 128x128): ``regressors [1, 896, 16]`` and
  ``classificators [1, 896, 1]`` (logits) decoded against SSD anchors generated exactly like MediaPipe's
  ``SsdAnchorsCalculator`` with the options of ``face_detection_short_range.pbtxt``; score threshold 0.5,
  and MediaPipe's weighted NMS (``NonMaxSuppressionCalculator``, algorithm WEIGHTED, IoU 0.3): each
  cluster becomes the score-weighted mean of its boxes, with the best box's score.

``postprocess.detection`` may override any setting, and ``"nms": "hard"`` or ``"weighted"`` the NMS.

Boxes are returned as (x0, y0, x1, y1) fractions of the *original* image: the detector's preprocessing
must be a plain resize (no crop, no letterbox), which ``FaceDetector`` checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from replaybench.errors import UsageError

BLAZEFACE_SHORT_RANGE: dict[str, Any] = {
    "num_layers": 4,
    "min_scale": 0.1484375,
    "max_scale": 0.75,
    "input_size_height": 128,
    "input_size_width": 128,
    "anchor_offset_x": 0.5,
    "anchor_offset_y": 0.5,
    "strides": [8, 16, 16, 16],
    "aspect_ratios": [1.0],
    "reduce_boxes_in_lowest_layer": False,
    "interpolated_scale_aspect_ratio": 1.0,
    "fixed_anchor_size": True,
    "x_scale": 128.0,
    "y_scale": 128.0,
    "w_scale": 128.0,
    "h_scale": 128.0,
    "score_threshold": 0.5,
    "score_clipping_thresh": 100.0,
    "iou_threshold": 0.3,
    "nms": "weighted",
}
ULTRAFACE: dict[str, Any] = {"score_threshold": 0.7, "iou_threshold": 0.3, "nms": "hard"}


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image
    score: float


def _calc_scale(min_scale: float, max_scale: float, i: int, n: int) -> float:
    return (min_scale + max_scale) * 0.5 if n == 1 else min_scale + (max_scale - min_scale) * i / (n - 1)


def ssd_anchors(opts: dict[str, Any]) -> np.ndarray:
    """Anchors (cx, cy, w, h) as MediaPipe's SsdAnchorsCalculator generates them. Shape (N, 4)."""
    n_layers = int(opts["num_layers"])
    strides = list(opts["strides"])
    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < n_layers:
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        # Consecutive layers with the same stride share one feature map.
        while last < n_layers and strides[last] == strides[layer]:
            scale = _calc_scale(opts["min_scale"], opts["max_scale"], last, n_layers)
            if last == 0 and opts.get("reduce_boxes_in_lowest_layer"):
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for r in opts["aspect_ratios"]:
                    ratios.append(r)
                    scales.append(scale)
                if opts.get("interpolated_scale_aspect_ratio", 0.0) > 0:
                    nxt = (
                        1.0
                        if last == n_layers - 1
                        else _calc_scale(opts["min_scale"], opts["max_scale"], last + 1, n_layers)
                    )
                    scales.append(float(np.sqrt(scale * nxt)))
                    ratios.append(opts["interpolated_scale_aspect_ratio"])
            last += 1
        stride = strides[layer]
        fh = int(np.ceil(opts["input_size_height"] / stride))
        fw = int(np.ceil(opts["input_size_width"] / stride))
        for y in range(fh):
            for x in range(fw):
                for r, s in zip(ratios, scales, strict=True):
                    cx = (x + opts["anchor_offset_x"]) / fw
                    cy = (y + opts["anchor_offset_y"]) / fh
                    if opts.get("fixed_anchor_size"):
                        anchors.append((cx, cy, 1.0, 1.0))
                    else:
                        anchors.append((cx, cy, s * float(np.sqrt(r)), s / float(np.sqrt(r))))
        layer = last
    return np.asarray(anchors, dtype=np.float32)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _iou(boxes: np.ndarray, area: np.ndarray, i: int, others: np.ndarray) -> np.ndarray:
    """IoU of corner box ``i`` with each of ``others`` (indices)."""
    xx0 = np.maximum(boxes[i, 0], boxes[others, 0])
    yy0 = np.maximum(boxes[i, 1], boxes[others, 1])
    xx1 = np.minimum(boxes[i, 2], boxes[others, 2])
    yy1 = np.minimum(boxes[i, 3], boxes[others, 3])
    inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
    result: np.ndarray = inter / np.maximum(area[i] + area[others] - inter, 1e-12)
    return result


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression over corner boxes; indices of the kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    area = _areas(boxes)
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[_iou(boxes, area, i, rest) <= iou_threshold]
    return keep


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's WeightedNonMaxSuppression: take the best remaining box and every remaining box that
    overlaps it by more than ``iou_threshold`` (itself included); emit their score-weighted mean corner
    box with the best box's score; go on with the rest. Best first."""
    order = np.argsort(-scores, kind="stable")
    area = _areas(boxes)
    out: list[tuple[np.ndarray, float]] = []
    while order.size:
        i = int(order[0])
        cluster = order[_iou(boxes, area, i, order) > iou_threshold]
        if cluster.size == 0:  # a degenerate (zero-area) best box overlaps nothing, not even itself
            cluster = order[:1]
        w = scores[cluster]
        out.append(((boxes[cluster] * w[:, None]).sum(axis=0) / w.sum(), float(scores[i])))
        order = order[~np.isin(order, cluster)]
    return out


def _faces(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, method: str) -> list[Face]:
    """NMS by ``method`` (hard: the best box of each cluster; weighted: MediaPipe's), clipped to the image."""
    if method == "weighted":
        kept = weighted_nms(boxes, scores, iou_threshold)
    elif method == "hard":
        kept = [(boxes[i], float(scores[i])) for i in nms(boxes, scores, iou_threshold)]
    else:
        raise UsageError(f"unknown detection nms {method!r} (hard, weighted)")
    faces = []
    for box, score in kept:
        x0, y0, x1, y1 = (float(v) for v in np.clip(box, 0.0, 1.0))
        faces.append(Face((x0, y0, x1, y1), score))
    return faces


def decode_ultraface(scores: np.ndarray, boxes: np.ndarray, settings: dict[str, Any]) -> list[Face]:
    """UltraFace outputs (one image: scores [N, 2] or [1, N, 2], boxes [N, 4]) -> faces after NMS."""
    s = scores.reshape(-1, 2)[:, 1]
    b = boxes.reshape(-1, 4)
    opts = {**ULTRAFACE, **settings}
    mask = s >= float(opts["score_threshold"])
    return _faces(np.clip(b[mask], 0.0, 1.0), s[mask], float(opts["iou_threshold"]), opts["nms"])


def decode_blazeface(
    regressors: np.ndarray,
    classificators: np.ndarray,
    settings: dict[str, Any],
    anchors: np.ndarray | None = None,
) -> list[Face]:
    """BlazeFace outputs (regressors [896, 16], classificators [896, 1], logits) -> faces after NMS."""
    opts = {**BLAZEFACE_SHORT_RANGE, **settings}
    anchors = ssd_anchors(opts) if anchors is None else anchors
    raw = regressors.reshape(-1, regressors.shape[-1]).astype(np.float64)
    logits = classificators.reshape(-1).astype(np.float64)
    if raw.shape[0] != anchors.shape[0]:
        raise UsageError(f"blazeface: {raw.shape[0]} boxes but {anchors.shape[0]} anchors from the settings")
    clip = float(opts["score_clipping_thresh"])
    s = 1.0 / (1.0 + np.exp(-np.clip(logits, -clip, clip)))
    cx = raw[:, 0] / opts["x_scale"] * anchors[:, 2] + anchors[:, 0]
    cy = raw[:, 1] / opts["y_scale"] * anchors[:, 3] + anchors[:, 1]
    w = raw[:, 2] / opts["w_scale"] * anchors[:, 2]
    h = raw[:, 3] / opts["h_scale"] * anchors[:, 3]
    b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    mask = s >= float(opts["score_threshold"])
    # MediaPipe suppresses on the raw boxes; the kept ones are clipped to the image afterwards
    return _faces(b[mask], s[mask], float(opts["iou_threshold"]), opts["nms"])


def crop_face(img: np.ndarray, box: tuple[float, float, float, float], margin: float) -> np.ndarray:
    """Crop ``box`` (fractions) grown by ``margin`` x its width/height on every side, clipped to the image."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box
    bw, bh = (x1 - x0) * w, (y1 - y0) * h
    left = int(np.floor(max(0.0, x0 * w - margin * bw)))
    top = int(np.floor(max(0.0, y0 * h - margin * bh)))
    right = int(np.ceil(min(float(w), x1 * w + margin * bw)))
    bottom = int(np.ceil(min(float(h), y1 * h + margin * bh)))
    if right - left < 2 or bottom - top < 2:
        return img
    return img[top:bottom, left:right]


class FaceDetector:
    """A detector bundle, opened once per worker process (single-threaded session)."""

    def __init__(self, folder: Path) -> None:
        from replaybench.bundle import load_bundle
        from replaybench.replay.runtimes import open_bundle_model

        lb = load_bundle(folder)
        spec = lb.bundle.preprocess
        if spec is None:
            raise UsageError(f"detector bundle {folder} has no preprocess block")
        if spec.resize.crop != "none" or spec.resize.keep_aspect or spec.resize.crop_box is not None:
            raise UsageError(f"detector bundle {folder}: only a plain resize is supported for face detection")
        self.spec = spec
        self.model = open_bundle_model(lb, threads=1)  # an app's NCNN/MNN detector runs in its engine
        det = dict(lb.bundle.postprocess.detection or {})
        kind = det.get("kind")
        if kind is None:
            last_dims = {self.model.output_sizes[n] for n in self.model.output_names}
            kind = (
                "blazeface" if any(d % 16 == 0 and d // 16 in (896, 2304) for d in last_dims) else "ultraface"
            )
        if kind not in ("ultraface", "blazeface"):
            raise UsageError(
                f"detector bundle {folder}: unknown detection kind {kind!r} (ultraface, blazeface)"
            )
        if det.get("nms", "hard") not in ("hard", "weighted"):
            raise UsageError(
                f"detector bundle {folder}: unknown detection nms {det['nms']!r} (hard, weighted)"
            )
        self.kind = kind
        self.settings = det
        self.anchors = ssd_anchors({**BLAZEFACE_SHORT_RANGE, **det}) if kind == "blazeface" else None

    def _outputs(self, outs: dict[str, np.ndarray], key: str, last: int) -> np.ndarray:
        name = self.settings.get(key)
        if isinstance(name, str):
            return outs[name]
        for a in outs.values():
            if a.shape[-1] == last:
                return a
        raise UsageError(
            f"detector has no output with last dimension {last}; set postprocess.detection.{key}"
        )

    def detect(self, img: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, best first."""
        from replaybench.replay.preprocess import apply_preprocess

        outs = self.model.run(apply_preprocess(img, self.spec)[None])
        if self.kind == "ultraface":
            return decode_ultraface(
                self._outputs(outs, "scores_output", 2), self._outputs(outs, "boxes_output", 4), self.settings
            )
        return decode_blazeface(
            self._outputs(outs, "boxes_output", 16),
            self._outputs(outs, "scores_output", 1),
            self.settings,
            self.anchors,
        )
