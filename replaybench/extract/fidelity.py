"""End-to-end fidelity: does the bundle, run exactly as replay runs it, reproduce what the app computed?

For every traced invoke of a model that has the source bitmap and the output tensors, the bitmap goes
through replay's preprocessing (``apply_preprocess`` with the resize backend replay's workers use) and
the bundle's replay model (opened by replay's ``open_bundle_model``: ``model.onnx`` at the optimisation level parity held at, or the app's own engine);
the outputs are compared with the app's own output tensors, and, where the bundle has decoders, the decoded
fields are compared too. The result is the bundle's ``fidelity`` block (``FidelityReport``).

Parity checks the converted model against its source runtime on the same input tensor; this checks the
whole path from the bitmap, so a wrong preprocessing spec (swapped colour order, wrong normalisation, a
different resize kernel) shows here even when parity passed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from replaybench.bundle import FidelityReport, FieldAgreement, LoadedBundle, OutputFidelity, load_bundle
from replaybench.errors import ReplaybenchError
from replaybench.extract.trace_match import TracedInvoke, TracedTensor
from replaybench.replay.preprocess import ResizeBackend

log = logging.getLogger(__name__)

#: Float outputs pass when max |replay - app| <= ATOL + RTOL * max |app output| (or the bundle's parity
#: tolerance for that output, when larger). 1% of the output's magnitude leaves room for the device's
#: own arithmetic (XNNPACK, fp16 GPU delegates) and catches a wrong colour order or normalisation, which
#: move outputs by tens of percent.
RTOL = 1e-2
ATOL = 1e-3
#: Integer (quantised) outputs pass within this many quantisation steps.
QUANT_STEPS = 2.0
#: replay's decode workers resize with this backend (ReplayOptions.resize_backend).
RESIZE_BACKEND: ResizeBackend = "onnxruntime"


def _report(verdict: str, reason: str | None, **kw: Any) -> FidelityReport:
    return FidelityReport(
        verdict=verdict,  # type: ignore[arg-type]
        reason=reason,
        rtol=RTOL,
        atol=ATOL,
        quant_steps=QUANT_STEPS,
        resize_backend=RESIZE_BACKEND,
        **kw,
    )


def not_checked(reason: str, *, invokes_traced: int = 0) -> FidelityReport:
    """A fidelity block saying why nothing was compared."""
    return _report("not_checked", reason, invokes_traced=invokes_traced)


def _pair_outputs(
    onnx_names: list[str], traced: list[TracedTensor]
) -> tuple[str, dict[str, TracedTensor]] | None:
    """Pair the bundle's outputs with the app's: by tensor name when every name matches, else by order."""
    by_name = {t.name: t for t in traced if t.name}
    if all(n in by_name for n in onnx_names):
        return "name", {n: by_name[n] for n in onnx_names}
    ordered = sorted(traced, key=lambda t: t.index)
    if len(ordered) == len(onnx_names):
        return "order", dict(zip(onnx_names, ordered, strict=True))
    return None


def _quant(t: TracedTensor) -> tuple[float, int] | None:
    q = t.quantization
    if q is None or not q.scale:
        return None
    return float(q.scale), int(q.zero_point)


def _app_in_bundle_domain(t: TracedTensor, bundle_dtype: np.dtype[Any]) -> tuple[np.ndarray, float | None]:
    """The app's output as the bundle's output represents it (dequantised when the bundle outputs floats
    and the app's tensor is quantised), and the size of one quantisation step in that domain."""
    arr = t.array
    q = _quant(t)
    if np.issubdtype(arr.dtype, np.integer) and q is not None:
        scale, zero = q
        if np.issubdtype(bundle_dtype, np.floating):
            return (arr.astype(np.float64) - zero) * scale, scale
        return arr.astype(np.float64), 1.0
    return arr.astype(np.float64), (1.0 if np.issubdtype(arr.dtype, np.integer) else None)


def check_fidelity(bundle_folder: Path, invokes: Sequence[TracedInvoke]) -> FidelityReport:
    """Run the bundle in ``bundle_folder`` on the traced invokes' bitmaps as replay would and compare
    with the app's outputs. Never raises for a bundle it cannot check: the report says why.

    Example::

        report = check_fidelity(Path("out/bundles/fa_decrypted"), traced_invokes(trace)[sha])
        report.verdict  # "passed"
    """
    from replaybench.replay.decoders import decode_outputs
    from replaybench.replay.preprocess import apply_preprocess
    from replaybench.replay.runtimes import open_bundle_model

    usable = [inv for inv in invokes if inv.bitmap is not None and inv.outputs]
    n_traced = len(invokes)
    if not invokes:
        return not_checked("the model did not run in the trace")
    if not usable:
        return not_checked(
            "no traced invoke has both the source bitmap and the output tensors "
            "(record with the agent's bitmap and tensor capture on)",
            invokes_traced=n_traced,
        )
    try:
        lb: LoadedBundle = load_bundle(bundle_folder)
    except ReplaybenchError as e:
        return not_checked(f"bundle unreadable: {e}", invokes_traced=n_traced)
    bundle = lb.bundle
    spec = bundle.preprocess
    if spec is None:
        return not_checked("the bundle has no preprocess spec", invokes_traced=n_traced)
    parity = bundle.parity
    try:
        ms = open_bundle_model(lb, threads=1, spinning=False)  # the bundle's own runtime, as replay runs it
    except ReplaybenchError as e:
        return not_checked(f"replay cannot run this bundle: {e}", invokes_traced=n_traced)
    if np.dtype(ms.input_dtype) != np.dtype(spec.dtype):
        return _report(
            "failed",
            f"the preprocess spec makes {spec.dtype} but the model takes {np.dtype(ms.input_dtype)}",
            invokes_traced=n_traced,
            invokes_checked=len(usable),
        )
    paired = _pair_outputs(ms.output_names, usable[0].outputs)
    if paired is None:
        return not_checked(
            f"the bundle has {len(ms.output_names)} outputs, the trace {len(usable[0].outputs)}: cannot pair them",
            invokes_traced=n_traced,
        )
    match, _ = paired

    replay_outs: dict[str, list[np.ndarray]] = {n: [] for n in ms.output_names}
    app_outs: dict[str, list[np.ndarray]] = {n: [] for n in ms.output_names}
    steps: dict[str, float | None] = {}
    traced_names: dict[str, str | None] = {}
    input_diff: float | None = None
    for inv in usable:
        pairs = _pair_outputs(ms.output_names, inv.outputs)
        if pairs is None:
            return not_checked(f"invoke {inv.seq}: outputs cannot be paired", invokes_traced=n_traced)
        assert inv.bitmap is not None
        x = apply_preprocess(inv.bitmap, spec, RESIZE_BACKEND)
        if inv.inputs:
            captured = min(inv.inputs, key=lambda t: t.index).array
            if captured.size == x.size:
                d = float(np.max(np.abs(captured.astype(np.float64).reshape(x.shape) - x)))
                input_diff = d if input_diff is None else max(input_diff, d)
        outs = ms.run(x[None])
        for name, traced in pairs[1].items():
            got = np.asarray(outs[name])
            app, step = _app_in_bundle_domain(traced, got.dtype)
            if app.size != got.size:
                return _report(
                    "failed",
                    f"output {name}: the app's tensor {traced.name!r} has shape {list(traced.array.shape)}, "
                    f"replay's {list(got.shape)}",
                    invokes_traced=n_traced,
                    invokes_checked=len(usable),
                    output_match=match,
                )
            replay_outs[name].append(got.reshape(got.shape))
            app_outs[name].append(app.reshape(got.shape))
            steps[name] = step
            traced_names[name] = traced.name

    parity_tol = {o.name: o.tolerance for o in parity.outputs} if parity else {}
    outputs: list[OutputFidelity] = []
    for name in ms.output_names:
        got = np.concatenate(replay_outs[name]).astype(np.float64)
        app = np.concatenate(app_outs[name])
        diff = float(np.max(np.abs(got - app))) if got.size else 0.0
        peak = float(np.max(np.abs(app))) if app.size else 0.0
        step = steps.get(name)
        integer = np.issubdtype(np.asarray(replay_outs[name][0]).dtype, np.integer)
        if integer:
            tol = QUANT_STEPS
        else:
            tol = ATOL + RTOL * peak
            if step is not None:  # a quantised app tensor: at least QUANT_STEPS of its steps
                tol = max(tol, QUANT_STEPS * step)
        tol = max(tol, parity_tol.get(name, 0.0))
        outputs.append(
            OutputFidelity(
                name=name,
                traced_name=traced_names.get(name),
                max_abs_diff=diff,
                max_rel_diff=diff / peak if peak > 0 else (0.0 if diff == 0 else float("inf")),
                max_quant_steps=(diff / step) if step else None,
                tolerance=tol,
                passed=diff <= tol,
            )
        )

    fields = _field_agreement(
        {n: np.concatenate(v) for n, v in replay_outs.items()},
        {n: np.concatenate(v) for n, v in app_outs.items()},
        bundle.postprocess.decoders,
        lb.labels,
        decode_outputs,
    )
    bad_out = [o for o in outputs if not o.passed]
    bad_fields = [f for f in fields if not f.passed]
    reason = None
    if bad_out or bad_fields:
        parts = [
            f"output {o.name}: max |diff| {o.max_abs_diff:.4g} > tolerance {o.tolerance:.4g} "
            f"({o.max_rel_diff:.1%} of the app's largest value)"
            for o in bad_out
        ]
        parts += [f"decoded {f.field}: agrees on {f.agreed} of {f.total} invokes" for f in bad_fields]
        reason = "; ".join(parts)
    return _report(
        "failed" if reason else "passed",
        reason,
        invokes_traced=n_traced,
        invokes_checked=len(usable),
        output_match=match,
        input_max_abs_diff=input_diff,
        outputs=outputs,
        fields=fields,
    )


def _field_agreement(
    replay_outs: dict[str, np.ndarray],
    app_outs: dict[str, np.ndarray],
    decoders: Sequence[Any],
    labels: Sequence[str] | None,
    decode: Any,
) -> list[FieldAgreement]:
    """Decode both sides with the bundle's decoders and compare each decoder's field per invoke."""
    if not decoders:
        return []
    try:
        mine = decode(replay_outs, decoders, labels)
        theirs = decode(app_outs, decoders, labels)
    except ReplaybenchError as e:
        log.warning("decoders cannot decode the traced outputs: %s", e)
        return []
    out = []
    for dec in decoders:
        a, b = mine.get(dec.field), theirs.get(dec.field)
        if a is None or b is None:
            continue
        total = len(b)
        if dec.kind in ("scale", "expectation"):
            va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
            tol = ATOL + RTOL * float(np.max(np.abs(vb))) if total else ATOL
            d = np.abs(va - vb)
            agreed = int((d <= tol).sum())
            out.append(
                FieldAgreement(
                    field=dec.field,
                    kind="number",
                    agreed=agreed,
                    total=total,
                    max_abs_diff=float(d.max()) if total else 0.0,
                    tolerance=tol,
                    passed=agreed == total,
                )
            )
        else:
            if dec.kind == "topk":  # the labels, in order; scores are compared through the raw outputs
                a = [[e["label"] for e in row] for row in a]
                b = [[e["label"] for e in row] for row in b]
            agreed = sum(x == y for x, y in zip(a, b, strict=True))
            kind = "label" if dec.kind in ("softmax_argmax", "sigmoid") else "other"
            out.append(
                FieldAgreement(field=dec.field, kind=kind, agreed=agreed, total=total, passed=agreed == total)
            )
    return out


def write_fidelity(bundle_folder: Path, report: FidelityReport) -> None:
    """Store ``report`` as the ``fidelity`` block of the bundle's bundle.json."""
    lb = load_bundle(bundle_folder)
    lb.bundle.model_copy(update={"fidelity": report}).write(bundle_folder)
