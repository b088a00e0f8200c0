"""Native start-up chatter on file descriptor 2, kept off the terminal unless ``-vv``.

TensorFlow prints absl's "All log messages before absl::InitializeLog() is called are written to STDERR"
and its oneDNN notice on every import, whatever ``TF_CPP_MIN_LOG_LEVEL`` says; LiteRT prints "INFO:
Created TensorFlow Lite XNNPACK delegate for CPU." for every interpreter, including the ones tf2onnx
builds inside its converter. Neither has a switch, and both write from C++ straight to fd 2, so no
Python logging setting reaches them.

The console entry point (``replaybench.cli.run``, not the library) therefore routes fd 2 through a pipe:
a thread forwards every line to the real stderr except those recognised as this INFO/WARNING start-up
chatter, unless the CLI's verbosity says to show everything. Errors (absl ``E``/``F`` lines, LiteRT
``ERROR:``), crash messages and child processes' tracebacks are never matched and always pass.
Python-level writes (our log records, progress bars, tracebacks) go to the real stderr directly:
``sys.stderr`` is re-pointed at it, so terminals are still terminals for rich.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import sys
import threading
from collections.abc import Callable

CHATTER = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    # absl's INFO and WARNING lines: I0000 00:00:1796165755.527335   19840 port.cc:153] ...
    rb"|[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.+/-]+:\d+\] .*"
    # TensorFlow's older format: 2026-01-01 10:00:00.123456: I tensorflow/core/...] ...
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] \S+\] .*"
    # the second line of cpu_feature_guard's INFO message
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    # LiteRT / TFLite minimal logging at INFO
    rb"|INFO: (Created TensorFlow Lite|Initialized TensorFlow Lite|TfLiteFlexDelegate|Replacing \d+ out of) .*"
)


def is_chatter(line: bytes) -> bool:
    """Whether one line (without its newline) written to fd 2 is known native start-up chatter."""
    return CHATTER.fullmatch(line.rstrip(b"\r")) is not None


def filter_native_stderr(show_all: Callable[[], bool]) -> Callable[[], None]:
    """Route fd 2 through the chatter filter for the rest of the process; return the function that undoes
    it (also registered with ``atexit``). ``show_all()`` is asked per line (the CLI's ``-vv``)."""
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr at all (2>&-): nothing to keep clean
        return lambda: None
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)  # native code and child processes now write into the pipe
    os.close(write_end)
    old_stderr = sys.stderr
    sys.stderr = io.TextIOWrapper(
        io.FileIO(real, "w", closefd=False),
        encoding=getattr(old_stderr, "encoding", None) or "utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )

    def forward(data: bytes) -> None:
        while data:
            data = data[os.write(real, data) :]

    def pump() -> None:
        pending = b""
        with io.FileIO(read_end, "r") as src:
            while chunk := src.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = [line + b"\n" for line in lines if show_all() or not is_chatter(line)]
                if b"\r" in pending:  # a progress bar redrawing its line: no newline will come soon
                    kept.append(pending)
                    pending = b""
                if kept:
                    forward(b"".join(kept))
        if pending and (show_all() or not is_chatter(pending)):
            forward(pending)

    thread = threading.Thread(target=pump, name="replaybench-stderr-filter", daemon=True)
    thread.start()

    def undo() -> None:
        atexit.unregister(undo)
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        sys.stderr = old_stderr
        os.dup2(real, 2)  # closes our write end: the thread drains what is left and ends
        thread.join(timeout=2.0)  # a live child process still holding the pipe must not hang the exit

    atexit.register(undo)
    return undo
