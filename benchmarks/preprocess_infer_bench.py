"""Seconds ``infer_preprocess`` takes per pipeline, on real COCO photos at their full size (640 px).

Each pipeline's tensors are made with Pillow (the references of tests/extract/test_preprocess_pipelines.py)
from N photos; the table gives the pipeline, the tensor, seconds, whether the solved spec is the true one,
and its max error against the acceptance tolerance. All rows run in one process, one after another.

    PYTHONPATH=$PWD python benchmarks/preprocess_infer_bench.py [--photos N] [--realdata DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replaybench.extract.preprocess import infer_preprocess  # noqa: E402
from replaybench.extract.trace import Quantization  # noqa: E402
from tests.conftest import REALDATA  # noqa: E402
from tests.extract import test_preprocess_pipelines as ref  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--realdata", type=Path, default=REALDATA)
    ap.add_argument("--photos", type=int, default=4)
    args = ap.parse_args()
    paths = sorted((args.realdata / "coco_mini_captions_159" / "val2017").glob("*.jpg"))[: args.photos]
    if len(paths) < args.photos:
        print(f"not enough COCO photos under {args.realdata}", file=sys.stderr)
        return 1
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    boxes = [(80 + 10 * k, 60, 280 + 10 * k, 260) for k in range(len(photos))]
    u8 = Quantization(scale=1 / 255, zero_point=0)
    i8 = Quantization(scale=1 / 128, zero_point=0)
    cases = {
        "letterbox 320 centre pad 114 (float)": (
            [(p, ref.Captured(ref.letterbox_yolo(p, 320, 114))) for p in photos],
            lambda s: s.resize.keep_aspect and s.resize.placement == "center",
        ),
        "letterbox 256 top-left floor (uint8)": (
            [(p, ref.Captured(ref.letterbox_java_top_left(p, 256), u8)) for p in photos],
            lambda s: s.resize.keep_aspect and s.resize.placement == "top_left",
        ),
        "Resize(256)+CenterCrop(224) ImageNet NCHW": (
            [(p, ref.Captured(ref.torchvision_resize_center_crop(p, 256, 224))) for p in photos],
            lambda s: s.resize.shorter_side == 256,
        ),
        "turn 90 + mirror 192x144 (int8)": (
            [(p, ref.Captured(ref.rotated_mirrored_int8(p, 192, 144), i8)) for p in photos],
            lambda s: (s.rotation, s.mirror) == (90, True),
        ),
        "crop box per image 112 BGR": (
            [(p, ref.Captured(ref.crop_box_bgr(p, b, 112))) for p, b in zip(photos, boxes, strict=True)],
            lambda s: s.resize.roi == "per_image",
        ),
    }
    print(f"{'pipeline':44} {'tensor':>16} {'seconds':>8}  true  {'max error':>10} {'tolerance':>10}")
    for name, (pairs, is_true) in cases.items():
        t = time.perf_counter()
        spec = infer_preprocess(pairs)
        dt = time.perf_counter() - t
        shape = "x".join(str(d) for d in pairs[0][1].array.shape[1:])
        ok = "yes" if is_true(spec) and not spec.unresolved else "NO"
        print(
            f"{name:44} {shape:>16} {dt:8.2f}  {ok:4}  {spec.residual['max_error']:10.3g} "
            f"{spec.residual['tolerance']:10.3g}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
