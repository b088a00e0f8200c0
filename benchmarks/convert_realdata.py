"""Parity table for every real model in ../shared/realdata (the expectations table's models).

Converts all of them with ``convert_many`` (each model in its own sandbox child process) and
prints model, verdict, max abs diff (worst output), max quantisation steps, and seconds per model.

    PYTHONPATH=$PWD python benchmarks/convert_realdata.py [--realdata DIR] [--random N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replaybench.extract.convert import convert_many  # noqa: E402
from replaybench.extract.convert.tf_runtime import import_tf2onnx  # noqa: E402
from tests.conftest import REALDATA  # noqa: E402
from tests.extract.convert_expectations import EXPECTATIONS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--realdata", type=Path, default=REALDATA)
    ap.add_argument("--random", type=int, default=3, help="random inputs per model for parity")
    args = ap.parse_args()
    if not args.realdata.is_dir():
        print(f"no real data at {args.realdata}", file=sys.stderr)
        return 1
    t = time.perf_counter()
    import_tf2onnx()
    t_import = time.perf_counter() - t
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rel, exp in EXPECTATIONS.items():
            if "disabled" in exp:
                rows.append((rel, "disabled: " + exp["disabled"], "", "", ""))
                continue
            (res,) = convert_many(
                [(args.realdata / rel, Path(tmp) / rel.replace("/", "__"))],
                n_random=args.random,
                input_shape=exp.get("input_shape"),
                allow_mismatch=True,
            )
            if res.error is not None:
                rows.append(
                    (
                        rel,
                        f"error {type(res.error).__name__}: {res.error.message[:90]}",
                        "",
                        "",
                        f"{res.seconds:.2f}",
                    )
                )
                continue
            b = res.bundle
            assert b is not None and b.parity is not None and b.conversion is not None
            worst = max(o.max_abs_diff for o in b.parity.outputs)
            steps = [o.max_quant_steps for o in b.parity.outputs if o.max_quant_steps is not None]
            verdict = "parity ok" if b.parity.passed else "PARITY FAILED"
            if b.conversion.cut_at:
                verdict += f", cut before {'+'.join(b.conversion.cut_at)}"
            extra = [n.split(" ")[0] for n in b.conversion.notes if n.startswith(("densified", "rewrote"))]
            if extra:
                verdict += f" ({', '.join(extra)})"
            rows.append(
                (rel, verdict, f"{worst:.3g}", f"{max(steps):g}" if steps else "", f"{res.seconds:.2f}")
            )
    w = max(len(r[0]) for r in rows)
    print(
        f"TensorFlow + tf2onnx import (once per process): {t_import:.2f} s; {args.random} random inputs per model"
    )
    print(f"{'model':<{w}}  {'max abs':>9}  {'q-steps':>7}  {'seconds':>7}  verdict")
    for rel, verdict, diff, steps, sec in rows:
        print(f"{rel:<{w}}  {diff:>9}  {steps:>7}  {sec:>7}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
