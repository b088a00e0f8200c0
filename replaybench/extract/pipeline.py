"""``replaybench extract``: scan an app, pull its blobs, use a trace, infer preprocessing, convert.

The stages are the library's own (``scan_app``, ``extract_blobs``, ``match_trace``, ``infer_preprocess``,
``convert_many``); this module only decides what flows where and writes one result document,
``extract.json``, next to ``blobs/`` (byte-exact blobs + manifest.json) and ``bundles/<name>/``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from replaybench._console import NullProgress, Progress
from replaybench.bundle import FidelityReport, PreprocessSpec, Provenance, ResizeMethod, SourceInfo
from replaybench.errors import ReplaybenchError, TraceError
from replaybench.extract.inventory import AppInfo, Inventory, ModelBlob

log = logging.getLogger(__name__)

EXTRACT_SCHEMA_VERSION = "1"


def bundle_formats() -> set[str]:
    """Formats extract makes bundles of: those with an ONNX converter or a native replay runtime.
    (A SavedModel is a folder: inside an app it is scattered entries, not one blob to convert.)"""
    from replaybench.extract.convert.registry import CONVERTIBLE_FORMATS
    from replaybench.replay.runtimes import runtimes

    native = {f for r in runtimes() if r.open_engine is not None for f in r.formats}
    return (set(CONVERTIBLE_FORMATS) - {"savedmodel"}) | native


RUNTIME_OF = {
    "tflite": "tflite",
    "onnx": "onnxruntime",
    "torchscript": "pytorch_mobile",
    "pytorch_lite": "pytorch_mobile",
}


class ExtractedModel(BaseModel):
    """One model found in the app (or recovered from a trace dump) and what became of it."""

    model_config = ConfigDict(extra="forbid")

    file: str  # the blob, relative to the output folder
    origin: Literal["app", "trace_dump"]
    format: str
    sha256: str
    location: str  # where it lives in the app (for a dump: the encrypted entry it came from, if known)
    ran_in_trace: bool | None = None  # None without a trace
    # trace / trace_unresolved / user / app_code / metadata-or-default
    preprocess_from: str | None = None
    # Trace-solved preprocessing: the best candidate's residuals (max_error against tolerance) and the
    # best candidates, so an unresolved spec shows how close the search came.
    preprocess_residual: dict[str, float] | None = None
    preprocess_candidates: list[dict[str, Any]] | None = None
    bundle: str | None = None  # bundle folder, relative to the output folder
    status: Literal["converted", "parity_mismatch", "fidelity_failed", "failed", "not_converted"]
    error: str | None = None
    parity_max_abs_diff: float | None = None
    # end-to-end check of the bundle on the traced invokes (None without a trace); also in bundle.json
    fidelity: FidelityReport | None = None
    # what parity compared the bundle with: the original blob, or a rewrite of it (see the reason)
    parity_reference: Literal["original", "rewritten"] | None = None
    parity_reference_reason: str | None = None


class ExtractResult(BaseModel):
    """``extract.json``: the app, the trace verdict, and every model with its bundle."""

    model_config = ConfigDict(extra="forbid")

    schema_version: str = EXTRACT_SCHEMA_VERSION
    app: AppInfo
    output: str
    trace: dict[str, Any] | None = None  # the TraceMatch document
    models: list[ExtractedModel] = Field(default_factory=list)
    runtimes: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


def _static_preprocess(inv: Inventory, blob: ModelBlob) -> PreprocessSpec | None:
    """A spec from constants in the app's code (NormalizeOp, createScaledBitmap), when it has any."""
    from replaybench.bundle import Provenance
    from replaybench.extract.preprocess import Normalization, preprocess_from_static

    inputs = blob.details.get("inputs") or []
    if blob.format != "tflite" or not inputs or inputs[0].get("normalization"):
        return None
    norms: list[Normalization] = []
    method: ResizeMethod | None = None
    for ref in inv.code_references:
        if ref.kind != "preprocess_arg":
            continue
        nums = [a for a in ref.args if isinstance(a, int | float) and not isinstance(a, bool)]
        if "NormalizeOp" in ref.api and len(nums) >= 2:
            norms.append(Normalization((float(nums[0]),), (float(nums[1]),), Provenance.APP_CODE))
        if "createScaledBitmap" in ref.api and ref.args and isinstance(ref.args[-1], bool):
            method = "bilinear_android" if ref.args[-1] else "nearest"
    if not norms and method is None:
        return None
    q = inputs[0].get("quantization") or None
    from replaybench.bundle import QuantParams

    quant = None
    if q and q.get("scale"):
        quant = QuantParams(scale=float(q["scale"][0]), zero_point=int(q["zero_point"][0]))
    try:
        return preprocess_from_static(
            inputs[0]["shape"], inputs[0]["dtype"], quant, normalization=norms, resize_method=method
        )
    except TraceError:
        return None


def extract_app(
    paths: list[Path],
    out_dir: Path,
    *,
    trace: Path | None = None,
    convert: bool = True,
    code: bool = True,
    allow_mismatch: bool = False,
    progress: Progress | None = None,
    preprocess: dict[str, PreprocessSpec] | None = None,
) -> ExtractResult:
    """Scan ``paths``, write every blob byte-exact, match ``trace`` (if any), infer preprocessing and
    convert each convertible model to a bundle. A model that fails to convert is recorded, not fatal.

    ``preprocess`` maps a model (its blob file name or stem, its name in the app, or a sha256 prefix) to
    a spec given by hand; it wins over the trace. A trace-solved spec that misses the captured tensors
    is written with provenance ``trace_unresolved`` (``preprocess_from`` says so too); the caller
    decides whether that is fatal (the CLI exits 15 after writing everything).
    With a trace, every bundle's end-to-end fidelity is checked on the traced invokes
    (``ExtractedModel.fidelity``, and the bundle's ``fidelity`` block).

    Example::

        result = extract_app([Path("app.apk")], Path("out"), trace=Path("trace/"))
        [m.bundle for m in result.models if m.status == "converted"]
    """
    from replaybench.extract.blobs import extract_blobs
    from replaybench.extract.scan import scan_app

    progress = progress or NullProgress()
    out_dir = Path(out_dir)
    inv = scan_app(paths, code=code, progress=progress)
    manifest = extract_blobs(inv, out_dir / "blobs")
    result = ExtractResult(
        app=inv.app, output=str(out_dir), runtimes=inv.runtimes, warnings=list(inv.warnings)
    )
    # (blob file, origin, blob location text, format, sha256, runtime, SourceInfo extras)
    candidates: list[tuple[Path, ExtractedModel, SourceInfo]] = []
    for eb in manifest.blobs:
        b = eb.blob
        src = SourceInfo(
            app=inv.app.package,
            app_version=inv.app.version_name,
            container=list(b.location.container),
            entry=b.location.entry,
            offset=b.location.offset,
            format=b.format,
            runtime=RUNTIME_OF.get(b.format),
            sha256=b.sha256,
        )
        model = ExtractedModel(
            file=f"blobs/{eb.file}",
            origin="app",
            format=b.format,
            sha256=b.sha256,
            location=b.location.describe(),
            status="not_converted",
        )
        candidates.append((out_dir / "blobs" / eb.file, model, src))

    pairs_by_sha: dict[str, Any] = {}
    inputs_by_sha: dict[str, list[Any]] = {}
    traced_by_sha: dict[str, list[Any]] | None = None
    if trace is not None:
        traced_by_sha = {}
        _use_trace(trace, inv, out_dir, result, candidates, pairs_by_sha, inputs_by_sha, traced_by_sha)
    for key, given in (preprocess or {}).items():
        if not any(_override({key: given}, m) for _, m, _ in candidates):
            from replaybench.errors import UsageError

            raise UsageError(
                f"--preprocess {key}=...: no model of the app is called {key}",
                hint="name a model by its blob file (see blobs/manifest.json), file stem or sha256 prefix",
            )

    if convert:
        _convert(
            inv,
            out_dir,
            candidates,
            pairs_by_sha,
            inputs_by_sha,
            allow_mismatch,
            progress,
            overrides=preprocess or {},
            traced_by_sha=traced_by_sha,
        )
    result.models = [m for _, m, _ in candidates]
    (out_dir / "extract.json").write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return result


def _use_trace(
    trace_path: Path,
    inv: Inventory,
    out_dir: Path,
    result: ExtractResult,
    candidates: list[tuple[Path, ExtractedModel, SourceInfo]],
    pairs_by_sha: dict[str, Any],
    inputs_by_sha: dict[str, list[Any]],
    traced_by_sha: dict[str, list[Any]],
) -> None:
    """Mark what ran, pull memory-only models from their dumps, collect bitmap/tensor pairs and every
    model's traced invokes (for the fidelity check)."""
    from replaybench.extract.containers import safe_file_name
    from replaybench.extract.convert.sniff import sniff_format
    from replaybench.extract.formats import file_extension
    from replaybench.extract.trace import read_trace
    from replaybench.extract.trace_match import (
        AppIdentity,
        InventoryBlob,
        match_trace,
        traced_invokes,
    )

    tr = read_trace(trace_path)
    app = AppIdentity(
        package=inv.app.package,
        version_name=inv.app.version_name,
        version_code=inv.app.version_code,
        apk_sha256=[c.sha256 for c in inv.app.containers if c.sha256],
    )
    match = match_trace(tr, list(InventoryBlob.from_inventory(inv.model_dump())), app)
    result.trace = match.model_dump(mode="json")
    result.warnings += match.warnings
    if match.version.same_app is False:
        result.warnings.append(
            "the trace is from another app or version: " + "; ".join(match.version.reasons)
        )
    ran = {b.sha256 for b in match.blobs_ran}
    for _, model, _ in candidates:
        model.ran_in_trace = model.sha256 in ran
    dumps = out_dir / "blobs" / "from_trace"
    for m in match.models:
        if m.how in ("sha256", "path+size") or not m.dump_available or not m.sha256:
            continue
        if any(model.sha256 == m.sha256 for _, model, _ in candidates):
            continue
        src_dump = tr.dump_path(m.dump)
        if src_dump is None:
            continue
        dumps.mkdir(parents=True, exist_ok=True)
        stem = f"{Path(m.blob.entry).stem}_decrypted" if m.blob else f"memory_{m.sha256[:12]}"
        probe = dumps / f"{safe_file_name(stem)}.bin"
        shutil.copyfile(src_dump, probe)
        try:
            fmt = sniff_format(probe)
        except ReplaybenchError:
            fmt = "unknown"
        dest = probe.with_suffix(file_extension(fmt))
        probe.rename(dest)
        origin = m.blob
        candidates.append(
            (
                dest,
                ExtractedModel(
                    file=str(dest.relative_to(out_dir)),
                    origin="trace_dump",
                    format=fmt,
                    sha256=m.sha256,
                    location=(f"decrypted from {origin.entry}" if origin else "memory only"),
                    ran_in_trace=True,
                    status="not_converted",
                ),
                SourceInfo(
                    app=inv.app.package,
                    app_version=inv.app.version_name,
                    container=list(origin.container) if origin else [],
                    entry=origin.entry if origin else None,
                    offset=origin.offset if origin else 0,
                    format=fmt,
                    runtime=m.runtime,
                    sha256=m.sha256,
                ),
            )
        )
    invokes = traced_invokes(tr)
    traced_by_sha.update(invokes)
    for sha, calls in invokes.items():
        with_images = [c for c in calls if c.bitmap is not None and c.inputs]
        if with_images:
            pairs_by_sha[sha] = with_images
        inputs_by_sha[sha] = [
            [t.array for t in sorted(c.inputs, key=lambda t: t.index)] for c in calls if c.inputs
        ]


def _override(overrides: dict[str, PreprocessSpec], model: ExtractedModel) -> PreprocessSpec | None:
    """The hand-given spec for this model: by blob file name or stem, the name it has in the app
    (assets/face.tflite: face.tflite or face), or a sha256 prefix of 8+ characters."""
    name = Path(model.file).name
    entry = model.location.split("@", 1)[0].replace("!", "/").rsplit("/", 1)[-1]
    names = {name, Path(name).stem, entry, Path(entry).stem}
    for key, spec in overrides.items():
        if key in names or (len(key) >= 8 and model.sha256.startswith(key.lower())):
            return spec
    return None


def _best_candidate(spec: PreprocessSpec) -> dict[str, Any]:
    r = spec.resize
    geometry = (
        "shorter_side"
        if r.shorter_side is not None
        else "letterbox"
        if r.keep_aspect
        else "center"
        if r.crop == "center"
        else "stretch"
    )
    return {
        "geometry": geometry,
        "rotation": spec.rotation,
        "mirror": spec.mirror,
        "method": r.method,
        "color_order": spec.color_order,
        "layout": spec.layout,
        "shorter_side": r.shorter_side,
        "scale": spec.scale,
        "offset": spec.offset,
        "max_error": spec.residual.get("max_error"),
        "mean_error": spec.residual.get("mean_error"),
        "best": True,
    }


def unresolved_models(result: ExtractResult) -> list[ExtractedModel]:
    """The models whose preprocessing the trace did not determine (``trace_unresolved``)."""
    return [m for m in result.models if m.preprocess_from == "trace_unresolved"]


def _convert(
    inv: Inventory,
    out_dir: Path,
    candidates: list[tuple[Path, ExtractedModel, SourceInfo]],
    pairs_by_sha: dict[str, Any],
    inputs_by_sha: dict[str, list[Any]],
    allow_mismatch: bool,
    progress: Progress,
    *,
    overrides: dict[str, PreprocessSpec] | None = None,
    traced_by_sha: dict[str, list[Any]] | None = None,
) -> None:
    from replaybench.errors import ParityError
    from replaybench.extract.containers import safe_file_name
    from replaybench.extract.convert.writer import ConversionJob, convert_many
    from replaybench.extract.preprocess import infer_from_invokes

    blobs_by_sha = {b.sha256: b for b in inv.model_blobs}
    jobs, models = [], []
    used: set[str] = set()
    formats = bundle_formats()
    for path, model, src in candidates:
        if model.format not in formats:
            continue
        user = _override(overrides or {}, model)
        spec: PreprocessSpec | None = None
        if user is not None:
            spec = user.model_copy(update={"provenance": user.provenance or _user_provenance()})
            model.preprocess_from = "user"
        elif model.sha256 in pairs_by_sha:
            try:
                spec = infer_from_invokes(pairs_by_sha[model.sha256])
                model.preprocess_from = "trace_unresolved" if spec.unresolved else "trace"
                model.preprocess_residual = dict(spec.residual)
                model.preprocess_candidates = [_best_candidate(spec), *spec.alternatives[:4]]
                if spec.unresolved:
                    log.warning(
                        "%s: preprocessing unresolved (max error %.3g, tolerance %.3g)",
                        model.file,
                        spec.residual.get("max_error", float("nan")),
                        spec.residual.get("tolerance", float("nan")),
                    )
            except TraceError as e:
                log.warning("preprocessing not recoverable from the trace for %s: %s", model.file, e)
        if spec is None and user is None and model.sha256 in blobs_by_sha:
            spec = _static_preprocess(inv, blobs_by_sha[model.sha256])
            if spec is not None:
                model.preprocess_from = "app_code"
        model.preprocess_from = model.preprocess_from or "metadata-or-default"
        name = safe_file_name(Path(model.file).stem)
        while name in used:
            name += "_"
        used.add(name)
        options: dict[str, Any] = {"source": src, "preprocess": spec, "allow_mismatch": True}
        if model.sha256 in inputs_by_sha:
            options["trace_inputs"] = inputs_by_sha[model.sha256][:4]
        if model.format == "ncnn_param" and model.sha256 in blobs_by_sha:
            # blob files are numbered, so the .bin is found by its entry in the app, as scan paired them
            entry = blobs_by_sha[model.sha256].details.get("weights")
            options["weights"] = next(
                (p for p, _, s in candidates if s.entry == entry and s.container == src.container), None
            )
        jobs.append(ConversionJob(path, out_dir / "bundles" / name, options))
        models.append((model, name))
    for outcome, (model, name) in zip(convert_many(jobs, progress=progress), models, strict=True):
        if outcome.bundle is None:
            model.status, model.error = "failed", str(outcome.error)
            continue
        model.bundle = f"bundles/{name}"
        parity = outcome.bundle.parity
        if parity is not None and parity.outputs:
            model.parity_max_abs_diff = max(o.max_abs_diff for o in parity.outputs)
        if parity is not None:
            model.parity_reference = parity.reference
            model.parity_reference_reason = parity.reference_reason
        if parity is not None and not parity.passed:
            model.status = "parity_mismatch"
            model.error = f"parity failed against {parity.reference_runtime} ({parity.reference} model)"
            if not allow_mismatch:
                log.warning("%s: %s", model.file, ParityError(model.error).message)
        else:
            model.status = "converted"
        if traced_by_sha is not None:
            _check_fidelity(out_dir / "bundles" / name, model, traced_by_sha)


def _user_provenance() -> dict[str, Provenance]:
    fields = ("resize", "color_order", "layout", "dtype", "scale", "offset", "quantization")
    return {f: Provenance.USER for f in fields}


def _check_fidelity(folder: Path, model: ExtractedModel, traced_by_sha: dict[str, list[Any]]) -> None:
    """Run the bundle end to end on the model's traced invokes; record the verdict in the bundle and the
    extract result, and mark a bundle that does not reproduce the app's outputs."""
    from replaybench.extract.fidelity import check_fidelity, not_checked, write_fidelity

    invokes = traced_by_sha.get(model.sha256, [])
    try:
        report = check_fidelity(folder, invokes)
    except Exception as e:  # a model that crashes onnxruntime on a real bitmap: say so, do not stop
        log.warning("%s: fidelity check failed to run: %s", model.file, e)
        report = not_checked(f"the check could not run: {type(e).__name__}: {e}", invokes_traced=len(invokes))
    write_fidelity(folder, report)
    model.fidelity = report
    if report.verdict == "failed" and model.status == "converted":
        model.status = "fidelity_failed"
        model.error = f"replay does not reproduce the app's outputs: {report.reason}"
