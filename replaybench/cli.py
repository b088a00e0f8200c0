"""The command-line front end. Thin: parse, check flag conflicts, call ONE library function, render.

Every command's help carries an ``Example:``; ``tests/test_cli.py`` walks them all. Errors from the
library are ``replaybench.errors.ReplaybenchError`` subclasses, turned into a one-line message and the
error's exit code in ``main``; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from replaybench import __version__
from replaybench.errors import ReplaybenchError, UsageError

app = typer.Typer(
    name="replaybench",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
distill_app = typer.Typer(
    help="The gender-bias student: teacher labels, training, export, bulk scoring.\n\n"
    "Example: replaybench distill score student-bundle/ posts/ -o scores/",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(distill_app, name="distill")
hooks_app = typer.Typer(
    help="Hook manifests for in-app replay (replay-app).\n\nExample: replaybench hooks suggest trace/ -o hooks.json",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(hooks_app, name="hooks")


class _State:
    debug = False
    # -vv or --debug: third-party chatter (log records, progress bars, native start-up lines) is shown
    loud = False
    # what to tell the user if Ctrl-C stops the command (typer turns it into a silent exit 130)
    on_interrupt = "interrupted"


STATE = _State()

# Reusable parameter aliases (the hf CLI habit): options that recur share one definition.
JsonFlag = Annotated[bool, typer.Option("--json", help="Write the result document as JSON to stdout.")]
OutDir = Annotated[Path, typer.Option("-o", "--output", help="Output folder.")]
# how trace and replay-app reach the app's process (Frida)
ProgramArgs = Annotated[
    list[str] | None, typer.Argument(metavar="[-- ARGS]", help="Arguments for a spawned local program.")
]
UsbFlag = Annotated[bool, typer.Option("--usb", help="Use the USB device.")]
RemoteOpt = Annotated[str | None, typer.Option("--remote", help="Use frida-server at HOST[:PORT].")]
PidOpt = Annotated[int | None, typer.Option("--pid", help="Attach to this process id.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Attach to the process with this name.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (results are reproducible).")]
# the options replay, replay-app and distill score share
ResumeFlag = Annotated[
    bool, typer.Option("--resume", help="Continue a killed run in the same output folder.")
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Replay only the first N items.")]
ShuffleFlag = Annotated[bool, typer.Option("--shuffle", help="Shuffle items (with --seed) before --limit.")]
PartRowsOpt = Annotated[int, typer.Option("--part-rows", help="Rows per Parquet part.")]
VariantOpt = Annotated[
    str | None,
    typer.Option("--variant", help="Run the bundles' quantised graphs (int8: a student bundle's int8 pair)."),
]
AllowOutside = Annotated[
    bool,
    typer.Option(
        "--allow-outside",
        help="Posts: accept images named outside the dataset folder (absolute, '..', symlinks); "
        "refused by default.",
    ),
]


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"replaybench {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logging on stderr.")] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only warnings and errors on stderr.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """replaybench: extract on-device models from Android apps, replay datasets through them, and
    measure demographic disparities.

    Example: replaybench scan app.apk
    """
    from replaybench._console import setup_logging

    STATE.debug = debug
    # Third-party chatter (TensorFlow/absl start-up lines, transformers progress bars, tf2onnx and
    # onnxruntime log records, deprecation warnings) is for their developers, not for researchers; our
    # own messages go through logging. -vv or --debug shows everything.
    loud = STATE.loud = verbose >= 2 or debug
    setup_logging(verbose, quiet, third_party=loud)
    if not loud:
        import warnings

        warnings.simplefilter("ignore")


# --------------------------------------------------------------------------------------------- extract


@app.command()
def scan(
    apps: Annotated[list[Path], typer.Argument(help="APK, split-APK folder, XAPK/APKS/APKM, or model file.")],
    json_out: JsonFlag = False,
    no_code: Annotated[
        bool, typer.Option("--no-code", help="Skip DEX code analysis (much faster on big apps).")
    ] = False,
) -> None:
    """What is inside an app: ML runtimes, model blobs, and the evidence for each.

    Example: replaybench scan app.apk --json > inventory.json
    """
    from replaybench._console import NullProgress, RichProgress, emit_json
    from replaybench.extract.scan import scan_app

    inventory = scan_app(apps, code=not no_code, progress=NullProgress() if json_out else RichProgress())
    if json_out:
        emit_json(inventory)
        return
    from replaybench.extract.render import print_inventory

    print_inventory(inventory)


@app.command()
def extract(
    app_path: Annotated[Path, typer.Argument(metavar="APP", help="The app to extract from.")],
    output: OutDir,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="A trace recorded by 'replaybench trace'.")
    ] = None,
    json_out: JsonFlag = False,
    no_code: Annotated[bool, typer.Option("--no-code", help="Skip DEX code analysis.")] = False,
    no_convert: Annotated[
        bool, typer.Option("--no-convert", help="Only pull the blobs; do not convert them to bundles.")
    ] = False,
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Exit 0 even when a bundle fails parity.")
    ] = False,
    preprocess: Annotated[
        list[str] | None,
        typer.Option(
            "--preprocess",
            metavar="MODEL=SPEC",
            help="Preprocessing for one model (blob file name, stem or sha256 prefix) from a spec file or "
            "bundle; wins over the trace. Repeat for several models.",
        ),
    ] = None,
    allow_unfaithful: Annotated[
        bool,
        typer.Option(
            "--allow-unfaithful",
            help="Exit 0 even when a bundle fails its end-to-end fidelity check against the trace.",
        ),
    ] = False,
    accept_unresolved: Annotated[
        bool,
        typer.Option(
            "--accept-unresolved",
            help="Exit 0 even when the trace does not determine a model's preprocessing (the bundle stays "
            "marked trace_unresolved; replay still asks for --accept-unresolved).",
        ),
    ] = False,
) -> None:
    """Pull model blobs (and trace dumps), infer preprocessing, convert, write bundles.

    Writes OUTPUT/blobs/ (byte-exact, with manifest.json), OUTPUT/bundles/NAME/ and OUTPUT/extract.json.
    With --trace, models the app decrypted in memory are recovered from the trace's dumps and the
    preprocessing is solved from the captured bitmaps and input tensors. A model whose preprocessing the
    trace does not determine (no candidate reproduces the captured tensors within 1 quantisation step or
    1e-3 of their range) is written marked trace_unresolved and extract exits 15. Every bundle is then run end
    to end on the traced bitmaps and compared with the app's own outputs (its fidelity; exit 16 when a
    bundle fails it, and replay refuses that bundle without --allow-unfaithful).

    Example: replaybench extract app.apk --trace trace/ -o extracted/
    """
    from replaybench._console import NullProgress, RichProgress, emit_json
    from replaybench.bundle import PreprocessSpec, read_spec
    from replaybench.errors import ParityError, UnfaithfulBundleError, UnresolvedPreprocessError
    from replaybench.extract.pipeline import extract_app, unresolved_models

    overrides: dict[str, PreprocessSpec] = {}
    for item in preprocess or []:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise UsageError(
                f"--preprocess takes MODEL=SPEC, got {item!r}",
                hint="e.g. --preprocess face.tflite=spec.json (MODEL: blob file name, stem or sha256 prefix)",
            )
        overrides[key] = read_spec(Path(path), PreprocessSpec)
    result = extract_app(
        [app_path],
        output,
        trace=trace,
        convert=not no_convert,
        code=not no_code,
        allow_mismatch=allow_mismatch,
        progress=NullProgress() if json_out else RichProgress(),
        preprocess=overrides,
    )
    if json_out:
        emit_json(result)
    else:
        from replaybench.extract.render import print_extract_result

        print_extract_result(result)
    unresolved = unresolved_models(result)
    if unresolved and not accept_unresolved:
        worst = ", ".join(
            f"{m.file} (max error {(m.preprocess_residual or {}).get('max_error', float('nan')):.3g}, "
            f"tolerance {(m.preprocess_residual or {}).get('tolerance', float('nan')):.3g})"
            for m in unresolved
        )
        first = Path(unresolved[0].file).name
        raise UnresolvedPreprocessError(
            f"the trace does not determine the preprocessing of {len(unresolved)} model(s): {worst}. "
            f"Their bundles and extract.json are written, marked trace_unresolved, with the best "
            f"candidates and residuals",
            hint="record more invokes with 'replaybench trace', or give the preprocessing with "
            f"--preprocess {first}=SPEC.json, or accept the best candidate with --accept-unresolved",
        )
    mismatched = [m.file for m in result.models if m.status == "parity_mismatch"]
    if mismatched and not allow_mismatch:
        raise ParityError(
            f"{len(mismatched)} bundle(s) disagree with the source runtime: {', '.join(mismatched)}",
            hint="see the parity block with 'replaybench inspect BUNDLE', or accept with --allow-mismatch",
        )
    unfaithful = [m.bundle or m.file for m in result.models if m.status == "fidelity_failed"]
    if unfaithful and not allow_unfaithful:
        raise UnfaithfulBundleError(
            f"{len(unfaithful)} bundle(s) do not reproduce the app's own outputs on the traced invokes: "
            f"{', '.join(unfaithful)}",
            hint="see the fidelity block with 'replaybench inspect BUNDLE'; check or drop --preprocess, record "
            "more invokes, or accept with --allow-unfaithful (replay then needs --allow-unfaithful too)",
        )


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="A model file: .tflite, .onnx, .pt/.ptl, SavedModel, .pb.")],
    output: OutDir,
    preprocess: Annotated[
        Path | None,
        typer.Option(
            "--preprocess",
            help="A PreprocessSpec JSON file, or a bundle (folder or bundle.json) whose preprocess block to reuse.",
        ),
    ] = None,
    postprocess: Annotated[
        Path | None,
        typer.Option(
            "--postprocess",
            help="A PostprocessSpec JSON file (task, labels, decoders), or a bundle to take it from.",
        ),
    ] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset to target.")] = None,
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Write the bundle even when parity fails (exit 0).")
    ] = False,
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            help="Input shape where the model records none (TorchScript, .ptl, NCNN), e.g. 1,3,224,224.",
        ),
    ] = None,
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="auto: ONNX, else the app's own engine when there is no converter or parity fails; "
            "onnx: ONNX or fail; native: keep the original for its engine (tflite, ncnn, mnn, pytorch_lite).",
        ),
    ] = "auto",
    keep_quantized_io: Annotated[
        bool,
        typer.Option(
            "--keep-quantized-io/--float-io",
            help="Quantised models: keep their integer I/O (default, as the app feeds them) or take/return floats.",
        ),
    ] = True,
    json_out: JsonFlag = False,
) -> None:
    """Convert one model file to a validated ONNX bundle (parity-checked against its runtime).

    Quantised models keep their own integer input/output dtypes (the bundle takes what the app feeds the
    model); --float-io wraps them in Quantize/DequantizeLinear instead. Exit 8 when parity fails.

    Example: replaybench convert model.tflite --postprocess examples/postprocess-gender.json -o bundles/gender
    """
    from replaybench._console import emit_json
    from replaybench.bundle import PostprocessSpec, PreprocessSpec, read_spec
    from replaybench.extract.convert import convert_model

    spec = read_spec(preprocess, PreprocessSpec) if preprocess is not None else None
    post = read_spec(postprocess, PostprocessSpec) if postprocess is not None else None
    shape = None
    if input_shape:
        try:
            shape = [int(d) for d in input_shape.split(",")]
        except ValueError as e:
            raise UsageError(f"--input-shape must be comma-separated integers, got {input_shape!r}") from e
    bundle = convert_model(
        model,
        output,
        preprocess=spec,
        postprocess=post,
        opset=opset,
        allow_mismatch=allow_mismatch,
        input_shape=shape,
        keep_quantized_io=keep_quantized_io,
        runtime=runtime,
    )
    if json_out:
        emit_json(bundle)
        return
    _render_bundle(bundle, title=f"bundle written to {output}")


def _parity_reference_text(reference: str | None) -> tuple[str, str]:
    """What parity compared against, for a table title: a rewritten model is flagged."""
    if reference == "original":
        return ("the original model", "")
    if reference == "rewritten":
        return ("a REWRITTEN model (the original cannot run here)", "yellow")
    return ("an unrecorded model (bundle older than schema 2)", "yellow")


def _render_bundle(bundle: Any, title: str) -> None:
    from rich.table import Table
    from rich.text import Text

    from replaybench._console import stdout_console

    console = stdout_console()
    src = bundle.source
    console.print(
        Text.assemble((title, "bold"), f"  {bundle.name}  format={src.format}  sha256={src.sha256[:16]}")
    )
    io = Table("", "name", "shape", "dtype", "layout", "quantisation", title="inputs / outputs")
    for side, tensors in (("in", bundle.io.inputs), ("out", bundle.io.outputs)):
        for t in tensors:
            q = t.quantization
            io.add_row(
                side,
                t.name,
                str(t.shape),
                t.dtype,
                t.layout or "",
                f"{q.scale:g} @ {q.zero_point}" if q else "",
            )
    console.print(io)
    rt = bundle.runtime
    console.print(
        Text.assemble(
            ("replay runtime: ", "bold"),
            f"{rt.name}{' ' + rt.version if rt.version else ''} ({', '.join(rt.files)})",
            f"  why: {rt.reason}" if rt.reason else "",
        )
    )
    p = bundle.preprocess
    if p is not None:
        pre = Table("field", "value", "provenance", title="preprocessing")
        r = p.resize
        geometry = (
            f" shorter side {r.shorter_side} + centre crop"
            if r.shorter_side is not None
            else f" letterbox {r.placement} pad {', '.join(f'{v:.4g}' for v in r.pad_value)}"
            if r.keep_aspect
            else " centre crop"
            if r.crop == "center"
            else ""
        )
        if r.crop_box is not None:
            geometry += f" box {', '.join(f'{v:.3g}' for v in r.crop_box)}"
        if r.roi == "per_image":
            geometry += " (per-image region)"
        turn = f" turned {p.rotation}" if p.rotation else ""
        turn += " mirrored" if p.mirror else ""
        src = f" from {p.source_format}" if p.source_format != "rgb" else ""
        rows = {
            "resize": f"{r.width}x{r.height} {r.method}{geometry}{turn}{src}",
            "color_order": p.color_order,
            "layout": p.layout,
            "dtype": p.dtype,
            "scale": ", ".join(f"{v:.6g}" for v in p.scale),
            "offset": ", ".join(f"{v:.6g}" for v in p.offset),
        }
        if p.quantization:
            rows["quantization"] = f"{p.quantization.scale:g} @ {p.quantization.zero_point}"
        for k, v in rows.items():
            pre.add_row(k, v, str(p.provenance.get(k, "")))
        console.print(pre)
        for n in p.notes:
            console.print(f"  note: {n}")
    if bundle.parity is not None:
        par = bundle.parity
        t = Table(
            "output",
            "shape",
            "dtype",
            "max abs",
            "max rel",
            "q-steps",
            "tolerance",
            "ok",
            title=Text.assemble(
                f"parity vs {par.reference_runtime} ({par.inputs_tried} inputs) on ",
                _parity_reference_text(par.reference),
                ": ",
                ("passed", "green") if par.passed else ("FAILED", "red"),
            ),
        )
        for o in par.outputs:
            t.add_row(
                o.name,
                "ok" if o.shape_match else "MISMATCH",
                "ok" if o.dtype_match else "MISMATCH",
                f"{o.max_abs_diff:.3g}",
                f"{o.max_rel_diff:.3g}",
                "" if o.max_quant_steps is None else f"{o.max_quant_steps:g}",
                f"{o.tolerance:.3g}",
                "yes" if o.passed else "NO",
            )
        console.print(t)
        if par.reference_reason:
            console.print(f"  parity reference: {par.reference_reason}", style="yellow")
    if getattr(bundle, "fidelity", None) is not None:
        _render_fidelity(console, bundle.fidelity)
    c = bundle.conversion
    if c is not None:
        console.print(f"converter: {c.converter} {c.converter_version or ''}  opset {c.opset}  {c.seconds}s")
        if c.cut_at:
            console.print(
                f"graph cut before {', '.join(c.cut_at)}; outputs: {', '.join(c.cut_tensors)}", style="yellow"
            )
        for n in c.notes:
            console.print(f"  note: {n}")


def _render_fidelity(console: Any, fid: Any) -> None:
    """The bundle's end-to-end fidelity block: verdict, per-output differences, decoded-field agreement."""
    from rich.table import Table
    from rich.text import Text

    colour = {"passed": "green", "failed": "red", "not_checked": "yellow"}[fid.verdict]
    head = Text.assemble(
        "fidelity vs the app's outputs: ",
        (fid.verdict.upper() if fid.verdict == "failed" else fid.verdict, colour),
        f" ({fid.invokes_checked} of {fid.invokes_traced} traced invokes checked; "
        f"tolerance {fid.atol:g} + {fid.rtol:g} x max|app|, {fid.quant_steps:g} steps for integers)",
    )
    if not fid.outputs:
        console.print(head)
    else:
        t = Table("output", "app tensor", "max abs", "max rel", "q-steps", "tolerance", "ok", title=head)
        for o in fid.outputs:
            t.add_row(
                o.name,
                o.traced_name or "",
                f"{o.max_abs_diff:.3g}",
                f"{o.max_rel_diff:.3g}",
                "" if o.max_quant_steps is None else f"{o.max_quant_steps:.3g}",
                f"{o.tolerance:.3g}",
                "yes" if o.passed else "NO",
            )
        console.print(t)
    for f in fid.fields:
        console.print(f"  decoded {f.field}: agrees on {f.agreed}/{f.total}" + ("" if f.passed else "  NO"))
    if fid.input_max_abs_diff is not None:
        console.print(f"  input tensor vs the app's: max |diff| {fid.input_max_abs_diff:.3g}")
    if fid.reason:
        console.print(f"  {fid.reason}", style=colour)


@app.command()
def agent(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the agent here.")] = None,
) -> None:
    """Print (or write) the Frida agent, for use with the frida CLI or 'replaybench trace'.

    With the frida CLI: frida -U -f com.example.app -l agent.js (its events go to the console).

    Example: replaybench agent -o agent.js
    """
    from replaybench.extract.capture import agent_source

    js = agent_source()
    if output is None:
        sys.stdout.write(js)
    else:
        output.write_text(js, encoding="utf-8")
        sys.stderr.write(f"wrote {output}\n")


@app.command()
def trace(
    output: OutDir,
    program_args: ProgramArgs = None,
    usb: UsbFlag = False,
    remote: RemoteOpt = None,
    pid: PidOpt = None,
    name: NameOpt = None,
    spawn: Annotated[str | None, typer.Option("--spawn", help="Spawn this package or program.")] = None,
    seconds: Annotated[
        float, typer.Option("--seconds", help="Record this long (0: until Ctrl-C or the process ends).")
    ] = 30.0,
    max_dumps: Annotated[
        int | None, typer.Option("--max-dumps", help="Stop after writing this many dumps.")
    ] = None,
    watch: Annotated[
        list[str] | None,
        typer.Option("--watch", help="Also log calls to this export (NAME or MODULE!NAME); repeatable."),
    ] = None,
    max_events_per_second: Annotated[
        int, typer.Option("--max-events-per-second", help="Rate cap on tensor/file/watch events.")
    ] = 200,
    max_dump_mb: Annotated[int, typer.Option("--max-dump-mb", help="Cap on one model dump (MiB).")] = 64,
    json_out: JsonFlag = False,
) -> None:
    """Record a brief trace of an app's model loads and tensors with the Frida agent.

    Writes OUTPUT/trace.jsonl and OUTPUT/dumps/<sha256>. Needs the frida extra.

    Example: replaybench trace --usb --spawn com.example.app --seconds 30 -o trace/
    """
    from replaybench.extract.capture import AgentConfig, CaptureTarget, capture

    target = CaptureTarget(
        usb=usb, remote=remote, pid=pid, name=name, spawn=spawn, spawn_args=list(program_args or [])
    )
    target.check()
    config = AgentConfig(
        max_dump_bytes=max_dump_mb * 1024 * 1024,
        max_events_per_second=max_events_per_second,
        watch=list(watch or []),
    )
    if not json_out:
        sys.stderr.write("tracing... (Ctrl-C to stop)\n")
    result = capture(target, output, seconds=seconds or None, max_dumps=max_dumps, config=config)
    if json_out:
        from replaybench._console import emit_json

        emit_json(result)
        return
    from rich.table import Table

    from replaybench._console import stdout_console

    table = Table(title=f"trace of pid {result.pid}: {result.trace}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("models loaded", str(result.models_loaded))
    table.add_row("invokes seen", str(result.invokes))
    table.add_row("dumps written", str(result.dumps_written))
    table.add_row("events", str(result.events))
    table.add_row("seconds", f"{result.seconds:.1f} ({result.ended_by})")
    stdout_console().print(table)
    for err in result.agent_errors[:10]:
        sys.stderr.write(f"agent: {err}\n")


@app.command()
def inspect(
    target: Annotated[Path, typer.Argument(help="A bundle folder or a model file.")],
    json_out: JsonFlag = False,
) -> None:
    """Show a bundle's or model's inputs/outputs, preprocessing with provenance, parity and fidelity.

    Example: replaybench inspect bundles/age --json
    """
    from replaybench._console import emit_json
    from replaybench.extract.convert import inspect_target

    bundle = inspect_target(target)
    if json_out:
        emit_json(bundle)
        return
    is_bundle = bundle.parity is not None or (target / "bundle.json").is_file()
    _render_bundle(bundle, title="bundle" if is_bundle else "model (not converted)")


# ---------------------------------------------------------------------------------------------- replay


@app.command()
def replay(
    paths: Annotated[
        list[Path], typer.Argument(metavar="BUNDLE... DATASET", help="Bundles, then the dataset.")
    ],
    output: OutDir,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="Dataset format: utkface, fairface, folders, manifest, posts (default: detect)."
        ),
    ] = None,
    pattern: Annotated[
        str | None,
        typer.Option(
            "--pattern", help="folders: labels from the path, e.g. '{attribute}/{race}_{gender}/*.jpg'."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Decode+preprocess processes (default: one per CPU; 0: none)."),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", help="Items per chunk: one decode task and one inference batch."),
    ] = 32,
    providers: Annotated[
        str | None,
        typer.Option("--providers", help="onnxruntime execution providers, comma-separated (e.g. CUDA,CPU)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="onnxruntime intra-op threads, one session call per batch (default: with decode workers, "
            "one-thread calls, one chunk in flight per CPU; with --workers 0, one thread per CPU).",
        ),
    ] = None,
    resume: ResumeFlag = False,
    limit: LimitOpt = None,
    shuffle: ShuffleFlag = False,
    seed: Seed = 0,
    fast_decode: Annotated[
        bool,
        typer.Option(
            "--fast-decode",
            help="Reduced-size JPEG decode (DCT scaling) for large photos: faster, not bit-exact.",
        ),
    ] = False,
    faces: Annotated[
        Path | None,
        typer.Option("--faces", help="A face-detector bundle: crop each image to its best face first."),
    ] = None,
    one_face: Annotated[
        bool, typer.Option("--one-face", help="With --faces: keep only items with exactly one face.")
    ] = False,
    face_margin: Annotated[
        float,
        typer.Option("--face-margin", help="With --faces: grow the face box by this fraction per side."),
    ] = 0.2,
    part_rows: PartRowsOpt = 8192,
    allow_outside: AllowOutside = False,
    allow_unfaithful: Annotated[
        bool,
        typer.Option(
            "--allow-unfaithful",
            help="Replay a bundle whose end-to-end fidelity check failed (recorded in the predictions).",
        ),
    ] = False,
    accept_unresolved: Annotated[
        bool,
        typer.Option(
            "--accept-unresolved",
            help="Replay bundles whose preprocessing the trace did not determine (trace_unresolved); "
            "run.json records it.",
        ),
    ] = False,
    variant: VariantOpt = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run on a Ray cluster (pip install 'replaybench[cluster]'): local (a cluster on this "
            "machine for the run), auto (the cluster this node is in) or HEAD:6379. "
            "Bundles and the dataset must be at the same path on every node.",
        ),
    ] = None,
    ray_actors: Annotated[
        int | None,
        typer.Option(
            "--ray-actors", help="With --ray: inference actors (default: one per GPU, else per CPU)."
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Run a dataset through one or more bundles at high throughput; write predictions as Parquet.

    A bundle whose fidelity check against the app's trace failed is refused (exit 16) unless
    --allow-unfaithful; run.json and every Parquet part's metadata then record each bundle's verdict.
    A bundle whose preprocessing is marked trace_unresolved is refused (exit 15) unless
    --accept-unresolved.

    Example: replaybench replay bundles/age bundles/gender UTKFace/ --format utkface -o preds/
    """
    if len(paths) < 2:
        raise UsageError(
            "give one or more bundles, then the dataset: replaybench replay BUNDLE... DATASET -o PREDS"
        )
    if one_face and faces is None:
        raise UsageError("--one-face needs --faces DETECTOR_BUNDLE")
    if fmt is not None and fmt != "folders" and pattern is not None:
        raise UsageError("--pattern only applies to --format folders")
    if ray_actors is not None and (ray is None or ray_actors < 1):
        raise UsageError("--ray-actors takes a positive count, with --ray")
    from replaybench._console import NullProgress, RichProgress, emit_json
    from replaybench.replay.runner import ReplayOptions
    from replaybench.replay.runner import replay as run_replay

    options = ReplayOptions(
        format=fmt,
        pattern=pattern,
        workers=workers,
        batch_size=batch_size,
        providers=tuple(p.strip() for p in providers.split(",") if p.strip()) if providers else (),
        threads=threads,
        resume=resume,
        limit=limit,
        shuffle=shuffle,
        seed=seed,
        fast_decode=fast_decode,
        faces=faces,
        one_face=one_face,
        face_margin=face_margin,
        part_rows=part_rows,
        allow_outside=allow_outside,
        allow_unfaithful=allow_unfaithful,
        accept_unresolved=accept_unresolved,
        variant=variant,
        ray=ray,
        ray_actors=ray_actors,
    )
    progress = NullProgress() if json_out else RichProgress()
    STATE.on_interrupt = f"interrupted: the parts in {output} are whole and kept; add --resume to continue"
    result = run_replay(paths[:-1], paths[-1], output, options, progress)
    if json_out:
        emit_json(result)
        return
    from rich.table import Table

    from replaybench._console import stdout_console

    table = Table("bundle", "batching", "notes", title=f"replay -> {result.output}")
    for b in result.bundles:
        table.add_row(b.name, b.batch_mode, "; ".join(b.notes))
    console = stdout_console()
    console.print(table)
    console.print(
        f"{result.items_processed} items ({result.items_skipped_done} already done): {result.items_ok} ok, "
        f"{result.items_error} error, {result.items_filtered} skipped; {result.rows_written} rows in "
        f"{result.parts_written} parts"
    )
    console.print(
        f"{result.items_per_second:,.1f} items/s overall ({result.seconds:,.1f} s, of which "
        f"{result.setup_seconds:,.1f} s set-up); {result.steady_items_per_second:,.1f} items/s after "
        f"set-up; {result.workers} workers"
    )


@app.command("replay-app")
def replay_app(
    hooks: Annotated[Path, typer.Argument(help="The hook manifest (JSON) for this app version.")],
    dataset: Annotated[Path, typer.Argument(help="The dataset (same formats as replay).")],
    output: OutDir,
    program_args: ProgramArgs = None,
    usb: UsbFlag = False,
    remote: RemoteOpt = None,
    pid: PidOpt = None,
    name: NameOpt = None,
    spawn: Annotated[
        str | None, typer.Option("--spawn", help="Spawn this package or program (lets replay restart it).")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="Dataset format (default: detect), as for replay.")
    ] = None,
    pattern: Annotated[str | None, typer.Option("--pattern", help="folders: labels from the path.")] = None,
    in_flight: Annotated[int, typer.Option("--in-flight", help="Items posted and unanswered at most.")] = 8,
    item_timeout: Annotated[
        float, typer.Option("--item-timeout", help="Seconds an item may run before the app counts as hung.")
    ] = 30.0,
    max_restarts: Annotated[
        int, typer.Option("--max-restarts", help="Give up after restarting a crashed or hung app this often.")
    ] = 20,
    workers: Annotated[int, typer.Option("--workers", help="Decode threads on the host.")] = 2,
    resume: ResumeFlag = False,
    limit: LimitOpt = None,
    shuffle: ShuffleFlag = False,
    seed: Seed = 0,
    part_rows: PartRowsOpt = 8192,
    json_out: JsonFlag = False,
) -> None:
    """Replay a dataset inside the app: feed each item to the app's own pipeline through the Frida agent,
    as the hook manifest says, and write its results as predictions (route in_app). Needs the frida extra.

    A separate command from replay: it takes a manifest and a device instead of bundles, and a spawned
    local program's arguments after --.

    Example: replaybench replay-app hooks.json UTKFace/ --usb --spawn com.example.app -o preds-app/
    """
    from replaybench._console import NullProgress, RichProgress, emit_json
    from replaybench.replay.inapp import InAppOptions, InAppTarget, replay_in_app

    target = InAppTarget(
        usb=usb, remote=remote, pid=pid, name=name, spawn=spawn, spawn_args=list(program_args or [])
    )
    target.check()
    if fmt is not None and fmt != "folders" and pattern is not None:
        raise UsageError("--pattern only applies to --format folders")
    options = InAppOptions(
        format=fmt,
        pattern=pattern,
        in_flight=in_flight,
        item_timeout=item_timeout,
        max_restarts=max_restarts,
        workers=workers,
        resume=resume,
        limit=limit,
        shuffle=shuffle,
        seed=seed,
        part_rows=part_rows,
    )
    STATE.on_interrupt = f"interrupted: the parts in {output} are whole and kept; add --resume to continue"
    progress = NullProgress() if json_out else RichProgress()
    result = replay_in_app(hooks, dataset, output, target, options, progress)
    if json_out:
        emit_json(result)
        return
    from replaybench._console import stdout_console

    stdout_console().print(
        f"in-app replay of {result.app_package} {result.app_version_reported or '(version not read)'} -> "
        f"{result.output}: {result.items_processed} items ({result.items_skipped_done} already done): "
        f"{result.items_ok} ok, {result.items_error} error, {result.items_filtered} skipped; "
        f"{result.restarts} app restarts; {result.items_per_second:,.1f} items/s"
    )


@hooks_app.command("suggest")
def hooks_suggest(
    trace_dir: Annotated[Path, typer.Argument(metavar="TRACE", help="A trace folder (or its trace.jsonl).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the draft manifest here.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Draft a hook manifest from a trace: the functions that took the traced frames and the ones whose
    results followed them, for you to confirm. Trace with --watch MODULE!FUNCTION for the candidates.

    Example: replaybench hooks suggest trace/ -o hooks.json
    """
    from replaybench._console import emit_json
    from replaybench.replay.hooks_suggest import suggest_hooks, write_draft

    suggestion = suggest_hooks(trace_dir)
    if output is not None:
        write_draft(suggestion, output)
    if json_out:
        emit_json(suggestion)
        return
    from rich.table import Table

    from replaybench._console import stdout_console

    table = Table("role", "kind", "target", "seen", "evidence", title=f"hook candidates in {trace_dir}")
    for c in suggestion.candidates:
        table.add_row(c.role, c.kind, c.target, str(c.count), c.evidence)
    console = stdout_console()
    console.print(table)
    if output is None:
        sys.stdout.write(json.dumps(suggestion.draft, indent=2) + "\n")
    for p in suggestion.problems:
        sys.stderr.write(f"to do: {p}\n")
    sys.stderr.write(
        ("draft validates" if suggestion.valid else "draft does not validate yet")
        + (f"; written to {output}" if output else "")
        + "\n"
    )


# -------------------------------------------------------------------------------------------- evaluate


@app.command()
def evaluate(
    predictions: Annotated[Path, typer.Argument(help="Predictions folder written by 'replaybench replay'.")],
    output: OutDir,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="age|gender|classification|concepts|score (default: every task the predictions feed).",
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option("--by", help="Group columns, comma-separated (default: race,gender,age_group found)."),
    ] = None,
    ci: Annotated[float, typer.Option("--ci", help="Confidence level of the bootstrap intervals.")] = 0.95,
    seed: Seed = 0,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 1000,
    compare: Annotated[
        Path | None, typer.Option("--compare", help="A second predictions folder to measure agreement with.")
    ] = None,
    spurious: Annotated[
        Path | None,
        typer.Option(
            "--spurious", help="File of concepts (one a line) that should be unrelated to demographics."
        ),
    ] = None,
    min_group_size: Annotated[
        int, typer.Option("--min-group-size", help="Smaller groups are flagged and never ranked.")
    ] = 30,
    min_denominator: Annotated[
        int, typer.Option("--min-denominator", help="Rates over fewer items are flagged and never ranked.")
    ] = 10,
    label_column: Annotated[
        str, typer.Option("--label-column", help="True-label column for the classification task.")
    ] = "label",
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Concept score that counts as a detection (default 0.5)."),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Count only the first K concepts of a list.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Measure demographic disparities and concept associations; write a report folder.

    Example: replaybench evaluate preds/ --by race,gender -o report/
    """
    from replaybench._console import NullProgress, RichProgress, emit_json
    from replaybench.errors import InputNotFoundError
    from replaybench.evaluate.evaluation import evaluate_predictions

    if not predictions.exists():
        raise InputNotFoundError(f"predictions not found: {predictions}")
    if compare is not None and not compare.exists():
        raise InputNotFoundError(f"predictions to compare not found: {compare}")
    groups = [g.strip() for g in by.split(",") if g.strip()] if by else None
    summary = evaluate_predictions(
        predictions,
        output,
        task=task,
        by=groups,
        ci=ci,
        seed=seed,
        n_boot=n_boot,
        compare=compare,
        spurious=spurious,
        min_group_size=min_group_size,
        min_denominator=min_denominator,
        label_column=label_column,
        concept_threshold=threshold,
        top_k=top_k,
        progress=NullProgress() if json_out else RichProgress(),
    )
    if json_out:
        emit_json(summary)
        return
    _render_evaluation(summary)


def _render_evaluation(summary: Any) -> None:
    from rich.table import Column, Table

    from replaybench._console import stdout_console

    def f(v: float | None, d: int = 3) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    console = stdout_console()  # no markup: metric names like recall[female] print as they are
    for t in summary.tasks:
        table = Table(f"{summary.ci:.0%} CI", "n", "of", "worst group", "its value", "max-min")
        table.columns.insert(0, Column("overall"))
        table.columns.insert(0, Column("metric", no_wrap=True, min_width=22))
        table.title = f"{t.bundle}: {t.task}"
        # worst group over the first group column (race by default), where at least two groups rank
        order = {g: i for i, g in enumerate(t.group_columns)}
        worst: dict[str, Any] = {}
        for d in sorted(t.disparities, key=lambda d: ("+" in d.grouping, order.get(d.grouping, 99))):
            if d.n_groups >= 2:
                worst.setdefault(d.metric, d)
        for m in t.headline:
            d = worst.get(m.name)
            table.add_row(
                m.name,
                f(m.value),
                f"[{f(m.ci_low)}, {f(m.ci_high)}]",
                str(m.n),
                "" if m.n_eff is None or m.n_eff == m.n else str(m.n_eff),
                f"{d.worst_group} ({d.grouping})" if d and d.worst_group else "-",
                f(d.worst_value) if d and d.worst_group else "-",
                f(d.difference) if d else "-",
            )
        console.print(table)
    for c in summary.concepts:
        table = Table("concept", "group", "rate", "elsewhere", "odds ratio", "q", "spurious")
        table.title = f"{c.bundle}: {c.n_significant} of {c.n_tests} concept x group associations significant"
        for a in [*c.spurious, *c.strongest][:15]:
            table.add_row(
                a.concept,
                f"{a.group} ({a.grouping})",
                f(a.rate),
                f(a.rate_rest),
                f(a.odds_ratio, 2),
                f"{a.q_value:.2g}" if a.q_value is not None else "-",
                "yes" if a.spurious else "",
            )
        console.print(table)
    if summary.comparison:
        c = summary.comparison
        table = Table(
            "field", "n", "agreement", "kappa", "mean |diff|", "max |diff|", "worst group", "routes"
        )
        table.title = f"agreement with {c.other} ({c.route} vs {c.route_other})"

        def g(x: float | None) -> str:  # raw tensors of two engines differ by float noise: show it
            return "-" if x is None else f"{x:.3g}"

        for a in c.fields:
            table.add_row(
                a.field,
                str(a.n),
                f(a.agreement),
                f(a.kappa),
                g(a.mean_abs_diff),
                g(a.max_abs_diff),
                a.worst_group or "-",
                f"{a.route} vs {a.route_other}",
            )
        console.print(table)
    for w in summary.warnings:
        console.print(f"warning: {w}", style="yellow")
    console.print(f"report: {summary.report}/index.html (metrics.parquet, summary.json beside it)")


# --------------------------------------------------------------------------------------------- distill


@distill_app.command("label")
def distill_label(
    posts: Annotated[Path, typer.Argument(help="A posts dataset.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Labels file (.parquet, .csv or .jsonl).")],
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Teacher model name on that endpoint.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight.")] = 4,
    prompt_version: Annotated[
        str, typer.Option("--prompt-version", help="Versioned prompt (cache key).")
    ] = "v1",
    retries: Annotated[int, typer.Option("--retries", help="Retries per request (exponential backoff).")] = 4,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="Environment variable holding a bearer token.")
    ] = None,
    import_file: Annotated[
        Path | None,
        typer.Option("--import", help="Import labels (CSV/JSONL/Parquet: post_id, score) instead."),
    ] = None,
    allow_outside: AllowOutside = False,
    json_out: JsonFlag = False,
) -> None:
    """Score posts with a VLM teacher behind an OpenAI-compatible endpoint (cached, resumable).

    Example: replaybench distill label posts/ --endpoint http://localhost:8000/v1 --model qwen -o labels.parquet
    """
    import os

    from replaybench._console import RichProgress, emit_json

    if import_file is not None:
        if endpoint or model:
            raise UsageError("--import takes labels from a file; do not combine it with --endpoint/--model")
        from replaybench.distill.label import import_labels

        result = import_labels(import_file, output)
    else:
        if not endpoint or not model:
            raise UsageError("give --endpoint and --model (or --import FILE)")
        from replaybench.distill.label import label_posts

        result = label_posts(
            posts, output, endpoint=endpoint, model=model, prompt_version=prompt_version,
            concurrency=concurrency, retries=retries,
            api_key=os.environ.get(api_key_env) if api_key_env else None,
            progress=None if json_out else RichProgress(), allow_outside=allow_outside,
        )  # fmt: skip
    if json_out:
        emit_json(result)
        return
    _render_doc("teacher labels", result.model_dump())


@distill_app.command("train")
def distill_train(
    posts: Annotated[Path, typer.Argument(help="A posts dataset.")],
    labels: Annotated[Path, typer.Argument(help="Teacher labels.")],
    output: OutDir,
    image_encoder: Annotated[
        str, typer.Option("--image-encoder", help="Image encoder (resnet18).")
    ] = "resnet18",
    image_encoder_weights: Annotated[
        Path | None,
        typer.Option("--image-encoder-weights", help="torchvision resnet18 checkpoint (.pth, state dict)."),
    ] = None,
    text_encoder: Annotated[
        str | None,
        typer.Option(
            "--text-encoder", help="Local Hugging Face model folder or a name in the local HF cache."
        ),
    ] = None,
    random_init: Annotated[
        bool, typer.Option("--random-init", help="Random encoders where no weights are given (tests only).")
    ] = False,
    text_arch: Annotated[
        str, typer.Option("--text-arch", help="Random-init text shape: tiny, distilbert-base, minilm-l6.")
    ] = "tiny",
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum epochs.")] = 200,
    patience: Annotated[int, typer.Option("--patience", help="Early stopping patience (epochs).")] = 20,
    seed: Seed = 0,
    split: Annotated[
        Path | None,
        typer.Option("--split", help="JSON {train:[ids], val:[ids], test:[ids]} or CSV post_id,split."),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of posts for early stopping (seeded split).")
    ] = 0.15,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of posts held out for the reported test figures.")
    ] = 0.15,
    finetune_last_blocks: Annotated[
        int, typer.Option("--finetune-last-blocks", help="Also train the last N encoder blocks (0-4).")
    ] = 0,
    allow_outside: AllowOutside = False,
    json_out: JsonFlag = False,
) -> None:
    """Train the image+text student on teacher labels.

    The posts are split by post id into train, validation (early stopping) and test; the figures reported
    are the test split's, which training never saw.

    Example: replaybench distill train posts/ labels.parquet -o student/
    """
    from replaybench._console import RichProgress, emit_json
    from replaybench.distill.train import train_student

    if image_encoder != "resnet18":
        raise UsageError(f"--image-encoder {image_encoder!r}: only resnet18 is available")
    if text_arch not in ("tiny", "distilbert-base", "minilm-l6"):
        raise UsageError("--text-arch must be tiny, distilbert-base or minilm-l6")
    result = train_student(
        posts, labels, output, image_weights=image_encoder_weights, text_encoder=text_encoder,
        random_init=random_init, text_arch=text_arch,  # type: ignore[arg-type]
        epochs=epochs, patience=patience, seed=seed, split=split, val_fraction=val_fraction,
        test_fraction=test_fraction, finetune_last_blocks=finetune_last_blocks,
        progress=None if json_out else RichProgress(), allow_outside=allow_outside,
    )  # fmt: skip
    if json_out:
        emit_json(result)
        return
    t, v = result.test, result.validation
    _render_doc(
        "student training",
        {
            "output": result.output,
            "posts used": f"{result.posts_used} ({result.train_posts} train, {result.val_posts} validation, "
            f"{result.test_posts} test; {result.split})",
            "skipped posts": len(result.skipped),
            "epochs": f"{result.epochs_run} (best {result.best_epoch} on validation)",
            "test MAE": f"{t['mae']:.3f} (predict-the-mean {result.baseline_test_mae:.3f}, "
            f"{result.test_posts} held-out posts)",
            "test within 1 / 2": f"{t['within_1']:.1%} / {t['within_2']:.1%}",
            "test pearson / spearman": f"{_fmt_corr(t['pearson'])} / {_fmt_corr(t['spearman'])}",
            "validation MAE (early stopping, optimistic)": f"{v['mae']:.3f} "
            f"(predict-the-mean {result.baseline_val_mae:.3f})",
            **({"warnings": "; ".join(result.warnings)} if result.warnings else {}),
        },
    )


def _fmt_corr(r: float | None) -> str:
    return "n/a (constant)" if r is None else f"{r:.3f}"


@distill_app.command("export")
def distill_export(
    student: Annotated[Path, typer.Argument(help="A trained student folder.")],
    output: OutDir,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="Posts for int8: the first half calibrates, the rest measures the int8 error "
            "(default: the student's training posts calibrate, its held-out posts measure).",
        ),
    ] = None,
    no_int8: Annotated[bool, typer.Option("--no-int8", help="Skip the int8 variant.")] = False,
    allow_outside: AllowOutside = False,
    json_out: JsonFlag = False,
) -> None:
    """Export the student (encoders + head) to an ONNX bundle, fp32 and int8, parity-checked.

    Example: replaybench distill export student/ -o student-bundle/
    """
    from replaybench._console import RichProgress, emit_json
    from replaybench.distill.export import export_student

    result = export_student(
        student, output, calibration_posts=calibration, int8=not no_int8,
        progress=None if json_out else RichProgress(), allow_outside=allow_outside,
    )  # fmt: skip
    if json_out:
        emit_json(result)
        return
    doc = result.model_dump(exclude={"calibration_posts", "int8_eval_posts", "int8_eval_source"})
    doc["int8 calibrated on"] = f"{len(result.calibration_posts)} posts"
    if result.int8_eval_source is not None:
        doc["int8 measured on"] = f"{len(result.int8_eval_posts)} other posts: {result.int8_eval_source}"
    _render_doc("student export", doc)


@distill_app.command("score")
def distill_score(
    bundle: Annotated[Path, typer.Argument(help="A student bundle.")],
    posts: Annotated[Path, typer.Argument(help="A posts dataset.")],
    output: OutDir,
    int8: Annotated[bool, typer.Option("--int8", help="Run the int8 graphs.")] = False,
    resume: ResumeFlag = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images / captions per model call.")] = 32,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Decode processes (default: cores).")
    ] = None,
    part_rows: PartRowsOpt = 8192,
    allow_outside: AllowOutside = False,
    json_out: JsonFlag = False,
) -> None:
    """Score posts with the student bundle: an alias of `replay BUNDLE POSTS --format posts`.

    Writes the predictions contract (a score column, the posts' labels carried) and prints the score
    distribution per bucket.

    Example: replaybench distill score student-bundle/ posts/ -o scores/
    """
    from replaybench._console import NullProgress, RichProgress, emit_json
    from replaybench.distill.metrics import score_summary
    from replaybench.replay.runner import ReplayOptions, replay

    options = ReplayOptions(
        format="posts", workers=workers, batch_size=batch_size, resume=resume, part_rows=part_rows,
        allow_outside=allow_outside, variant="int8" if int8 else None,
    )  # fmt: skip
    STATE.on_interrupt = f"interrupted: the parts in {output} are whole and kept; add --resume to continue"
    result = replay([bundle], posts, output, options, NullProgress() if json_out else RichProgress())
    summary = score_summary(output)
    if json_out:
        emit_json({"replay": result.model_dump(mode="json"), "scores": summary})
        return
    doc: dict[str, Any] = {
        "output": result.output,
        "posts scored now": result.items_ok,
        "errors now": result.items_error,
        "already done": result.items_skipped_done,
        "items/s": result.items_per_second,
    }
    for name, v in summary["buckets"].items():
        doc[f"bucket {name}"] = f"{v['count']} ({v['share']:.1%})"
    doc["mean score"] = summary["mean"]
    doc["errors (all parts)"] = summary["errors"]
    _render_doc("student scores", doc)


def _render_doc(title: str, doc: dict[str, Any]) -> None:
    from rich.table import Table

    from replaybench._console import stdout_console

    table = Table("field", "value", title=title)
    for k, v in doc.items():
        table.add_row(str(k), f"{v:.4g}" if isinstance(v, float) else str(v))
    stdout_console().print(table)


# ------------------------------------------------------------------------------------------ demo, doctor


@app.command()
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the demo artefacts.")] = Path(
        "demo-out"
    ),
    faces: Annotated[int, typer.Option("--faces", help="Size of the generated labelled face set.")] = 600,
    posts: Annotated[int, typer.Option("--posts", help="Number of generated posts for the student.")] = 48,
    json_out: JsonFlag = False,
) -> None:
    """Run the whole pipeline on the embedded sample app and dataset (nothing is downloaded).

    scan -> extract with the sample's trace -> convert with parity -> replay a generated face set with a
    planted disparity -> evaluate -> train, export and score a small student. Prints where each artefact
    is; opens nothing.

    OUTPUT must be a new or empty folder, or a previous demo output (it holds a .replaybench-demo
    marker; only the demo's own artefacts in it are replaced). Anything else is refused with exit code 2
    and left untouched.

    Example: replaybench demo -o demo-out/
    """
    from replaybench._console import NullProgress, emit_json
    from replaybench.demo.pipeline import run_demo

    result = run_demo(output, faces=faces, posts=posts, progress=NullProgress())
    if json_out:
        emit_json(result)
        return
    from rich.text import Text

    from replaybench._console import stdout_console

    con = stdout_console()
    for st in result.steps:
        con.print(
            Text.assemble((st.name, "bold"), f" ({st.seconds:.1f} s): {st.detail}\n    -> {st.artefact}")
        )
    verdict = "FOUND" if result.disparity_found else "not found"
    con.print(
        f"planted disparity {verdict}: gender accuracy {result.worst_group_accuracy:.3f} for "
        f"{result.worst_group} vs best group {result.best_group} (gap {result.accuracy_gap:.3f})"
    )
    con.print(f"report: {output / 'report' / 'index.html'}   ({result.seconds:.0f} s in all)")


@app.command()
def doctor(json_out: JsonFlag = False) -> None:
    """Report which optional parts are usable here and how to install the missing ones.

    Example: replaybench doctor --json
    """
    from replaybench._console import emit_json
    from replaybench.doctor import check_environment

    report = check_environment()
    if json_out:
        emit_json(report)
        return
    from rich.table import Table
    from rich.text import Text

    from replaybench._console import stdout_console

    table = Table("part", "status", "detail / how to install", title="replaybench doctor")
    for item in report.checks:
        status = Text("ok", "green") if item.ok else Text("missing", "yellow" if item.optional else "red")
        table.add_row(item.name, status, item.detail if item.ok else (item.install or item.detail))
    stdout_console().print(table)


# ----------------------------------------------------------------------------------------- entry points


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return an exit code (the capa habit: ``main(argv) -> int``)."""
    try:  # typer >= 0.20 vendors click as typer._click; older ones use click itself
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover
        from click import ClickException  # type: ignore[no-redef,assignment]

    command = typer.main.get_command(app)
    try:
        result: Any = command.main(args=argv, prog_name="replaybench", standalone_mode=False)
        if result == 130:  # Ctrl-C: typer turns KeyboardInterrupt into a silent Exit(130)
            sys.stderr.write(STATE.on_interrupt + "\n")
        return result if isinstance(result, int) else 0
    except ReplaybenchError as e:
        if STATE.debug:
            raise
        sys.stderr.write(f"error: {e.message}\n")
        if e.hint:
            sys.stderr.write(f"hint: {e.hint}\n")
        return e.exit_code
    except typer.Abort:
        sys.stderr.write("aborted\n")
        return 130
    except ClickException as e:
        e.show()
        return UsageError.exit_code if e.exit_code == 2 else e.exit_code
    except KeyboardInterrupt:  # outside a command (typer handles it inside)
        sys.stderr.write(STATE.on_interrupt + "\n")
        return 130
    except Exception as e:  # the last line of defence: a bug, shown briefly unless --debug
        if STATE.debug:
            raise
        sys.stderr.write(f"error: unexpected {type(e).__name__}: {e}\n")
        sys.stderr.write("hint: re-run with --debug for the traceback, and please report it\n")
        return ReplaybenchError.exit_code


def run() -> None:
    """Console-script entry point (and ``python -m replaybench``).

    Only here, not in ``main`` (which tests call in-process), is fd 2 routed through the filter that keeps
    TensorFlow's and LiteRT's native start-up lines off the terminal unless -vv (see ``_stderr``).
    """
    from replaybench._stderr import filter_native_stderr

    filter_native_stderr(lambda: STATE.loud)
    sys.exit(main())
