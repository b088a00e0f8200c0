"""Rich tables for people: the Inventory of ``scan`` and the manifest of ``extract`` (stdout)."""

from __future__ import annotations

from pathlib import Path

from replaybench.extract.inventory import Inventory
from replaybench.extract.pipeline import ExtractResult


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_inventory(inv: Inventory) -> None:
    """Print the app, its model blobs, native libraries and code evidence as tables."""
    from rich.table import Table
    from rich.text import Text

    from replaybench._console import stdout_console

    con = stdout_console()
    app = inv.app
    con.print(
        Text.assemble(
            (app.package or "(no package)", "bold"),
            f" {app.version_name or ''} (versionCode {app.version_code}) - {len(app.containers)} container(s)",
        )
    )
    if inv.model_blobs:
        t = Table("format", "location", "size", "entropy", "evidence", title="model blobs")
        for b in inv.model_blobs:
            fmt = Text(b.format, "red") if b.encrypted else b.format
            t.add_row(
                fmt, b.location.describe(), _size(b.size), f"{b.entropy:.2f}", "; ".join(b.evidence[:3])
            )
        con.print(t)
    else:
        con.print("no on-device model found", style="green")
    ml_libs = [lib for lib in inv.native_libraries if lib.runtimes or lib.likely_inference_engine]
    if ml_libs:
        t = Table("library", "abi", "runtimes", "engine score", "evidence", title="ML native libraries")
        for lib in ml_libs:
            runtimes = ", ".join(r.runtime for r in lib.runtimes) or Text("unknown engine", "yellow")
            ev = "; ".join([e for r in lib.runtimes for e in r.evidence][:3] or lib.engine_evidence[:2])
            t.add_row(lib.location.entry, lib.abi or "", runtimes, f"{lib.engine_score:.2f}", ev)
        con.print(t)
    elif inv.native_libraries:
        con.print(f"{len(inv.native_libraries)} native librar(y/ies), no ML runtime found")
    if inv.code_references:
        t = Table("kind", "api / value", "where", title="code evidence")
        for r in inv.code_references[:40]:
            what = r.api if r.kind == "api" else f"{r.value} {r.args if r.args else ''}".strip()
            t.add_row(r.kind, what, f"{r.class_name}->{r.method}")
        con.print(t)
        if len(inv.code_references) > 40:
            con.print(f"... and {len(inv.code_references) - 40} more (see --json)")
    elif not inv.code_scanned:
        con.print("code analysis skipped (--no-code)")
    for rej in inv.rejected_candidates:
        con.print(Text.assemble(("not a model:", "yellow"), f" {rej.location.describe()}: {rej.reason}"))
    for w in inv.warnings:
        con.print(Text.assemble(("warning:", "yellow"), f" {w}"))


def print_extract_result(result: ExtractResult) -> None:
    """Print every model ``extract`` found, whether the trace saw it run, and its bundle."""
    from rich.table import Table
    from rich.text import Text

    from replaybench._console import stdout_console

    con = stdout_console()
    if not result.models:
        con.print("no on-device model found; nothing extracted", style="green")
    else:
        t = Table(
            "model",
            "format",
            "origin",
            "ran",
            "preprocess",
            "parity vs",
            "bundle / status",
            title="extracted models",
        )
        for m in result.models:
            ran = "" if m.ran_in_trace is None else ("yes" if m.ran_in_trace else "no")
            status = m.bundle if m.status == "converted" else f"{m.status}: {m.error or ''}"
            pre: str | Text = m.preprocess_from or ""
            if m.preprocess_from == "trace_unresolved" and m.preprocess_residual:
                res = m.preprocess_residual
                pre = Text.assemble(
                    ("UNRESOLVED", "red"),
                    f" max err {res.get('max_error', float('nan')):.3g} > {res.get('tolerance', float('nan')):.3g}",
                )
            reference = Text(m.parity_reference or "", "yellow" if m.parity_reference == "rewritten" else "")
            t.add_row(m.file, m.format, m.location, ran, pre, reference, status)
        con.print(t)
        for m in result.models:
            if m.parity_reference_reason:
                con.print(
                    Text.assemble(("parity reference:", "yellow"), f" {m.file}: {m.parity_reference_reason}")
                )
        checked = [m for m in result.models if m.fidelity is not None]
        if checked:
            f = Table(
                "model",
                "fidelity",
                "invokes",
                "worst output",
                "decoded fields / reason",
                title="end-to-end fidelity",
            )
            colour = {"passed": "green", "failed": "red", "not_checked": "yellow"}
            for m in checked:
                fid = m.fidelity
                assert fid is not None
                worst = max(fid.outputs, key=lambda o: o.max_abs_diff / (o.tolerance or 1), default=None)
                worst_text = (
                    ""
                    if worst is None
                    else f"{worst.name}: {worst.max_abs_diff:.3g} (tolerance {worst.tolerance:.3g})"
                )
                fields = ", ".join(f"{x.field} {x.agreed}/{x.total}" for x in fid.fields)
                detail = fid.reason if fid.verdict != "passed" else fields
                f.add_row(
                    m.bundle or m.file,
                    Text(fid.verdict, colour[fid.verdict]),
                    f"{fid.invokes_checked}/{fid.invokes_traced}",
                    worst_text,
                    detail or "",
                )
            con.print(f)
    if result.trace is not None:
        version = result.trace.get("version", {})
        same = version.get("same_app")
        verdict = {
            True: "same app and version",
            False: "DIFFERENT app or version",
            None: "app not identified",
        }
        con.print(f"trace: {len(result.trace.get('models', []))} model load(s); {verdict[same]}")
    for w in result.warnings:
        con.print(Text.assemble(("warning:", "yellow"), f" {w}"))
    con.print(f"result: {Path(result.output) / 'extract.json'}")
