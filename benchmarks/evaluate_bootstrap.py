"""Bootstrap speed of MetricFrame: the counts-matrix (vectorised) path vs calling the metric on each
resample (fairlearn-style callables), side by side in one run on the same data and seed.

    PYTHONPATH=. python benchmarks/evaluate_bootstrap.py [--rows 10000] [--boot 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from replaybench.evaluate.metrics import MetricFrame, age_metrics, classification_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.rows
    gender = rng.choice(["female", "male"], n)
    pred = np.where(rng.random(n) < 0.9, gender, np.where(gender == "male", "female", "male"))
    race = rng.choice(["White", "Black", "Asian", "Indian", "Others"], n)
    age = rng.integers(1, 90, n).astype(float)
    agep = age + rng.normal(0, 5, n)
    sf = {"race": race}

    def timed(**kw: object) -> float:
        t = time.perf_counter()
        MetricFrame(sensitive_features=sf, n_boot=args.boot, seed=0, **kw)  # type: ignore[arg-type]
        return time.perf_counter() - t

    acc = {"accuracy": classification_metrics(["female", "male"])["accuracy"]}
    loop_acc = {"accuracy": lambda t, p: float(np.mean(t == p))}
    mae = {"mae": age_metrics(exact_truth=True)["mae"]}
    loop_mae = {"mae": lambda t, p: float(np.mean(np.abs(p - t[:, 0])))}
    full = classification_metrics(["female", "male"])
    yt = np.column_stack([age, age])
    rows = [
        (
            "accuracy",
            timed(metrics=acc, y_true=gender, y_pred=pred),
            timed(metrics=loop_acc, y_true=gender, y_pred=pred),
        ),
        ("mae", timed(metrics=mae, y_true=yt, y_pred=agep), timed(metrics=loop_mae, y_true=yt, y_pred=agep)),
    ]
    print(f"{n} rows, {args.boot} resamples, overall + 5 race groups (each resampled {args.boot} times)")
    print(f"{'metric':10s} {'vectorised s':>13s} {'per-resample loop s':>20s} {'speed-up':>9s}")
    for name, vec, loop in rows:
        print(f"{name:10s} {vec:13.3f} {loop:20.3f} {loop / vec:8.1f}x")
    t_full = timed(metrics=full, y_true=gender, y_pred=pred)
    t_age = timed(metrics=age_metrics(exact_truth=True), y_true=yt, y_pred=agep)
    print(
        f"all {len(full)} gender metrics vectorised: {t_full:.3f} s; all {len(age_metrics(exact_truth=True))} "
        f"age metrics (incl. median): {t_age:.3f} s"
    )


if __name__ == "__main__":
    main()
