"""Output plumbing shared by the CLI: results to stdout, logs/progress/hints to stderr.

Library code never prints; it logs through ``logging`` and reports progress through a ``Progress``
object handed in by the caller (the CLI passes a rich progress bar on stderr, tests pass nothing).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Protocol


class Progress(Protocol):
    """What long-running library functions report to. ``NullProgress`` is the default."""

    def start(self, total: int | None, description: str) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    def start(self, total: int | None, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class RichProgress:
    """A rich progress bar on stderr with items/s and ETA."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None

    def start(self, total: int | None, description: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, rate="")

    def advance(self, n: int = 1) -> None:
        if self._bar is None:
            return
        self._bar.advance(self._task, n)
        task = self._bar.tasks[0]
        if task.speed:
            self._bar.update(self._task, rate=f"{task.speed:,.1f} items/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("replaybench")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def emit_json(doc: Any) -> None:
    """Write a result document to stdout as JSON (pydantic models and plain objects alike)."""
    if hasattr(doc, "model_dump_json"):
        sys.stdout.write(doc.model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def stdout_console() -> Any:
    """The console results are printed on. Piped or redirected output (no terminal) gets a wide page
    instead of rich's 80 columns, so tables written to a file keep whole values and paths.

    Markup is off: printed values come from apps under audit (entry names, package names, tensor
    names), and ``assets/[/x].tflite`` read as markup is a crash (``MarkupError``). Styles are given
    as ``rich.text.Text`` instead."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160, soft_wrap=True, markup=False)
