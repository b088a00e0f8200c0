"""Typed errors. Each carries a message a researcher can act on and a distinct exit code.

The CLI maps them to output in one place (``replaybench.cli.main``); library code raises them with
``raise ... from cause`` and never prints or exits.

Exit codes (also in the README):

==  =========================  ==========================================================
0   success
1   ReplaybenchError           unexpected failure inside replaybench (a bug: use --debug)
2   UsageError                 bad command line: conflicting or missing options
3   InputNotFoundError         a file or folder named on the command line does not exist
4   UnsupportedFormatError     the input is of a format replaybench does not handle
5   CorruptInputError          the input is truncated, malformed or not what it claims to be
6   UnsafeInputError           the input was refused: zip bomb, path traversal, oversize, file/Python/
                               system ops in a model
7   ConversionError            a model could not be converted to ONNX
8   ParityError                the converted model disagrees with the source runtime
9   MissingDependencyError     an optional part (frida, a decoder, a tool) is not installed
10  (retired)                  unused: once 'not available yet'; never reused for another error
11  DatasetError               the dataset has no items or its labels do not parse
12  TraceError                 the Frida trace cannot be used (or a capture failed)
13  ExternalServiceError       a teacher endpoint or device did not answer usefully
14  EvaluationError            predictions lack what the requested evaluation needs
15  UnresolvedPreprocessError  the trace does not determine a model's preprocessing (extract), or
                               a bundle whose preprocessing is unresolved was given to replay
16  UnfaithfulBundleError      a bundle's end-to-end fidelity check against the trace failed
17  ResourceLimitError         a model's conversion child exceeded its CPU-time, memory, file-size or
                               wall-clock limit (REPLAYBENCH_CONVERT_* environment variables)
==  =========================  ==========================================================
"""

from __future__ import annotations


class ReplaybenchError(Exception):
    """Base class. ``message`` is shown to the user; ``hint`` suggests the next command."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ReplaybenchError):
    exit_code = 2


class InputNotFoundError(ReplaybenchError):
    exit_code = 3


class UnsupportedFormatError(ReplaybenchError):
    exit_code = 4


class CorruptInputError(ReplaybenchError):
    exit_code = 5


class UnsafeInputError(ReplaybenchError):
    exit_code = 6


class ResourceLimitError(ReplaybenchError):
    """A model's conversion child exceeded a limit; ``limit`` is cpu, memory, file_size or wall."""

    exit_code = 17

    def __init__(self, message: str, *, limit: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.limit = limit


class ConversionError(ReplaybenchError):
    exit_code = 7


class ParityError(ReplaybenchError):
    exit_code = 8


class MissingDependencyError(ReplaybenchError):
    exit_code = 9


class DatasetError(ReplaybenchError):
    exit_code = 11


class TraceError(ReplaybenchError):
    exit_code = 12


class ExternalServiceError(ReplaybenchError):
    exit_code = 13


class EvaluationError(ReplaybenchError):
    exit_code = 14


class UnresolvedPreprocessError(ReplaybenchError):
    """No candidate preprocessing reproduces the captured input tensors within the acceptance rule.

    ``extract`` raises it after writing every bundle and extract.json (the unresolved specs are marked
    ``trace_unresolved`` there); ``replay`` raises it for such a bundle unless ``--accept-unresolved``.
    """

    exit_code = 15


class UnfaithfulBundleError(ReplaybenchError):
    """A bundle whose replay does not reproduce the app's own outputs on the traced invokes."""

    exit_code = 16  # 15 is UnresolvedPreprocessError (branch preproc)


ALL_ERRORS: tuple[type[ReplaybenchError], ...] = (
    ReplaybenchError,
    UsageError,
    InputNotFoundError,
    UnsupportedFormatError,
    CorruptInputError,
    UnsafeInputError,
    ConversionError,
    ParityError,
    MissingDependencyError,
    DatasetError,
    TraceError,
    ExternalServiceError,
    EvaluationError,
    UnresolvedPreprocessError,
    UnfaithfulBundleError,
    ResourceLimitError,
)


def require_path(path: object, what: str = "input") -> None:
    """Raise InputNotFoundError when ``path`` (a ``pathlib.Path``) does not exist."""
    from pathlib import Path

    p = Path(str(path))
    if not p.exists():
        raise InputNotFoundError(f"{what} not found: {p}")


def missing_dependency(
    module: str, extra: str | None = None, package: str | None = None
) -> MissingDependencyError:
    """Build the error for an optional import that failed, with the install command."""
    cmd = f"pip install 'replaybench[{extra}]'" if extra else f"pip install {package or module}"
    return MissingDependencyError(f"{module} is not installed", hint=f"install it with: {cmd}")
