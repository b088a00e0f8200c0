"""One face detector (UltraFace RFB-320, ../shared/realdata) in every format it ships in, replayed side by
side over utkface_300: ONNX in onnxruntime vs the app's own engines (NCNN, MNN, TFLite in ai-edge-litert).

Prints, per runtime: replay items/s end to end (the whole ``replay()`` call, best of ``--rounds``
alternating rounds), the engine alone on one preprocessed input (items/s), and agreement of the raw
outputs with the ONNX run per item (``evaluate --compare``'s table: share of items within 1e-3 of the
output range, mean and max of the per-item largest difference).

    python benchmarks/native_bench.py [--rounds 2] [--limit 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from replaybench.bundle import PreprocessSpec
from replaybench.evaluate.compare import compare_predictions
from replaybench.extract.convert import convert_model
from replaybench.replay.runner import ReplayOptions, replay
from replaybench.replay.runtimes import open_bundle_model
from tests.conftest import REALDATA

U = REALDATA / "ultraface_rfb320_multiformat_linzaer"
NCHW = {
    "resize": {"width": 320, "height": 240, "method": "bilinear_pil"},
    "color_order": "RGB",
    "layout": "NCHW",
    "dtype": "float32",
    "scale": [1 / 128] * 3,
    "offset": [-127 / 128] * 3,
}
MODELS = {
    "onnx": (U / "models/onnx/version-RFB-320_without_postprocessing.onnx", NCHW, None),
    "ncnn": (U / "ncnn/data/version-RFB/RFB-320.param", NCHW, [1, 3, 240, 320]),
    "mnn": (U / "MNN/model/version-RFB/RFB-320.mnn", NCHW, None),
    "tflite": (
        U / "tflite/pretrained/version-RFB-320_without_postprocessing.tflite",
        {**NCHW, "layout": "NHWC"},
        None,
    ),
}


def _onnx_names(df: pl.DataFrame, onnx: pl.DataFrame) -> pl.DataFrame:
    """Name another format's raw outputs as the ONNX model does (the TFLite export calls them Identity*),
    matched by element count (scores 4420x2, boxes 4420x4)."""
    size = {c: len(onnx[c][0]) for c in onnx.columns if c.startswith("raw__")}
    by_size = {n: c for c, n in size.items()}
    return df.rename(
        {c: by_size[len(df[c][0])] for c in df.columns if c.startswith("raw__") and c not in size}
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=300)
    args = ap.parse_args()
    faces = REALDATA / "utkface_300" / "images"
    if not faces.is_dir() or not U.is_dir():
        raise SystemExit(f"needs {faces} and {U}")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        manifest = tmp / "faces.csv"
        images = sorted(faces.glob("*.jpg"))[: args.limit]
        pl.DataFrame({"path": [str(p) for p in images]}).write_csv(manifest)
        bundles = {}
        for name, (model, spec, shape) in MODELS.items():
            out = tmp / "bundles" / name
            runtime = {"onnx": "onnx", "tflite": "native"}.get(
                name, "auto"
            )  # the .tflite converts too: keep it
            b = convert_model(
                model,
                out,
                preprocess=PreprocessSpec.model_validate(spec),
                input_shape=shape,
                runtime=runtime,
                n_random=1,
            )
            bundles[name] = (out, b.runtime.name)
        rates: dict[str, float] = {}
        preds: dict[str, pl.DataFrame] = {}
        for r in range(args.rounds):
            order = list(bundles) if r % 2 == 0 else list(reversed(bundles))
            for name in order:
                out = tmp / f"preds-{name}-{r}"
                t0 = time.perf_counter()
                res = replay([bundles[name][0]], manifest, out, ReplayOptions(format="manifest"))
                dt = time.perf_counter() - t0
                assert res.items_ok == len(images), res
                rates[name] = max(rates.get(name, 0.0), len(images) / dt)
                preds[name] = pl.read_parquet(sorted(out.glob("*.parquet")))
        from replaybench.bundle import load_bundle

        engine: dict[str, float] = {}
        for name, (folder, _) in bundles.items():
            ms = open_bundle_model(load_bundle(folder), threads=1)
            x = (
                np.random.default_rng(0)
                .random([1, *ms.input_shape[1:]], dtype=np.float32)
                .astype(ms.input_dtype)
            )
            ms.run(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 2.0:
                ms.run(x)
                n += 1
            engine[name] = n / (time.perf_counter() - t0)
        print(f"UltraFace RFB-320 over {len(images)} utkface_300 faces, {args.rounds} alternating rounds")
        print(
            f"{'runtime':10} {'engine':>12} {'replay img/s':>13} {'engine 1-thread img/s':>22} {'vs onnx':>8}"
        )
        for name, (_, rt) in bundles.items():
            print(
                f"{name:10} {rt:>12} {rates[name]:13.1f} {engine[name]:22.1f} {rates[name] / rates['onnx']:8.2f}"
            )
        print("\nagreement with the ONNX run, per item (evaluate --compare):")
        print(f"{'runtime':10} {'output':12} {'agree':>6} {'mean max|d|':>12} {'max |d|':>10}")
        for name in bundles:
            if name == "onnx":
                continue
            t = compare_predictions(preds["onnx"], _onnx_names(preds[name], preds["onnx"]), [])
            t = t.filter(pl.col("grouping") == "overall")
            for row in t.iter_rows(named=True):
                print(
                    f"{name:10} {row['field']:12} {row['agreement']:6.3f} {row['mean_abs_diff']:12.3g} "
                    f"{row['max_abs_diff']:10.3g}"
                )
        print(json.dumps({"replay_img_s": rates, "engine_img_s": engine}))


if __name__ == "__main__":
    main()
