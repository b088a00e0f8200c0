"""Conversion and parity of untrusted models in a child process with resource limits.

An app's model is untrusted: converting it and running it for parity happens in a fresh Python process
(``subprocess``, never a fork of this one), started with only stdin/stdout/stderr (``close_fds``; the
child also closes anything else it finds), that sets its own limits before it imports any ML runtime
or reads any byte of the model:

=============  =================================  ==========================================
limit          default                            environment variable
=============  =================================  ==========================================
CPU time       900 s (RLIMIT_CPU)                 ``REPLAYBENCH_CONVERT_CPU_SECONDS``
memory         8192 MiB of data (RLIMIT_DATA)     ``REPLAYBENCH_CONVERT_MEMORY_MB``
file size      4096 MiB per file (RLIMIT_FSIZE)   ``REPLAYBENCH_CONVERT_FILE_MB``
wall clock     2 x CPU time + 60 s                ``REPLAYBENCH_CONVERT_WALL_SECONDS``
=============  =================================  ==========================================

RLIMIT_DATA (heap and private writable mappings), not RLIMIT_AS: TensorFlow, onnxruntime and torch
reserve gigabytes of address space they never touch, so an address-space cap either breaks them or
caps nothing. A model that exceeds a limit is a ``ResourceLimitError`` (exit code 17) naming the limit:
SIGXCPU (or SIGKILL past the hard limit) for CPU, MemoryError / TensorFlow's ResourceExhaustedError /
an allocation failure on stderr for memory, EFBIG for file size (Python ignores SIGXFSZ).

The request goes in as a JSON file (and an ``.npz`` of captured inputs, read with ``allow_pickle=False``)
in a private temporary folder; the result comes back as one JSON document on the child's stdout (the
child points its own fd 1 at stderr, so nothing the model's runtime prints can forge it), and is
validated here. The child's stderr is collected in a file and its last 64 KiB written to our fd 2 when
it ends (where the runtimes' output went in-process; the CLI filters start-up chatter unless -vv). A typed error raised in the child is raised here as the same class with the same
message and hint; the child's log records are re-emitted here under their own logger names.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from replaybench.errors import ConversionError, ReplaybenchError, ResourceLimitError

log = logging.getLogger(__name__)

ENV_CPU = "REPLAYBENCH_CONVERT_CPU_SECONDS"
ENV_MEMORY = "REPLAYBENCH_CONVERT_MEMORY_MB"
ENV_FILE = "REPLAYBENCH_CONVERT_FILE_MB"
ENV_WALL = "REPLAYBENCH_CONVERT_WALL_SECONDS"
ENV_PREWARM = "REPLAYBENCH_CONVERT_PREWARM"
CHILD_MODULE = "replaybench.extract.convert._sandbox_child"
REQUEST_JSON = "request.json"
ARRAYS_NPZ = "arrays.npz"
STDERR_TXT = "stderr.txt"
MAX_RESULT_BYTES = 64 * 1024 * 1024
MAX_MESSAGE_CHARS = 20_000
_STDERR_TAIL = 64 * 1024
# what a runtime prints when an allocation fails under RLIMIT_DATA
_OUT_OF_MEMORY = re.compile(
    r"MemoryError|bad_alloc|Cannot allocate memory|out of memory|ResourceExhausted|failed to map segment",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ChildLimits:
    """Resource limits of a conversion child (see the module docstring for defaults and variables)."""

    cpu_seconds: int = 900
    memory_mb: int = 8192
    file_mb: int = 4096
    wall_seconds: float | None = None  # None: 2 x cpu_seconds + 60

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ChildLimits:
        """Defaults, overridden by the REPLAYBENCH_CONVERT_* environment variables."""
        env = os.environ if env is None else env
        d = cls()

        def num(name: str, default: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                v = float(raw)
            except ValueError as e:
                from replaybench.errors import UsageError

                raise UsageError(f"{name} must be a number, got {raw!r}") from e
            if v <= 0:
                from replaybench.errors import UsageError

                raise UsageError(f"{name} must be positive, got {raw!r}")
            return v

        wall = env.get(ENV_WALL)
        return cls(
            cpu_seconds=int(num(ENV_CPU, d.cpu_seconds)),
            memory_mb=int(num(ENV_MEMORY, d.memory_mb)),
            file_mb=int(num(ENV_FILE, d.file_mb)),
            wall_seconds=num(ENV_WALL, 0.0) if wall else None,
        )

    @property
    def wall(self) -> float:
        return self.wall_seconds if self.wall_seconds is not None else 2.0 * self.cpu_seconds + 60.0


@dataclass
class ChildResult:
    """What a child handed back: the task's payload and what the child saw of its own sandbox."""

    payload: dict[str, Any]
    sandbox: dict[str, Any]


def pack_arrays(
    items: Sequence[np.ndarray | Sequence[np.ndarray]] | None,
) -> tuple[list[int], dict[str, Any]]:
    """Captured input sets as (layout, arrays for an .npz): layout[i] is -1 for a bare array, else its length."""
    layout: list[int] = []
    arrays: dict[str, Any] = {}
    for i, item in enumerate(items or []):
        if isinstance(item, np.ndarray):
            layout.append(-1)
            arrays[f"a{i}_0"] = item
        else:
            seq = list(item)
            layout.append(len(seq))
            arrays.update({f"a{i}_{k}": np.asarray(a) for k, a in enumerate(seq)})
    return layout, arrays


def unpack_arrays(layout: list[int], npz: Mapping[str, np.ndarray]) -> list[np.ndarray | list[np.ndarray]]:
    return [npz[f"a{i}_0"] if n == -1 else [npz[f"a{i}_{k}"] for k in range(n)] for i, n in enumerate(layout)]


def run_task(
    task: str,
    request: dict[str, Any],
    *,
    arrays: dict[str, Any] | None = None,
    limits: ChildLimits | None = None,
    what: str = "the model",
    prewarm_next: bool | str | None = None,
) -> ChildResult:
    """Run ``task`` (see ``_sandbox_child.TASKS``) in a fresh child process under ``limits``.

    The child is one started for this task, or the idle one ``prewarm_next`` started earlier (a fresh
    process that has only imported TensorFlow, tf2onnx and onnxruntime and has read no model; it
    serves one task and exits). ``prewarm_next`` (default: ``REPLAYBENCH_CONVERT_PREWARM=1``) starts
    such a child for the next task as soon as this one is handed out, so its imports overlap this
    conversion; a format name (the next model's) says which runtimes to import. ``convert_many`` uses
    it between models.

    Raises the child's typed error, ResourceLimitError when a limit was hit, ConversionError when the
    child crashed, ReplaybenchError for an unexpected failure inside the child (a bug).
    """
    limits = limits or ChildLimits.from_env()
    if prewarm_next is None:
        prewarm_next = os.environ.get(ENV_PREWARM) == "1"
    child = _take_warm(limits) or _Child.start(limits, warm=None)
    try:
        if prewarm_next:
            prewarm(limits, prewarm_next if isinstance(prewarm_next, str) else None)
        (child.work / REQUEST_JSON).write_text(
            json.dumps({"task": task, "request": request}), encoding="utf-8"
        )
        if arrays:
            np.savez(child.work / ARRAYS_NPZ, **arrays)
        return child.finish(limits, what)
    finally:
        child.close()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # the child imports the same replaybench as this process, wherever it was imported from
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(
        [root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    return env


@dataclass
class _Child:
    """A started child waiting on stdin for the word that its request is in ``work``."""

    proc: subprocess.Popen[bytes]
    work: Path
    limits: ChildLimits
    env: dict[str, str]

    @classmethod
    def start(cls, limits: ChildLimits, *, warm: str | None) -> _Child:
        """A child for ``limits``; ``warm``: a format whose runtimes it imports before its request
        ("any": TensorFlow's, the most common), None: import nothing ahead."""
        work = Path(tempfile.mkdtemp(prefix="replaybench-convert-"))  # mode 0700
        env = _child_env()
        try:
            with (work / STDERR_TXT).open("wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", CHILD_MODULE, json.dumps(asdict(limits)), str(work)]
                    + ([f"--warm={warm}"] if warm else []),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    close_fds=True,
                    # its own process group: killed as a whole, deaf to the terminal's Ctrl-C
                    start_new_session=True,
                    env=env,
                )
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return cls(proc, work, limits, env)

    def finish(self, limits: ChildLimits, what: str) -> ChildResult:
        proc = self.proc
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            out, _ = proc.communicate(b"go\n", timeout=limits.wall)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise ResourceLimitError(
                f"converting {what} exceeded the wall-clock limit of {limits.wall:g} s",
                limit="wall",
                hint=f"raise it with {ENV_WALL}=SECONDS if the model is known to be slow",
            ) from None
        except BrokenPipeError:  # died before reading its go: the exit status says why
            out = b""
            proc.wait()
        finally:
            if proc.poll() is None:  # KeyboardInterrupt or another error here: never leave it running
                _kill(proc)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        raw = _tail(self.work / STDERR_TXT)
        _forward_stderr(raw)
        tail = raw.decode("utf-8", "replace")
        doc = _parse(out[:MAX_RESULT_BYTES])
        if doc is not None:
            _replay_logs(doc.get("logs"))
            if "error" in doc:
                raise _rebuild_error(doc["error"], limits, what)
            payload, sandbox = doc.get("payload"), doc.get("sandbox")
            if isinstance(payload, dict) and isinstance(sandbox, dict) and proc.returncode == 0:
                return ChildResult(payload, sandbox)
        raise _death_error(proc.returncode, cpu, tail, limits, what)

    def close(self) -> None:
        if self.proc.poll() is None:
            _kill(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.work, ignore_errors=True)


_warm: _Child | None = None
_warm_lock = threading.Lock()


def prewarm(limits: ChildLimits | None = None, fmt: str | None = None) -> None:
    """Start an idle child for the next ``run_task`` (if none is waiting) that imports the runtimes
    of ``fmt`` (None: TensorFlow's) before it reads any request; ended at interpreter exit if unused."""
    global _warm
    limits = limits or ChildLimits.from_env()
    with _warm_lock:
        if _warm is not None and (_warm.proc.poll() is not None or _warm.limits != limits):
            _warm.close()
            _warm = None
        if _warm is None:
            _warm = _Child.start(limits, warm=fmt or "any")


def _take_warm(limits: ChildLimits) -> _Child | None:
    global _warm
    with _warm_lock:
        child, _warm = _warm, None
    if child is None:
        return None
    if child.proc.poll() is None and child.limits == limits and child.env == _child_env():
        return child
    child.close()
    return None


@atexit.register
def _end_warm() -> None:
    global _warm
    with _warm_lock:
        child, _warm = _warm, None
    if child is not None:
        child.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - _STDERR_TAIL))
            return f.read()
    except OSError:
        return b""


def _forward_stderr(data: bytes) -> None:
    """The child's stderr (its last 64 KiB) onto this process's fd 2, where the runtimes' output would
    have gone in-process: the CLI's fd-2 filter (``replaybench._stderr``) shows it with -vv only."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(2, view) :]
    except OSError:
        pass  # no stderr to write to: nothing is lost that a result depends on


def _parse(out: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(out)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _replay_logs(records: Any) -> None:
    for rec in records if isinstance(records, list) else []:
        if isinstance(rec, list) and len(rec) == 3 and all(isinstance(v, str | int) for v in rec):
            name, level, msg = rec
            logging.getLogger(str(name)).log(int(level), "%s", str(msg)[:MAX_MESSAGE_CHARS])


def _error_classes() -> dict[str, type[ReplaybenchError]]:
    found: dict[str, type[ReplaybenchError]] = {}
    todo: list[type[ReplaybenchError]] = [ReplaybenchError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def _rebuild_error(err: Any, limits: ChildLimits, what: str) -> ReplaybenchError:
    if not isinstance(err, dict):
        return ReplaybenchError(f"the conversion child of {what} returned a malformed error")
    message = str(err.get("message", ""))[:MAX_MESSAGE_CHARS]
    hint = err.get("hint")
    hint = str(hint)[:MAX_MESSAGE_CHARS] if hint is not None else None
    if err.get("out_of_memory"):
        return _memory_error(limits, what, message)
    if err.get("file_too_large"):
        return _file_size_error(limits, what)
    cls = _error_classes().get(str(err.get("type")))
    if cls is None or err.get("unexpected"):
        trace = str(err.get("traceback", ""))[-_STDERR_TAIL:]
        log.debug("unexpected error in the conversion child:\n%s", trace)
        return ReplaybenchError(
            f"unexpected failure converting {what}: {err.get('type')}: {message}",
            hint="re-run with --debug and report it (the child's traceback is in the debug log)",
        )
    if cls is ResourceLimitError:
        return ResourceLimitError(message, limit=str(err.get("limit") or "unknown"), hint=hint)
    return cls(message, hint=hint)


def _memory_error(limits: ChildLimits, what: str, detail: str = "") -> ResourceLimitError:
    return ResourceLimitError(
        f"converting {what} exceeded the memory limit of {limits.memory_mb} MiB"
        + (f" ({detail.strip().splitlines()[-1][:300]})" if detail.strip() else ""),
        limit="memory",
        hint=f"raise it with {ENV_MEMORY}=MIB if the model is known to need more",
    )


def _file_size_error(limits: ChildLimits, what: str) -> ResourceLimitError:
    return ResourceLimitError(
        f"converting {what} tried to write a file over the file-size limit of {limits.file_mb} MiB",
        limit="file_size",
        hint=f"raise it with {ENV_FILE}=MIB if the model is known to be that large",
    )


def _death_error(rc: int | None, cpu: float, tail: str, limits: ChildLimits, what: str) -> ReplaybenchError:
    sig = -rc if rc is not None and rc < 0 else None
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds):
        return ResourceLimitError(
            f"converting {what} exceeded the CPU-time limit of {limits.cpu_seconds} s",
            limit="cpu",
            hint=f"raise it with {ENV_CPU}=SECONDS if the model is known to be slow",
        )
    if sig == signal.SIGXFSZ:
        return _file_size_error(limits, what)
    last = [ln for ln in tail.strip().splitlines() if ln.strip()][-3:]
    if _OUT_OF_MEMORY.search(tail):
        return _memory_error(limits, what, last[-1] if last else "")
    how = f"was killed by {signal.Signals(sig).name}" if sig else f"exited with status {rc}"
    return ConversionError(
        f"the conversion process for {what} {how} without a result"
        + (f"; its last output: {' | '.join(last)[:600]}" if last else ""),
        hint="re-run with -vv to see the child's output",
    )
