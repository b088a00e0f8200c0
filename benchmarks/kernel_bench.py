"""Resize kernels side by side, in one run: milliseconds per image and the ratio to replay's default
TF bilinear (onnxruntime backend), for a face crop and a phone photo.

    .venv/bin/python benchmarks/kernel_bench.py [--repeat 200]

``bilinear_android`` is Skia's 8-bit sampler reproduced in numpy integers (bit-exact with skia-python);
the same resize drawn by skia-python itself is listed as ``skia (reference)`` for scale.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replaybench.replay.preprocess import RESIZE_METHODS, resize  # noqa: E402


def _skia(img: np.ndarray, width: int, height: int) -> np.ndarray:
    from replaybench.demo.sample_app import create_scaled_bitmap

    return create_scaled_bitmap(img, width, height, filter=True)


def _runs(img: np.ndarray, width: int, height: int) -> dict[str, Callable[[], object]]:
    runs: dict[str, Callable[[], object]] = {}
    for method in RESIZE_METHODS:
        runs[f"{method} [numpy]"] = partial(resize, img, width, height, method, "numpy")
        if method.startswith("bilinear_tf"):
            runs[f"{method} [onnxruntime]"] = partial(resize, img, width, height, method, "onnxruntime")
    runs["skia (reference)"] = partial(_skia, img, width, height)
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = [((200, 200), (64, 64)), ((1080, 1440), (224, 224))]
    for (h, w), (th, tw) in cases:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        runs = _runs(img, tw, th)
        times = {}
        for name, fn in runs.items():
            fn()  # warm up (sessions, caches)
            times[name] = min(timeit.repeat(fn, number=args.repeat, repeat=3)) / args.repeat * 1e3
        base = times["bilinear_tf [onnxruntime]"]
        print(f"{h}x{w} -> {th}x{tw}")
        for name, ms in times.items():
            print(f"  {name:32s} {ms:8.3f} ms  x{ms / base:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
