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


# The root-logger handler the CLI installs (recognised by name so a second call replaces, not adds).
_THIRD_PARTY_HANDLER = "replaybench-third-party"
# Read by TensorFlow, huggingface_hub and transformers when they are imported (later, lazily).
QUIET_THIRD_PARTY_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ INFO and WARNING lines
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars
    "TRANSFORMERS_VERBOSITY": "error",
    # Python warnings of the libraries (tf2onnx's use of the deprecated tf.lite.Interpreter, LiteRT's
    # debugging notes), also in the conversion sandbox's child processes, which inherit the environment
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::UserWarning,ignore::FutureWarning",
}


def setup_logging(verbose: int, quiet: bool, *, third_party: bool = False) -> None:
    """Our records on stderr at the chosen level; third-party chatter only when ``third_party`` (-vv).

    Third-party libraries log through the root logger (tf2onnx's per-op messages, onnxruntime's
    quantisation advice via ``logging.warning``, which would otherwise install its own root handler) and
    print progress bars (transformers). Without ``third_party`` the root gets a handler that drops
    everything and the libraries' own switches are set (unless the user set them). What native code
    writes to fd 2 (TensorFlow, LiteRT) is the console entry point's business: ``replaybench._stderr``.
    """
    import os

    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    fmt = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    ours = logging.getLogger("replaybench")
    ours.handlers[:] = [handler]
    ours.setLevel(level)
    ours.propagate = False

    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != _THIRD_PARTY_HANDLER]
    sink: logging.Handler
    if third_party:
        sink = logging.StreamHandler(sys.stderr)
        sink.setFormatter(fmt)
        root.setLevel(logging.INFO)
    else:
        sink = logging.NullHandler()
        for key, value in QUIET_THIRD_PARTY_ENV.items():
            os.environ.setdefault(key, value)
        if os.environ["PYTHONWARNINGS"] == QUIET_THIRD_PARTY_ENV["PYTHONWARNINGS"]:  # not the user's own
            import warnings

            for category in (DeprecationWarning, UserWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category)
        if "transformers" in sys.modules:  # imported already: the environment is read too late
            import transformers

            transformers.utils.logging.disable_progress_bar()
            transformers.utils.logging.set_verbosity_error()
    sink.set_name(_THIRD_PARTY_HANDLER)
    root.addHandler(sink)


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
