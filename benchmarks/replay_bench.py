"""Replay throughput, measured side by side in one run (figures are ratios; the machine is shared).

For a ~128x128 face model (MobileNetV2 alpha 0.35 on 200x200 UTKFace-like JPEGs, float and a static int8
QDQ quantisation of it, as apps ship) and a 224x224 model (MobileNetV2 alpha 1.0 on 1080x1080
Instagram-like JPEGs), all Keras -> TFLite -> tf2onnx like a real extracted model, it measures:

  (a) model only: preprocessed tensors already in memory, batched onnxruntime calls; the better of the
      runner's model stage (one-thread streams, each running whole batches) and onnxruntime's own
      intra-op threads with spinning;
  (b) decode + preprocess only, with all worker processes (the runner's own worker code);
  (c) end to end: ``replaybench.replay.runner.replay`` writing Parquet parts, timed around the whole
      call (opening sessions, listing the dataset and starting the workers included);
  (d) a naive baseline: one image at a time, PIL full decode, resize, one session call (default
      onnxruntime session settings);

and prints c / limit with limit = 1 / (1/a + 1/b) (on a CPU both stages share the cores), c / d, and
a / d and limit / d: c can exceed neither a nor the limit, so limit / d bounds what c / d can reach on
this hardware. b0 / c0 are the runner with its earlier worker settings (Pillow JPEG decode, numpy resize,
onnxruntime intra-op threads instead of streams), in the same run (A/B). Then peak RSS (main process +
workers) of end-to-end runs as the dataset grows 10k -> 100k items (manifest entries repeated), and the
speed and pixel difference of ``--fast-decode`` on 1080px photos.

    python benchmarks/replay_bench.py            # 10k + 2k images, 100k-item memory run
    python benchmarks/replay_bench.py --small    # 1k + 200 images, 10k-item memory run (a quick look)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replaybench.bundle import (  # noqa: E402
    Bundle,
    Decoder,
    IOSpec,
    PostprocessSpec,
    PreprocessSpec,
    ResizeSpec,
    SourceInfo,
    TensorSpec,
)
from replaybench.replay.runner import ReplayOptions  # noqa: E402


def _gen_images(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image

    folder, start, stop, size = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        # smooth colour fields + noise: JPEG sizes close to real photos (pure noise would be far larger)
        low = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 12, size=img.shape), 0, 255).astype(np.uint8)
        name = (
            f"{20 + i % 60}_{i % 2}_{i % 5}_2017{i:013d}.jpg.chip.jpg" if size <= 256 else f"post_{i:06d}.jpg"
        )
        Image.fromarray(img).save(folder / name, quality=90)


def build_images(folder: Path, n: int, size: int, workers: int) -> Path:
    done = folder / ".done"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    step = max(1, n // (workers * 4))
    with get_context("forkserver").Pool(workers) as pool:
        pool.map(_gen_images, [(folder, s, min(n, s + step), size) for s in range(0, n, step)])
    done.touch()
    return folder


def build_model(out: Path, size: int, alpha: float) -> Path:
    """Keras MobileNetV2 (random weights) -> float TFLite -> tf2onnx: shaped like an extracted app model."""
    onnx_path = out / f"mnv2_{size}_{alpha}.onnx"
    if onnx_path.exists():
        return onnx_path
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.applications.MobileNetV2(
        weights=None, input_shape=(size, size, 3), alpha=alpha, classes=2, classifier_activation="softmax"
    )
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    tfl_path = out / f"mnv2_{size}_{alpha}.tflite"
    tfl_path.write_bytes(tflite)
    tf2onnx.convert.from_tflite(str(tfl_path), opset=13, output_path=str(onnx_path))
    return onnx_path


def quantize_int8(float_onnx: Path, paths: list[Path], size: int) -> Path:
    """Static int8 QDQ quantisation (per-channel weights, calibrated on the face images), as apps ship."""
    out = float_onnx.with_name(float_onnx.stem + "_int8.onnx")
    if out.exists():
        return out
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from replaybench.replay.decode import decode_image
    from replaybench.replay.preprocess import apply_preprocess

    spec = PreprocessSpec(resize=ResizeSpec(width=size, height=size, method="bilinear_tf"))
    import onnx

    name = onnx.load(str(float_onnx)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: apply_preprocess(decode_image(p), spec)[None]} for p in paths[:64]])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    pre = float_onnx.with_name(float_onnx.stem + "_pre.onnx")
    quant_pre_process(str(float_onnx), str(pre))
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return out


def make_bundle(folder: Path, onnx_path: Path, name: str, size: int) -> Path:
    import hashlib

    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, folder / "model.onnx")
    m = onnx.load(str(onnx_path))
    out = m.graph.output[0].name
    inp = m.graph.input[0].name
    Bundle(
        name=name,
        source=SourceInfo(format="tflite", sha256=hashlib.sha256(onnx_path.read_bytes()).hexdigest()),
        io=IOSpec(
            inputs=[TensorSpec(name=inp, shape=[1, size, size, 3], dtype="float32")],
            outputs=[TensorSpec(name=out, shape=[1, 2], dtype="float32")],
        ),
        preprocess=PreprocessSpec(resize=ResizeSpec(width=size, height=size, method="bilinear_tf")),
        postprocess=PostprocessSpec(
            task="classification",
            decoders=[
                Decoder(output=out, field="gender_pred", kind="softmax_argmax", labels=["male", "female"])
            ],
        ),
    ).write(folder)
    return folder


def tiny_bundle(folder: Path) -> Path:
    """A near-free model (mean colour -> 2 logits, 32x32 input): isolates the runner's own memory/overhead."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = folder / "tiny.onnx"
    if not path.exists():
        graph = helper.make_graph(
            [
                helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0),
                helper.make_node("MatMul", ["mean", "w"], ["logits"]),
            ],
            "tiny",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 32, 32, 3])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
            [
                numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                numpy_helper.from_array(np.ones((3, 2), np.float32), "w"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        onnx.save(model, str(path))
    return make_bundle(folder / "bundle_tiny", path, "tiny", 32)


def model_only(bundle: Path, n: int, batch: int, runner_config: bool) -> float:
    """Batched inference on tensors in memory. ``runner_config``: the runner's model stage with decode
    workers (one-thread streams, ``inference_threads``); otherwise onnxruntime's own intra-op threads with
    spinning (the best plain setting when nothing else runs). (a) is the better of the two."""
    from replaybench.bundle import load_bundle
    from replaybench.replay.inference import inference_threads
    from replaybench.replay.sessions import open_model

    lb = load_bundle(bundle)
    threads, streams = inference_threads(None, os.cpu_count() or 1) if runner_config else (None, 1)
    ms = open_model(lb.model_path, threads=threads, spinning=not runner_config)
    spec = lb.bundle.preprocess
    assert spec is not None
    x = np.random.default_rng(0).random((batch, spec.resize.height, spec.resize.width, 3), dtype=np.float32)
    ms.run(x)  # warm-up
    rounds = -(-n // (batch * streams))
    with ThreadPoolExecutor(streams) as pool:  # each stream runs whole batches, as in the runner
        t = time.perf_counter()
        list(pool.map(lambda _: [ms.run(x) for _ in range(rounds)], range(streams)))
        return rounds * streams * batch / (time.perf_counter() - t)


def decode_only(
    bundle: Path,
    paths: list[Path],
    workers: int,
    batch: int,
    fast: bool = False,
    before: bool = False,
) -> float:
    """The runner's own worker pool and shared-memory slots, with a consumer that drops the tensors."""
    from replaybench.bundle import load_bundle
    from replaybench.replay.items import DatasetItem
    from replaybench.replay.pool import DecodePool
    from replaybench.replay.workers import DecodeConfig

    spec = load_bundle(bundle).bundle.preprocess
    assert spec is not None
    items = [DatasetItem(item_id=str(i), path=p) for i, p in enumerate(paths)]

    started: list[float] = []

    def write(chunk: list[DatasetItem], res: dict, inferred: None) -> None:
        if not started:  # time from the first result: worker start-up is not decode throughput
            started.append(time.perf_counter())

    config = DecodeConfig(
        specs=(spec,),
        fast_decode=fast,
        resize_backend="numpy" if before else "onnxruntime",
        simplejpeg=not before,
    )
    pool = DecodePool(config, workers, batch, streams=1)
    try:
        pool.run(items, lambda chunk, res: None, write)
    finally:
        pool.close()
    return (len(items) - batch) / (time.perf_counter() - started[0])


def end_to_end(
    bundle: Path, paths: list[Path], workers: int, batch: int, fast: bool = False, before: bool = False
) -> float:
    """``before``: the runner as it was before this change (Pillow JPEG decode and numpy resize in the
    workers, one session call with an intra-op thread per CPU) for an A/B in the same run."""
    from replaybench.replay.runner import ReplayOptions, replay

    dataset = paths[0].parent.parent / f"manifest_{paths[0].parent.name}_{len(paths)}.csv"
    dataset.write_text("path\n" + "\n".join(str(p) for p in paths) + "\n")

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        res = replay(
            [bundle],
            dataset,
            Path(out) / "preds",
            ReplayOptions(
                workers=workers,
                batch_size=batch,
                fast_decode=fast,
                format="manifest",
                **(
                    {"threads": os.cpu_count() or 1, "resize_backend": "numpy", "simplejpeg": False}
                    if before
                    else {}
                ),  # type: ignore[arg-type]
            ),
        )
        assert res.items_error == 0, res
        return len(paths) / (time.perf_counter() - t)  # all of it: sessions, dataset listing, start-up


def naive(onnx_path: Path, paths: list[Path], size: int) -> float:
    import onnxruntime as ort
    from PIL import Image

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    t = time.perf_counter()
    for p in paths:
        img = Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        x = (np.asarray(img, dtype=np.float32) / 255.0)[None]
        sess.run(None, {name: x})
    return len(paths) / (time.perf_counter() - t)


def peak_rss_of_run(args: list[str]) -> tuple[float, float]:
    """Run the CLI in a subprocess; return (peak RSS of the process tree in MB, seconds)."""
    import subprocess

    import psutil

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "replaybench", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [p, *p.children(recursive=True)]
                peak = max(peak, sum(q.memory_info().rss for q in procs if q.is_running()) / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(err.decode()[-2000:])
    return peak, time.perf_counter() - t


def fast_decode_difference(paths: list[Path], size: int, method: str) -> tuple[float, float]:
    """Mean and max |fast - full| of the preprocessed image in 0..255 pixel steps."""
    from replaybench.replay.decode import decode_image, draft_size
    from replaybench.replay.preprocess import apply_preprocess

    spec = PreprocessSpec(
        resize=ResizeSpec(width=size, height=size, method=method), scale=[1.0], offset=[0.0]
    )  # type: ignore[arg-type]
    diffs = []
    for p in paths:
        full = apply_preprocess(decode_image(p), spec)
        fast = apply_preprocess(decode_image(p, fast_size=draft_size([(size, size)])), spec)
        diffs.append(np.abs(full - fast))
    d = np.stack(diffs)
    return float(d.mean()), float(d.max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="1k + 200 images, 10k-item memory run")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "replay_bench")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=ReplayOptions().batch_size)
    ap.add_argument(
        "--measure", type=int, default=4000, help="images per throughput measurement (faces; posts / 5)"
    )
    args = ap.parse_args()
    n_face, n_post = (1000, 200) if args.small else (10_000, 2_000)
    mem_sizes = (1_000, 10_000) if args.small else (10_000, 100_000)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"cpus={os.cpu_count()} workers={args.workers} batch={args.batch_size} load={os.getloadavg()[0]:.1f}"
    )

    t = time.perf_counter()
    faces = build_images(work / f"utk_{n_face}", n_face, 200, args.workers)
    posts = build_images(work / f"insta_{n_post}", n_post, 1080, args.workers)
    print(f"dataset ready ({time.perf_counter() - t:.0f}s): {n_face} x 200px, {n_post} x 1080px JPEGs")
    t = time.perf_counter()
    m128 = build_model(work, 128, 0.35)
    m224 = build_model(work, 224, 1.0)
    print(
        f"models ready ({time.perf_counter() - t:.0f}s): MobileNetV2 128 alpha .35, 224 alpha 1.0 (tflite -> tf2onnx)"
    )
    face_paths = sorted(p for p in faces.iterdir() if p.suffix == ".jpg")
    m128q = quantize_int8(m128, face_paths, 128)
    b128 = make_bundle(work / "bundle128", m128, "mnv2_128", 128)
    b128q = make_bundle(work / "bundle128_int8", m128q, "mnv2_128_int8", 128)
    b224 = make_bundle(work / "bundle224", m224, "mnv2_224", 224)
    btiny = tiny_bundle(work)
    # One throwaway replay first: what a process pays once (the fork server start, first-use imports)
    # is not throughput; the CLI's own cold start is measured on its own below.
    end_to_end(btiny, face_paths[:256], args.workers, args.batch_size)

    print()
    print(
        "a = max(runner's model stage: one-thread streams, onnxruntime intra-op threads + spinning); "
        "limit = 1/(1/a + 1/b); c0, b0 = the runner with Pillow JPEG decode, numpy resize and intra-op threads"
    )
    print(
        f"{'scenario':28s} {'a model':>8s} {'b decode':>8s} {'limit':>7s} {'c e2e':>7s} {'d naive':>7s} "
        f"{'c/limit':>7s} {'c/d':>5s} {'a/d':>5s} {'limit/d':>7s} | {'a1 strm':>7s} {'a2 intra':>8s} "
        f"{'b0':>6s} {'c0':>6s} {'c/c0':>5s}"
    )
    for label, bundle, onnx_path, size, folder in (
        ("128 face model, 200px", b128, m128, 128, faces),
        ("128 face int8 QDQ, 200px", b128q, m128q, 128, faces),
        ("224 model, 1080px photos", b224, m224, 224, posts),
    ):
        paths = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
        paths = paths[: args.measure if size == 128 else max(1, args.measure // 5)]
        n_model = min(len(paths), 2048 if size == 128 else 512)
        naive_paths = paths[: min(len(paths), 1500 if size == 128 else 300)]  # ~2 s (faces) / ~5 s
        # ABBA order (a b c d ... d c b a), averaged: a load that drifts during the run cancels out
        runs: dict[str, list[float]] = {}
        stages = {
            "a1": lambda bundle=bundle, n=n_model: model_only(bundle, n, args.batch_size, runner_config=True),
            "a2": lambda bundle=bundle, n=n_model: model_only(
                bundle, n, args.batch_size, runner_config=False
            ),
            "b": lambda bundle=bundle, paths=paths: decode_only(bundle, paths, args.workers, args.batch_size),
            "b0": lambda bundle=bundle, paths=paths: decode_only(
                bundle, paths, args.workers, args.batch_size, before=True
            ),
            "c": lambda bundle=bundle, paths=paths: end_to_end(bundle, paths, args.workers, args.batch_size),
            "c0": lambda bundle=bundle, paths=paths: end_to_end(
                bundle, paths, args.workers, args.batch_size, before=True
            ),
            "d": lambda onnx_path=onnx_path, p=naive_paths, size=size: naive(onnx_path, p, size),
        }
        if size == 224:
            stages["cf"] = lambda bundle=bundle, paths=paths: end_to_end(
                bundle, paths, args.workers, args.batch_size, fast=True
            )
        order = list(stages)
        for key in order + order[::-1]:
            runs.setdefault(key, []).append(stages[key]())
        m = {k: float(np.mean(v)) for k, v in runs.items()}
        a, b, c, d = max(m["a1"], m["a2"]), m["b"], m["c"], m["d"]
        limit = 1 / (1 / a + 1 / b)
        print(
            f"{label:28s} {a:8.0f} {b:8.0f} {limit:7.0f} {c:7.0f} {d:7.0f} {c / limit:7.2f} {c / d:5.1f} "
            f"{a / d:5.1f} {limit / d:7.1f} | {m['a1']:7.0f} {m['a2']:8.0f} {m['b0']:6.0f} {m['c0']:6.0f} "
            f"{c / m['c0']:5.2f}"
        )
        if "cf" in m:
            cf = m["cf"]
            print(
                f"{'-> same with --fast-decode':28s} {'':8s} {'':8s} {'':7s} {cf:7.0f} {d:7.0f} {'':7s} {cf / d:5.1f}"
            )

    print()
    paths = sorted(p for p in posts.iterdir() if p.suffix == ".jpg")[: max(1, args.measure // 5)]
    full_b = decode_only(b224, paths, args.workers, args.batch_size)
    fast_b = decode_only(b224, paths, args.workers, args.batch_size, fast=True)
    mean_tf, max_tf = fast_decode_difference(paths[:20], 224, "bilinear_tf")
    mean_area, max_area = fast_decode_difference(paths[:20], 224, "area")
    print(
        f"--fast-decode on 1080px -> 224: decode+preprocess {full_b:.0f} -> {fast_b:.0f} img/s ({fast_b / full_b:.1f}x); "
        f"|fast - full| in pixel steps: bilinear_tf mean {mean_tf:.2f} max {max_tf:.0f}, area mean {mean_area:.2f} max {max_area:.0f}"
    )

    print()
    cold_paths = face_paths[: args.measure]
    manifest = work / f"manifest_{faces.name}_{len(cold_paths)}.csv"  # written by end_to_end
    cold_out = Path(tempfile.mkdtemp()) / "preds"
    _, secs = peak_rss_of_run(
        [
            "replay",
            str(b128),
            str(manifest),
            "-o",
            str(cold_out),
            "--format",
            "manifest",
            "--workers",
            str(args.workers),
        ]
    )
    shutil.rmtree(cold_out.parent, ignore_errors=True)
    print(
        f"CLI cold start: 'replaybench replay' on {len(cold_paths)} faces (128 float) {len(cold_paths) / secs:.0f} img/s "
        "wall, interpreter start and imports included"
    )

    print()
    face_list = sorted(p.name for p in faces.iterdir() if p.suffix == ".jpg")
    for n in mem_sizes:
        manifest = work / f"manifest_{n}.csv"
        if not manifest.exists():
            rows = [f"{face_list[i % len(face_list)]},{i % 2}" for i in range(n)]
            manifest.write_text("path,gender_id\n" + "\n".join(f"{faces.name}/{r}" for r in rows) + "\n")
        out = Path(tempfile.mkdtemp()) / "preds"
        peak, secs = peak_rss_of_run(
            ["replay", str(btiny), str(manifest), "-o", str(out), "--json", "--workers", str(args.workers)]
        )
        shutil.rmtree(out.parent, ignore_errors=True)
        print(
            f"end-to-end {n:>7,} items: peak RSS (main + workers) {peak:7.0f} MB, {n / secs:6.0f} items/s incl. start-up"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
