"""Parity: run the source runtime and onnxruntime on the same inputs and compare every output.

Inputs are random tensors in each input's real range (for quantised inputs the whole dtype range, for
float inputs the range the preprocessing maps pixels 0..255 to) plus any captured trace inputs. Per
output: shape and dtype match, max absolute and relative difference, and for quantised outputs the
difference in quantisation steps. Tolerances depend on the model kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from replaybench.bundle import OutputParity, ParityReport
from replaybench.errors import ConversionError, TraceError
from replaybench.extract.convert.registry import Converted

# Max abs diff relative to the output's magnitude (max(1, max|ref|)), or quantisation steps.
TOLERANCES: dict[str, float] = {
    "float": 1e-4,
    "fp16": 1e-3,  # fp16 weights are dequantised to float32 in both runtimes; only accumulation order differs
    "dynamic": 5e-2,  # TFLite quantises activations on the fly for hybrid kernels; ONNX computes in float
    # steps: ONNX runs the QDQ graph in float with re-quantisation at each tensor, TFLite integer kernels
    # round differently; a few steps on a 255-step softmax are expected (measured: <= 4 on AndroidAge_quant)
    "quantized": 6.0,
}

INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "int16": (-32768, 32767)}


def onnx_session(onnx_bytes: bytes, *, optimize: bool = True) -> Any:
    """An onnxruntime CPU session; ``optimize=False`` disables graph optimisations (so QDQ graphs are
    not fused into QLinear* kernels; see ``check_parity``). Unloadable models: ConversionError."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1  # parity, not speed: keep it reproducible and light on shared machines
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types; all mean "cannot run this model"
        raise ConversionError(f"onnxruntime {ort.__version__} cannot load the ONNX model: {e}") from e


def random_inputs(
    specs: Sequence[tuple[list[int | str | None], str]],
    n: int,
    float_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> list[list[np.ndarray]]:
    """``n`` input sets for (shape, dtype) specs; unknown dims become 1."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n):
        arrays = []
        for shape, dtype in specs:
            dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
            if dtype in INT_RANGES:
                lo, hi = INT_RANGES[dtype]
                arrays.append(rng.integers(lo, hi + 1, size=dims).astype(dtype))
            elif dtype in ("int32", "int64"):
                arrays.append(rng.integers(0, 10, size=dims).astype(dtype))
            elif dtype == "bool":
                arrays.append(rng.integers(0, 2, size=dims).astype(bool))
            else:
                flo, fhi = float_range
                arrays.append(rng.uniform(flo, fhi, size=dims).astype(dtype))
        sets.append(arrays)
    return sets


def check_parity(
    converted: Converted,
    onnx_bytes: bytes,
    *,
    n_random: int = 3,
    trace_inputs: Sequence[np.ndarray | Sequence[np.ndarray]] | None = None,
    float_range: tuple[float, float] = (0.0, 1.0),
    tolerance: float | None = None,
    allow_mismatch: bool = False,
) -> ParityReport:
    """Compare source runtime and onnxruntime on random (and trace) inputs; never raises on mismatch."""
    kind = converted.kind
    tol = TOLERANCES[kind] if tolerance is None else tolerance
    if converted.run_source is None:
        return ParityReport(
            reference_runtime=converted.reference_runtime,
            reference=converted.reference,
            reference_reason=converted.reference_reason,
            inputs_tried=0,
            passed=False,
            allow_mismatch=allow_mismatch,
            note="the source model cannot be run here, so parity could not be checked",
        )
    specs = [(list(t.shape), t.dtype) for t in converted.inputs]
    sets = random_inputs(specs, n_random, float_range=float_range)
    kinds = ["random-range"] * len(sets)
    for item in trace_inputs or []:
        sets.append(_trace_set(item, converted))
        kinds.append("trace")
    refs = [converted.run_source(list(arrays)) for arrays in sets]
    # Quantised models: ORT's QLinear* fusions round differently from TFLite's integer kernels, more
    # or less than the unfused QDQ graph depending on the model (AndroidAge_quant: 47 steps fused vs 4
    # unfused; detect.tflite: 0 fused vs 5 unfused). Both are measured; the closer one is recorded in
    # ``onnxruntime_optimization`` for replay to use.
    levels = ["all", "disabled"] if kind == "quantized" else ["all"]
    best: list[OutputParity] | None = None
    best_level = levels[0]
    for level in levels:
        sess = onnx_session(onnx_bytes, optimize=level == "all")
        outputs = _compare(converted, sess, sets, refs, kind, tol)
        if best is None or _badness(outputs) < _badness(best):
            best, best_level = outputs, level
    assert best is not None
    passed = all(o.passed for o in best) and len(sets) > 0
    return ParityReport(
        reference_runtime=converted.reference_runtime,
        reference=converted.reference,
        reference_reason=converted.reference_reason,
        inputs_tried=len(sets),
        input_kinds=sorted(set(kinds)),
        outputs=best,
        passed=passed,
        allow_mismatch=allow_mismatch,
        onnxruntime_optimization=best_level,
        note=f"model kind {kind}; tolerance {tol:g}"
        + (" quantisation steps" if kind == "quantized" else " x max(1, max|ref|)"),
    )


def _trace_set(item: np.ndarray | Sequence[np.ndarray], converted: Converted) -> list[np.ndarray]:
    """One captured input set: a bare array for a single-input model, else one array per input.

    Dumps from a device may lack the batch dimension or come as flat buffers: an array with the
    input's element count is reshaped to the input's shape and cast to its dtype.
    """
    arrays = [item] if isinstance(item, np.ndarray) else list(item)
    if len(arrays) != len(converted.inputs):
        raise TraceError(
            f"a trace input set has {len(arrays)} arrays; the model has {len(converted.inputs)} inputs"
        )
    out = []
    for a, spec in zip(arrays, converted.inputs, strict=True):
        a = np.asarray(a)
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        if list(a.shape) != dims:
            if a.size != int(np.prod(dims)):
                raise TraceError(
                    f"trace input of shape {list(a.shape)} does not fit input {spec.name} {spec.shape}"
                )
            a = a.reshape(dims)
        out.append(a.astype(spec.dtype, copy=False))
    return out


def _badness(outputs: list[OutputParity]) -> tuple[int, float]:
    """Sort key: fewer failing outputs first, then the smaller worst difference relative to tolerance."""
    worst = max(
        (
            (
                (o.max_quant_steps if o.max_quant_steps is not None else o.max_abs_diff)
                / max(o.tolerance, 1e-12)
            )
            for o in outputs
        ),
        default=0.0,
    )
    return (sum(not o.passed for o in outputs), worst)


def _compare(
    converted: Converted,
    sess: Any,
    sets: list[list[np.ndarray]],
    refs: list[list[np.ndarray]],
    kind: str,
    tol: float,
) -> list[OutputParity]:
    onnx_inputs = sess.get_inputs()
    onnx_outputs = [o.name for o in sess.get_outputs()]
    n_out = len(onnx_outputs)
    worst_abs = [0.0] * n_out
    worst_rel = [0.0] * n_out
    worst_steps: list[float | None] = [None] * n_out
    shape_ok = [True] * n_out
    dtype_ok = [True] * n_out
    ref_mag = [0.0] * n_out
    for arrays, ref in zip(sets, refs, strict=True):
        got = sess.run(None, {i.name: a for i, a in zip(onnx_inputs, arrays, strict=True)})
        for k in range(n_out):
            r, g = np.asarray(ref[k]), np.asarray(got[k])
            dtype_ok[k] &= r.dtype == g.dtype
            if r.shape != g.shape:
                if r.size == g.size:  # e.g. [1,1,1,1404] vs [1,1404]: compare values, still report shape
                    g = g.reshape(r.shape)
                else:
                    shape_ok[k] = False
                    continue
            shape_ok[k] &= r.shape == g.shape
            q = converted.outputs[k].quantization if k < len(converted.outputs) else None
            if q is not None and r.dtype.kind in "iu":
                steps = float(np.max(np.abs(r.astype(np.int64) - g.astype(np.int64)), initial=0))
                worst_steps[k] = max(worst_steps[k] or 0.0, steps)
                rf = (r.astype(np.float64) - q.zero_point) * q.scale
                gf = (g.astype(np.float64) - q.zero_point) * q.scale
            else:
                rf, gf = r.astype(np.float64), g.astype(np.float64)
                if q is not None:  # dequantised output of a quantised model: diff in steps all the same
                    steps = float(np.max(np.abs(rf - gf), initial=0.0)) / q.scale
                    worst_steps[k] = max(worst_steps[k] or 0.0, steps)
            d = float(np.max(np.abs(rf - gf), initial=0.0))
            mag = float(np.max(np.abs(rf), initial=0.0))
            ref_mag[k] = max(ref_mag[k], mag)
            worst_abs[k] = max(worst_abs[k], d)
            worst_rel[k] = max(worst_rel[k], d / mag if mag > 0 else (0.0 if d == 0 else float("inf")))

    outputs = []
    for k, name in enumerate(onnx_outputs):
        steps_k = worst_steps[k]
        if steps_k is not None:
            limit = tol if kind == "quantized" else max(tol, 1.0)
            ok = steps_k <= limit
        else:
            limit = tol * max(1.0, ref_mag[k]) if kind != "quantized" else 1e-2 * max(1.0, ref_mag[k])
            ok = worst_abs[k] <= limit
        outputs.append(
            OutputParity(
                name=name,
                shape_match=shape_ok[k],
                dtype_match=dtype_ok[k],
                max_abs_diff=worst_abs[k],
                max_rel_diff=worst_rel[k],
                max_quant_steps=worst_steps[k],
                tolerance=limit,
                passed=bool(ok and shape_ok[k] and dtype_ok[k]),
            )
        )
    return outputs
