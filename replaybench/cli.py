"""The command-line front end. Thin: parse, check flag conflicts, call ONE library function, render.

Every command's help carries an ``Example:``; ``tests/test_cli.py`` walks them all. Errors from the
library are ``replaybench.errors.ReplaybenchError`` subclasses, turned into a one-line message and the
error's exit code in ``main``; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from replaybench import __version__
from replaybench.errors import NotAvailableYetError, ReplaybenchError, UsageError

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


class _State:
    debug = False


STATE = _State()

# Reusable parameter aliases (the hf CLI habit): options that recur share one definition.
JsonFlag = Annotated[bool, typer.Option("--json", help="Write the result document as JSON to stdout.")]
OutDir = Annotated[Path, typer.Option("-o", "--output", help="Output folder.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (results are reproducible).")]


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
    setup_logging(verbose, quiet)


def _not_yet(command: str, issue: str) -> NotAvailableYetError:
    return NotAvailableYetError(
        f"'replaybench {command}' is not available yet ({issue})",
        hint="run 'replaybench doctor' to see what this installation can do",
    )


# --------------------------------------------------------------------------------------------- extract


@app.command()
def scan(
    apps: Annotated[list[Path], typer.Argument(help="APK, split-APK folder, XAPK/APKS/APKM, or model file.")],
    json_out: JsonFlag = False,
) -> None:
    """What is inside an app: ML runtimes, model blobs, and the evidence for each.

    Example: replaybench scan app.apk --json > inventory.json
    """
    raise _not_yet("scan", "scan and extract")


@app.command()
def extract(
    app_path: Annotated[Path, typer.Argument(metavar="APP", help="The app to extract from.")],
    output: OutDir,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="A trace recorded by 'replaybench trace'.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Pull model blobs (and trace dumps), infer preprocessing, convert, write bundles.

    Example: replaybench extract app.apk --trace trace.jsonl -o extracted/
    """
    raise _not_yet("extract", "scan and extract")


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="A model file: .tflite, .onnx, .pt/.ptl, SavedModel, .pb.")],
    output: OutDir,
    json_out: JsonFlag = False,
) -> None:
    """Convert one model file to a validated ONNX bundle (parity-checked against its runtime).

    Example: replaybench convert model.tflite -o bundles/age
    """
    raise _not_yet("convert", "convert to ONNX")


@app.command()
def agent(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the agent here.")] = None,
) -> None:
    """Print (or write) the Frida agent, for use with the frida CLI or 'replaybench trace'.

    Example: replaybench agent -o agent.js
    """
    raise _not_yet("agent", "Frida agent and trace")


@app.command()
def trace(
    output: OutDir,
    usb: Annotated[bool, typer.Option("--usb", help="Use the USB device.")] = False,
    pid: Annotated[int | None, typer.Option("--pid", help="Attach to this process id.")] = None,
    spawn: Annotated[str | None, typer.Option("--spawn", help="Spawn this package or program.")] = None,
) -> None:
    """Record a brief trace of an app's model loads and tensors with the Frida agent.

    Example: replaybench trace --usb --spawn com.example.app --seconds 30 -o trace/
    """
    raise _not_yet("trace", "Frida agent and trace")


@app.command()
def inspect(
    target: Annotated[Path, typer.Argument(help="A bundle folder or a model file.")],
    json_out: JsonFlag = False,
) -> None:
    """Show a bundle's or model's inputs/outputs, preprocessing with provenance, and parity.

    Example: replaybench inspect bundles/age --json
    """
    raise _not_yet("inspect", "convert to ONNX")


# ---------------------------------------------------------------------------------------------- replay


@app.command()
def replay(
    paths: Annotated[
        list[Path], typer.Argument(metavar="BUNDLE... DATASET", help="Bundles, then the dataset.")
    ],
    output: OutDir,
) -> None:
    """Run a dataset through one or more bundles at high throughput; write predictions as Parquet.

    Example: replaybench replay bundles/age bundles/gender UTKFace/ --format utkface -o preds/
    """
    raise _not_yet("replay", "replay")


# -------------------------------------------------------------------------------------------- evaluate


@app.command()
def evaluate(
    predictions: Annotated[Path, typer.Argument(help="Predictions folder written by 'replaybench replay'.")],
    output: OutDir,
) -> None:
    """Measure demographic disparities and concept associations; write a report folder.

    Example: replaybench evaluate preds/ --by race,gender -o report/
    """
    raise _not_yet("evaluate", "evaluate")


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
            progress=None if json_out else RichProgress(),
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
        Path | None, typer.Option("--split", help="JSON {train:[ids], val:[ids]} or CSV post_id,split.")
    ] = None,
    finetune_last_blocks: Annotated[
        int, typer.Option("--finetune-last-blocks", help="Also train the last N encoder blocks (0-4).")
    ] = 0,
    json_out: JsonFlag = False,
) -> None:
    """Train the image+text student on teacher labels.

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
        epochs=epochs, patience=patience, seed=seed, split=split, finetune_last_blocks=finetune_last_blocks,
        progress=None if json_out else RichProgress(),
    )  # fmt: skip
    if json_out:
        emit_json(result)
        return
    v = result.validation
    _render_doc(
        "student training",
        {
            "output": result.output,
            "posts used": f"{result.posts_used} ({result.train_posts} train, {result.val_posts} val)",
            "skipped posts": len(result.skipped),
            "epochs": f"{result.epochs_run} (best {result.best_epoch})",
            "val MAE": f"{v['mae']:.3f} (predict-the-mean {result.baseline_val_mae:.3f})",
            "within 1 / 2": f"{v['within_1']:.1%} / {v['within_2']:.1%}",
            "pearson / spearman": f"{v['pearson']} / {v['spearman']}",
        },
    )


@distill_app.command("export")
def distill_export(
    student: Annotated[Path, typer.Argument(help="A trained student folder.")],
    output: OutDir,
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="Posts to calibrate int8 on (default: kept samples).")
    ] = None,
    no_int8: Annotated[bool, typer.Option("--no-int8", help="Skip the int8 variant.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Export the student (encoders + head) to an ONNX bundle, fp32 and int8, parity-checked.

    Example: replaybench distill export student/ -o student-bundle/
    """
    from replaybench._console import RichProgress, emit_json
    from replaybench.distill.export import export_student

    result = export_student(
        student, output, calibration_posts=calibration, int8=not no_int8,
        progress=None if json_out else RichProgress(),
    )  # fmt: skip
    if json_out:
        emit_json(result)
        return
    _render_doc("student export", result.model_dump())


@distill_app.command("score")
def distill_score(
    bundle: Annotated[Path, typer.Argument(help="A student bundle.")],
    posts: Annotated[Path, typer.Argument(help="A posts dataset.")],
    output: OutDir,
    int8: Annotated[bool, typer.Option("--int8", help="Run the int8 graphs.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed run in the same folder.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images / captions per model call.")] = 32,
    part_size: Annotated[int, typer.Option("--part-size", help="Rows per Parquet part.")] = 512,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Decode processes (default: cores).")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Score posts in bulk with the student bundle; Parquet with score and bucket per post.

    Example: replaybench distill score student-bundle/ posts/ -o scores/
    """
    from replaybench._console import RichProgress, emit_json
    from replaybench.distill.score import score_posts

    result = score_posts(
        bundle, posts, output, int8=int8, resume=resume, batch_size=batch_size, chunk_size=part_size,
        workers=workers, progress=None if json_out else RichProgress(),
    )  # fmt: skip
    if json_out:
        emit_json(result)
        return
    doc = result.model_dump(exclude={"summary"})
    for bucket, v in result.summary["buckets"].items():
        doc[f"bucket {bucket}"] = f"{v['count']} ({v['share']:.1%})"
    doc["errors (all parts)"] = result.summary["errors"]
    _render_doc("student scores", doc)


def _render_doc(title: str, doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("field", "value", title=title)
    for k, v in doc.items():
        table.add_row(str(k), f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)


# ------------------------------------------------------------------------------------------ demo, doctor


@app.command()
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the demo artefacts.")] = Path(
        "demo-out"
    ),
) -> None:
    """Run the whole pipeline on the embedded sample app and dataset.

    Example: replaybench demo -o demo-out/
    """
    raise _not_yet("demo", "the demo")


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
    from rich.console import Console
    from rich.table import Table

    table = Table("part", "status", "detail / how to install", title="replaybench doctor")
    for item in report.checks:
        status = "[green]ok[/]" if item.ok else ("[yellow]missing[/]" if item.optional else "[red]missing[/]")
        table.add_row(item.name, status, item.detail if item.ok else (item.install or item.detail))
    Console().print(table)


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
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as e:  # the last line of defence: a bug, shown briefly unless --debug
        if STATE.debug:
            raise
        sys.stderr.write(f"error: unexpected {type(e).__name__}: {e}\n")
        sys.stderr.write("hint: re-run with --debug for the traceback, and please report it\n")
        return ReplaybenchError.exit_code


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
