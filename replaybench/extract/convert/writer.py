"""The bundle writer: one model file -> a validated bundle folder (model.onnx, source.<ext>, labels.txt,
bundle.json). Each model is converted in its own child process with resource limits (``sandbox``):
``convert_many`` starts one child per model, so no model shares a process with another."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from replaybench._console import NullProgress, Progress
from replaybench.bundle import (
    LABELS_TXT,
    MODEL_ONNX,
    Bundle,
    ConversionInfo,
    IOSpec,
    PostprocessSpec,
    PreprocessSpec,
    Provenance,
    QuantParams,
    ResizeSpec,
    RuntimeInfo,
    SourceInfo,
    TensorSpec,
)
from replaybench.errors import ConversionError, ParityError, ReplaybenchError, UnsafeInputError, UsageError
from replaybench.extract.convert.registry import (
    Converted,
    ConvertOptions,
    SourceTensor,
    get_converter,
    registered_formats,
)
from replaybench.extract.convert.sandbox import ChildLimits
from replaybench.extract.convert.sniff import sniff_format
from replaybench.extract.formats import file_extension


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(path).as_posix().encode())
                h.update(p.read_bytes())
        return h.hexdigest()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _layout(shape: Sequence[int | str | None]) -> str | None:
    if len(shape) == 4:
        if shape[-1] in (1, 3, 4):
            return "NHWC"
        if shape[1] in (1, 3, 4):
            return "NCHW"
        return "other"
    if len(shape) == 2:
        return "NC"
    if len(shape) == 3:
        return "NTC"
    return "other"


def default_preprocess(inp: SourceTensor, metadata: dict[str, Any] | None = None) -> PreprocessSpec | None:
    """The documented default preprocessing for an image input, or None for non-image inputs.

    Float inputs: pixel / 255 (Provenance.DEFAULT) unless TFLite metadata gives mean/std (METADATA).
    Quantised inputs: raw pixels are the quantised values (scale/offset chosen so q == pixel for uint8,
    q == pixel - 128 for int8) and the input's QuantParams are recorded.
    """
    layout = _layout(inp.shape)
    if layout not in ("NHWC", "NCHW"):
        return None
    h, w = (inp.shape[1], inp.shape[2]) if layout == "NHWC" else (inp.shape[2], inp.shape[3])
    c = inp.shape[3] if layout == "NHWC" else inp.shape[1]
    if not isinstance(h, int) or not isinstance(w, int) or h <= 0 or w <= 0:
        return None
    dtype = inp.dtype if inp.dtype in ("float32", "float16", "uint8", "int8") else "float32"
    prov = {f: Provenance.DEFAULT for f in ("resize", "color_order", "layout", "dtype", "scale", "offset")}
    notes = []
    scale, offset = [1.0 / 255.0], [0.0]
    q = inp.quantization
    if q is not None:
        # the pixel -> quantised value mapping, also for a float-I/O bundle of a quantised model
        shift = -128 if (inp.quantized_dtype or dtype) == "int8" else 0
        scale, offset = [q.scale], [(shift - q.zero_point) * q.scale]
        prov["quantization"] = Provenance.METADATA
        notes.append(
            "quantised input: raw pixels are fed as the quantised values"
            if dtype in ("uint8", "int8")
            else "float I/O of a quantised model: pixels mapped to the real values the quantised input encodes"
        )
    elif metadata and metadata.get("mean") and metadata.get("std"):
        mean, std = metadata["mean"], metadata["std"]
        scale = [1.0 / s for s in std]
        offset = [-m / s + 0.0 for m, s in zip(mean, std, strict=False)]  # + 0.0: no -0.0
        prov["scale"] = prov["offset"] = Provenance.METADATA
        notes.append("normalisation from TFLite metadata NormalizationOptions")
    else:
        notes.append("float input without metadata: pixel / 255 assumed; check with a trace")
    return PreprocessSpec(
        resize=ResizeSpec(width=w, height=h),
        color_order="GRAY" if c == 1 else "RGB",
        layout=layout,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        scale=scale,
        offset=offset,
        quantization=q if dtype in ("uint8", "int8") else None,
        provenance=prov,
        notes=notes,
    )


def _float_range(spec: PreprocessSpec | None) -> tuple[float, float]:
    if spec is None:
        return (0.0, 1.0)
    ends = [v for s, o in zip(spec.scale, spec.offset, strict=False) for v in (o, 255.0 * s + o)]
    return (min(ends), max(ends))


def _io_spec(converted: Converted, onnx_model: Any) -> IOSpec:
    from replaybench.extract.convert.onnx_source import tensor_specs

    init = {i.name for i in onnx_model.graph.initializer}
    ins = tensor_specs([i for i in onnx_model.graph.input if i.name not in init])
    outs = tensor_specs(onnx_model.graph.output)

    def merge(onnx_t: list[SourceTensor], src: list[SourceTensor]) -> list[TensorSpec]:
        res = []
        for k, t in enumerate(onnx_t):
            # a float-I/O bundle of a quantised model has no quantised tensors at its boundary
            q: QuantParams | None = (
                src[k].quantization if k < len(src) and t.dtype in ("uint8", "int8") else None
            )
            res.append(
                TensorSpec(name=t.name, shape=t.shape, dtype=t.dtype, layout=_layout(t.shape), quantization=q)
            )  # type: ignore[arg-type]
        return res

    return IOSpec(inputs=merge(ins, converted.inputs), outputs=merge(outs, converted.outputs))


def _input_shapes(
    preprocess: PreprocessSpec | None, input_shape: Sequence[int] | None
) -> list[list[int]] | None:
    if input_shape:
        return [list(input_shape)]
    if preprocess is not None:
        r = preprocess.resize
        c = 1 if preprocess.color_order == "GRAY" else 3
        return [[1, r.height, r.width, c] if preprocess.layout == "NHWC" else [1, c, r.height, r.width]]
    return None


def _given_by_user(preprocess: PreprocessSpec) -> PreprocessSpec:
    """A spec given to convert: fields it does not attribute themselves are the user's."""
    provenance = dict(preprocess.provenance) | {  # keeps the spec's other fields (rotation, mirror, ...)
        f: preprocess.provenance.get(f, Provenance.USER)
        for f in ("resize", "color_order", "layout", "dtype", "scale", "offset", "quantization")
    }
    return preprocess.model_copy(update={"provenance": provenance})


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UnsafeInputError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)


def convert_model(
    model: Path,
    out: Path,
    *,
    preprocess: PreprocessSpec | None = None,
    postprocess: PostprocessSpec | None = None,
    labels: list[str] | None = None,
    opset: int | None = None,
    allow_mismatch: bool = False,
    source: SourceInfo | None = None,
    trace_inputs: Sequence[np.ndarray | Sequence[np.ndarray]] | None = None,
    keep_quantized_io: bool = True,
    input_shape: Sequence[int] | None = None,
    n_random: int = 3,
    tolerance: float | None = None,
    runtime: str = "auto",
    weights: Path | None = None,
    limits: ChildLimits | None = None,
    prewarm_next: bool | str | None = None,
) -> Bundle:
    """Convert ``model`` to ONNX, check parity against its own runtime, and write the bundle in ``out``,
    all in a child process under ``limits`` (default: ``ChildLimits.from_env()``; see ``sandbox``).
    ``prewarm_next``: start the next conversion's child now; the next model's format if known
    (``sandbox.run_task``).

    Same arguments, result and typed errors as ``convert_model_in_process``, plus ResourceLimitError
    (exit 17) when the model exceeds a limit.

    Example::

        bundle = convert_model(Path("age.tflite"), Path("bundles/age"))
        assert bundle.parity.passed
    """
    from replaybench.extract.convert.sandbox import pack_arrays, run_task

    layout, arrays = pack_arrays(trace_inputs)

    def dump(spec: Any) -> Any:
        return spec.model_dump(mode="json") if spec is not None else None

    request = {  # paths as given: the child runs in this cwd, so its messages name them the same way
        "model": str(Path(model)),
        "out": str(Path(out)),
        "layout": layout,
        "kwargs": {
            "preprocess": dump(preprocess),
            "postprocess": dump(postprocess),
            "labels": list(labels) if labels is not None else None,
            "opset": opset,
            "allow_mismatch": allow_mismatch,
            "source": dump(source),
            "keep_quantized_io": keep_quantized_io,
            "input_shape": list(input_shape) if input_shape is not None else None,
            "n_random": n_random,
            "tolerance": tolerance,
            "runtime": runtime,
            "weights": str(weights) if weights is not None else None,
        },
    }
    res = run_task(
        "convert", request, arrays=arrays, limits=limits, what=Path(model).name, prewarm_next=prewarm_next
    )
    return Bundle.model_validate(res.payload["bundle"])


def convert_model_in_process(
    model: Path,
    out: Path,
    *,
    preprocess: PreprocessSpec | None = None,
    postprocess: PostprocessSpec | None = None,
    labels: list[str] | None = None,
    opset: int | None = None,
    allow_mismatch: bool = False,
    source: SourceInfo | None = None,
    trace_inputs: Sequence[np.ndarray | Sequence[np.ndarray]] | None = None,
    keep_quantized_io: bool = True,
    input_shape: Sequence[int] | None = None,
    n_random: int = 3,
    tolerance: float | None = None,
    runtime: str = "auto",
    weights: Path | None = None,
) -> Bundle:
    """Convert ``model`` to ONNX, check parity against its own runtime, and write the bundle in ``out``.

    Runs the model's code in THIS process without limits: only the sandbox child calls it
    (``convert_model`` is the entry point for untrusted models).

    ``weights``: an NCNN ``.param``'s ``.bin`` when it is not beside it with the same stem.
    ``runtime``: ``onnx`` converts or fails; ``native`` keeps the original model for its own engine
    (``replaybench.replay.runtimes``); ``auto`` (default) tries ONNX first and falls back to the native
    engine, with the reason in ``bundle.runtime.reason``, when there is no converter or parity fails.

    ``trace_inputs``: captured input tensors, each a bare array (single-input model) or one array per
    input; they are tried in parity next to ``n_random`` random inputs. ``preprocess`` given here is recorded with Provenance.USER for fields the spec does not already
    attribute. Raises ConversionError, ParityError (after writing bundle.json, unless allow_mismatch),
    CorruptInputError, UnsafeInputError, UnsupportedFormatError.

    Example::

        bundle = convert_model(Path("age.tflite"), Path("bundles/age"))
        assert bundle.parity.passed
    """
    import onnx

    from replaybench.replay.runtimes import native_runtime_for

    model = Path(model)
    out = Path(out)
    fmt = source.format if source is not None else sniff_format(model)
    native = native_runtime_for(fmt)
    if runtime not in ("auto", "onnx", "native"):
        raise UsageError(f"unknown runtime choice {runtime!r}; use auto, onnx or native")
    if runtime == "native" or (runtime == "auto" and native is not None and fmt not in registered_formats()):
        if native is None:
            raise UsageError(f"no native runtime runs {fmt} models on the host; use --runtime onnx")
        reason = (
            "asked for with --runtime native"
            if runtime == "native"
            else f"no converter from {fmt} to ONNX: replay runs the original in {native.name}"
        )
        return write_native_bundle(
            model, out, native.name, reason, fmt=fmt, preprocess=preprocess, postprocess=postprocess,
            labels=labels, source=source, input_shape=input_shape, weights=weights,
        )  # fmt: skip
    if runtime == "auto" and native is not None:
        # ONNX first; where it cannot be made, or disagrees with the original, the app's own engine.
        try:
            onnx_bundle = convert_model_in_process(
                model, out, preprocess=preprocess, postprocess=postprocess, labels=labels, opset=opset,
                allow_mismatch=allow_mismatch, source=source, trace_inputs=trace_inputs,
                keep_quantized_io=keep_quantized_io, input_shape=input_shape, n_random=n_random,
                tolerance=tolerance, runtime="onnx",
            )  # fmt: skip
            cut = onnx_bundle.conversion.cut_at if onnx_bundle.conversion else []
            parity = onnx_bundle.parity
            if parity is not None and not parity.passed:  # written anyway (allow_mismatch): not faithful
                why = f"the ONNX model disagrees with {parity.reference_runtime}"
            elif cut:
                why = f"the ONNX graph is cut before custom op(s) {', '.join(cut)}"
            else:
                return onnx_bundle
            onnx_error: ReplaybenchError | None = None
        except (ConversionError, ParityError) as e:
            why, onnx_error = e.message, e
        try:
            return write_native_bundle(
                model, out, native.name, f"no faithful ONNX route ({why}): replay runs the whole original "
                f"in {native.name}", fmt=fmt, preprocess=preprocess, postprocess=postprocess, labels=labels,
                source=source, input_shape=input_shape, weights=weights,
            )  # fmt: skip
        except ReplaybenchError as native_error:
            if onnx_error is None:  # the ONNX bundle stands, and says why the engine could not replace it
                if onnx_bundle.conversion is not None:
                    onnx_bundle.conversion.notes.append(
                        f"{native.name} cannot run the model here: {native_error}"
                    )
                onnx_bundle.write(out)
                return onnx_bundle
            onnx_error.message += (
                f"; {native.name} on the host cannot run the original either: {native_error}"
            )
            raise onnx_error from native_error
    converter = get_converter(fmt)
    if preprocess is not None:
        preprocess = _given_by_user(preprocess)
    opts = ConvertOptions(
        opset=opset, keep_quantized_io=keep_quantized_io, input_shapes=_input_shapes(preprocess, input_shape)
    )
    t0 = time.perf_counter()
    converted = converter(model, opts)
    if not keep_quantized_io and any(
        t.quantization is not None for t in converted.inputs + converted.outputs
    ):
        from replaybench.extract.convert.quant_io import dequantize_io

        converted = dequantize_io(converted)
    onnx_model = converted.onnx_model
    try:
        onnx.checker.check_model(onnx_model)
        onnx_model = onnx.shape_inference.infer_shapes(onnx_model)
    except Exception as e:
        raise ConversionError(f"the converted ONNX model of {model.name} fails the checker: {e}") from e
    seconds = time.perf_counter() - t0
    if preprocess is None and converted.inputs:
        preprocess = default_preprocess(converted.inputs[0], converted.metadata)
    onnx_bytes = onnx_model.SerializeToString()
    parity = check_parity_for(
        converted, onnx_bytes, preprocess, n_random, trace_inputs, tolerance, allow_mismatch
    )

    labels = labels or converted.metadata.get("labels")
    post = _bind_decoders(postprocess or PostprocessSpec(), [o.name for o in onnx_model.graph.output])
    if labels and post.labels is None:
        post = post.model_copy(update={"labels": list(labels)})
    opset_used = next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), None)
    src_name = "source.savedmodel" if fmt == "savedmodel" else "source" + file_extension(fmt)
    src_info = (source or SourceInfo(format=fmt, sha256="")).model_copy(
        update={"sha256": _sha256(model), "file": src_name, "format": fmt}
    )
    if src_info.entry is None and source is None:
        src_info = src_info.model_copy(update={"entry": model.name})
    bundle = Bundle(
        name=model.stem if model.is_file() else model.name,
        source=src_info,
        io=_io_spec(converted, onnx_model),
        preprocess=preprocess,
        postprocess=post,
        parity=parity,
        conversion=ConversionInfo(
            converter=converted.converter,
            converter_version=converted.converter_version,
            opset=opset_used,
            seconds=round(seconds, 3),
            cut_at=converted.cut_at,
            cut_tensors=converted.cut_tensors,
            notes=converted.notes,
        ),
    )
    _prepare_out(out)
    (out / MODEL_ONNX).write_bytes(onnx_bytes)
    dest = out / src_name
    if model.is_dir():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(model, dest, symlinks=True)  # symlinks stay links: never follow them out of the app
    else:
        shutil.copyfile(model, dest)
    if labels:
        (out / LABELS_TXT).write_text("\n".join(labels) + "\n", encoding="utf-8")
    bundle.write(out)
    if not parity.passed and not allow_mismatch:
        worst = max(parity.outputs, key=lambda o: o.max_abs_diff, default=None)
        detail = f"; worst output {worst.name}: max abs diff {worst.max_abs_diff:.3g}" if worst else ""
        raise ParityError(
            f"{model.name}: the ONNX model disagrees with {parity.reference_runtime}{detail} "
            f"(report in {out / 'bundle.json'})",
            hint="inspect it with: replaybench inspect " + str(out) + "  (or accept with --allow-mismatch)",
        )
    return bundle


def native_io(runtime: str, files: Sequence[Path], input_shape: Sequence[int] | None) -> tuple[Any, IOSpec]:
    """Open ``files`` in the engine ``runtime`` (one probe run) and describe its inputs and outputs."""
    from replaybench.replay.runtimes import open_native

    nm = open_native(runtime, files, input_shape=input_shape, threads=1)
    quant = getattr(nm.engine, "quantization", {}).get(nm.input_name)
    shape: list[int | str | None] = list(nm.input_shape)
    io = IOSpec(
        inputs=[
            TensorSpec(
                name=nm.input_name,
                shape=shape,
                dtype=nm.input_dtype.name,
                layout=_layout(shape),  # type: ignore[arg-type]
                quantization=quant,
            )
        ],
        outputs=[
            TensorSpec(name=n, shape=list(sh), dtype=dt, layout=_layout(sh))  # type: ignore[arg-type]
            for n, sh, dt in zip(nm.output_names, nm.output_shapes, nm.output_dtypes, strict=True)
        ],
    )
    return nm, io


def write_native_bundle(
    model: Path,
    out: Path,
    runtime: str,
    reason: str,
    *,
    fmt: str,
    preprocess: PreprocessSpec | None = None,
    postprocess: PostprocessSpec | None = None,
    labels: list[str] | None = None,
    source: SourceInfo | None = None,
    input_shape: Sequence[int] | None = None,
    weights: Path | None = None,
) -> Bundle:
    """A bundle whose replay runtime is the app's own engine on the original files (nothing converted).

    The engine opens and runs the model once before anything is written, so a file it rejects (a
    truncated NCNN ``.bin``, a corrupt MNN file) is a typed error and ``out`` holds nothing new.
    """
    from replaybench.replay.runtimes import ncnn_pair, runtime_version

    files = list(ncnn_pair([model, *([weights] if weights else [])])) if fmt == "ncnn_param" else [model]
    if input_shape is None and preprocess is not None:
        shapes = _input_shapes(preprocess, None)  # H, W, C from the spec, placed by its layout
        input_shape = shapes[0] if shapes else None
    nm, io = native_io(runtime, files, input_shape)
    names = [f"source{f.suffix}" for f in files]
    if preprocess is None:
        t = io.inputs[0]
        preprocess = default_preprocess(SourceTensor(t.name, t.shape, t.dtype, t.quantization))
    else:
        preprocess = _given_by_user(preprocess)
    post = _bind_decoders(postprocess or PostprocessSpec(), nm.output_names)
    if labels and post.labels is None:
        post = post.model_copy(update={"labels": list(labels)})
    src_info = (source or SourceInfo(format=fmt, sha256="")).model_copy(
        update={"sha256": _sha256(model), "file": names[0], "format": fmt}
    )
    if src_info.entry is None and source is None:
        src_info = src_info.model_copy(update={"entry": model.name})
    bundle = Bundle(
        name=model.stem,
        source=src_info,
        io=io,
        preprocess=preprocess,
        postprocess=post,
        runtime=RuntimeInfo(name=runtime, files=names, version=runtime_version(runtime), reason=reason),  # type: ignore[arg-type]
    )
    _prepare_out(out)
    (out / MODEL_ONNX).unlink(missing_ok=True)  # an ONNX attempt that failed parity left one
    for f, name in zip(files, names, strict=True):
        shutil.copyfile(f, out / name)
    if labels:
        (out / LABELS_TXT).write_text("\n".join(labels) + "\n", encoding="utf-8")
    bundle.write(out)
    return bundle


def _bind_decoders(post: PostprocessSpec, outputs: list[str]) -> PostprocessSpec:
    """Point decoders with no (or an unknown) output name at the model's only output, or say which exist."""
    decoders = []
    for dec in post.decoders:
        if dec.output not in outputs:
            if len(outputs) != 1:
                raise UsageError(
                    f"decoder {dec.field!r} reads output {dec.output!r}; the model's outputs are: "
                    + ", ".join(outputs)
                )
            dec = dec.model_copy(update={"output": outputs[0]})
        decoders.append(dec)
    return post.model_copy(update={"decoders": decoders})


def check_parity_for(
    converted: Converted,
    onnx_bytes: bytes,
    preprocess: PreprocessSpec | None,
    n_random: int,
    trace_inputs: Sequence[np.ndarray | Sequence[np.ndarray]] | None,
    tolerance: float | None,
    allow_mismatch: bool,
):  # type: ignore[no-untyped-def]
    from replaybench.extract.convert.parity import check_parity

    return check_parity(
        converted,
        onnx_bytes,
        n_random=n_random,
        trace_inputs=trace_inputs,
        float_range=_float_range(preprocess)
        if preprocess is None or preprocess.quantization is None
        else (0.0, 1.0),
        tolerance=tolerance,
        allow_mismatch=allow_mismatch,
    )


def _next_format(jobs: Sequence[ConversionJob | tuple[Path, Path]], i: int) -> str | bool:
    """The format of job ``i + 1`` (which runtimes to prewarm), True if unknown, False if none."""
    if i + 1 >= len(jobs):
        return False
    nxt = jobs[i + 1]
    job = nxt if isinstance(nxt, ConversionJob) else ConversionJob(Path(nxt[0]), Path(nxt[1]))
    source = job.options.get("source")
    if source is not None:
        return str(source.format)
    try:
        return sniff_format(job.model)
    except ReplaybenchError:
        return True


@dataclass
class ConversionJob:
    """One model for ``convert_many``, with its own ``convert_model`` keyword arguments
    (preprocess, source, labels, trace_inputs, ...)."""

    model: Path
    out: Path
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConversionOutcome:
    """One model of a ``convert_many`` batch: its bundle, or the error that stopped it."""

    model: Path
    out: Path
    bundle: Bundle | None
    error: ReplaybenchError | None
    seconds: float


def convert_many(
    jobs: Sequence[ConversionJob | tuple[Path, Path]],
    *,
    progress: Progress | None = None,
    **kwargs: Any,
) -> list[ConversionOutcome]:
    """Convert many models, each in its own sandbox child (``convert_model``); one failure does not
    stop the others: each outcome holds its bundle or its typed error. ``kwargs`` apply to every job
    (``limits`` included), a job's own ``options`` override them."""
    progress = progress or NullProgress()
    progress.start(len(jobs), "converting")
    results = []
    try:
        for i, job in enumerate(jobs):
            if not isinstance(job, ConversionJob):
                job = ConversionJob(Path(job[0]), Path(job[1]))
            model, out = job.model, job.out
            t = time.perf_counter()
            # the next model's child imports its runtimes while this one converts
            opts = {"prewarm_next": _next_format(jobs, i), **kwargs, **job.options}
            try:
                b: Bundle | None = convert_model(model, out, **opts)
                err: ReplaybenchError | None = None
            except ReplaybenchError as e:
                b, err = None, e
            results.append(ConversionOutcome(model, out, b, err, time.perf_counter() - t))
            progress.advance()
    finally:
        progress.close()
    return results
