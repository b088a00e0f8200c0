"""What the conversion sandbox costs: the fixture models converted three ways, side by side in one run.

- in-process: ``convert_model_in_process`` for each model in this process (what convert_many did
  before the sandbox: TensorFlow imported once, counted in the total);
- convert_many: one sandbox child per model, the next child prewarmed while the current one converts;
- cold children: ``convert_model`` per model with no prewarming (what one ``replaybench convert`` pays).

Wall and CPU seconds (this process plus its children) per way, and the extra per conversion against
in-process. CPU seconds are the figure to trust on a shared machine; wall depends on the load (printed).

    PYTHONPATH=$PWD python benchmarks/convert_sandbox.py [--random N]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replaybench.extract.convert import ConversionJob, convert_many, convert_model  # noqa: E402
from replaybench.extract.convert.writer import convert_model_in_process  # noqa: E402
from tests.fixtures.models import saved_model, tflite_models, torch_models  # noqa: E402


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--random", type=int, default=2, help="random inputs per model for parity")
    args = ap.parse_args()
    tfl = tflite_models()
    models = [
        ("float.tflite", tfl["float"], {}),
        ("int8.tflite", tfl["int8"], {}),
        ("fp16.tflite", tfl["fp16"], {}),
        ("savedmodel", saved_model(), {}),
        ("tiny.pt", torch_models()[0], {"input_shape": [1, 3, 32, 32]}),
    ]
    n = len(models)
    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t, c = time.perf_counter(), _cpu()
        for name, p, kw in models:
            convert_model_in_process(p, out / "a" / name, n_random=args.random, **kw)
        rows["in-process"] = (time.perf_counter() - t, _cpu() - c)

        t, c = time.perf_counter(), _cpu()
        jobs = [ConversionJob(p, out / "b" / name, kw) for name, p, kw in models]
        res = convert_many(jobs, n_random=args.random)
        assert all(r.error is None for r in res), [r.error for r in res]
        rows["convert_many (children, prewarmed)"] = (time.perf_counter() - t, _cpu() - c)

        t, c = time.perf_counter(), _cpu()
        for name, p, kw in models:
            convert_model(p, out / "c" / name, n_random=args.random, prewarm_next=False, **kw)
        rows["cold children"] = (time.perf_counter() - t, _cpu() - c)

    base_wall, base_cpu = rows["in-process"]
    print(f"{n} models; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'way':38} {'wall s':>8} {'cpu s':>8} {'+wall s/model':>14} {'+cpu s/model':>13}")
    for way, (wall, cpu) in rows.items():
        print(f"{way:38} {wall:8.1f} {cpu:8.1f} {(wall - base_wall) / n:14.2f} {(cpu - base_cpu) / n:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
