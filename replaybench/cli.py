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
    task: Annotated[
        str | None,
        typer.Option(
            "--task", help="age|gender|classification|concepts (default: every task the columns allow)."
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
    from rich.console import Console
    from rich.table import Column, Table
    from rich.text import Text

    def f(v: float | None, d: int = 3) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    def row(table: Any, *cells: str) -> None:
        table.add_row(*(Text(c) for c in cells))  # Text: metric names like recall[female] are not markup

    console = Console()
    for t in summary.tasks:
        table = Table(f"{summary.ci:.0%} CI", "n", "of", "worst group", "its value", "max-min")
        table.columns.insert(0, Column("overall"))
        table.columns.insert(0, Column("metric", no_wrap=True, min_width=22))
        table.title = Text(f"{t.bundle}: {t.task}")
        # worst group over the first group column (race by default), where at least two groups rank
        order = {g: i for i, g in enumerate(t.group_columns)}
        worst: dict[str, Any] = {}
        for d in sorted(t.disparities, key=lambda d: ("+" in d.grouping, order.get(d.grouping, 99))):
            if d.n_groups >= 2:
                worst.setdefault(d.metric, d)
        for m in t.headline:
            d = worst.get(m.name)
            row(
                table,
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
        table.title = Text(
            f"{c.bundle}: {c.n_significant} of {c.n_tests} concept x group associations significant"
        )
        for a in [*c.spurious, *c.strongest][:15]:
            row(
                table,
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
        table = Table("field", "n", "agreement", "kappa", "mean |diff|", "worst group")
        table.title = Text(f"agreement with {summary.comparison.other}")
        for a in summary.comparison.fields:
            row(
                table, a.field, str(a.n), f(a.agreement), f(a.kappa), f(a.mean_abs_diff), a.worst_group or "-"
            )
        console.print(table)
    for w in summary.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))
    console.print(Text(f"report: {summary.report}/index.html (metrics.parquet, summary.json beside it)"))


# --------------------------------------------------------------------------------------------- distill


@distill_app.command("label")
def distill_label(
    posts: Annotated[Path, typer.Argument(help="A posts dataset.")],
    output: OutDir,
) -> None:
    """Score posts with a VLM teacher behind an OpenAI-compatible endpoint (cached, resumable).

    Example: replaybench distill label posts/ --endpoint http://localhost:8000/v1 --model qwen -o labels.parquet
    """
    raise _not_yet("distill label", "distill")


@distill_app.command("train")
def distill_train(
    posts: Annotated[Path, typer.Argument(help="A posts dataset.")],
    labels: Annotated[Path, typer.Argument(help="Teacher labels.")],
    output: OutDir,
) -> None:
    """Train the image+text student on teacher labels.

    Example: replaybench distill train posts/ labels.parquet -o student/
    """
    raise _not_yet("distill train", "distill")


@distill_app.command("export")
def distill_export(
    student: Annotated[Path, typer.Argument(help="A trained student folder.")],
    output: OutDir,
) -> None:
    """Export the student (encoders + head) to an ONNX bundle, fp32 and int8, parity-checked.

    Example: replaybench distill export student/ -o student-bundle/
    """
    raise _not_yet("distill export", "distill")


@distill_app.command("score")
def distill_score(
    bundle: Annotated[Path, typer.Argument(help="A student bundle.")],
    posts: Annotated[Path, typer.Argument(help="A posts dataset.")],
    output: OutDir,
) -> None:
    """Score posts in bulk with the student bundle; Parquet with score and bucket per post.

    Example: replaybench distill score student-bundle/ posts/ -o scores/
    """
    raise _not_yet("distill score", "distill")


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
