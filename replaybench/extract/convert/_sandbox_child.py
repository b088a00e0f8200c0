"""The conversion child (``python -m replaybench.extract.convert._sandbox_child WORKDIR``); see ``sandbox``.

Order matters: limits and file descriptors are settled before any ML runtime is imported or any model
byte is read (only replaybench's own light package imports run before).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _apply_limits(limits: dict[str, Any]) -> None:
    cpu = int(limits["cpu_seconds"])
    # soft limit: SIGXCPU; the hard limit (SIGKILL) a little later for a process that ignores it
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    mem = int(limits["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))
    size = int(limits["file_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU/SIGABRT dump no core files


def _open_fds() -> dict[int, str]:
    """This process's open file descriptors and what they point at (Linux /proc), less the listing's own."""
    try:
        dfd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return {}
    try:
        found = {}
        for name in os.listdir(dfd):  # noqa: PTH208 - listed through the fd, so it can be left out
            if int(name) != dfd:
                try:
                    found[int(name)] = os.readlink(name, dir_fd=dfd)
                except OSError:
                    pass  # the listing's own descriptor, closed by now
        return dict(sorted(found.items()))
    finally:
        os.close(dfd)


def _vm_status() -> dict[str, float]:
    """VmPeak (address space) and VmData (what RLIMIT_DATA counts) in MiB, from /proc/self/status."""
    found = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmPeak", "VmData", "VmHWM"):
                found[key] = round(int(value.split()[0]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return found


class _Records(logging.Handler):
    """Log records of the conversion, sent back to the parent to re-emit under the same names."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[list[Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 1000:
            self.records.append([record.name, record.levelno, record.getMessage()])


def _in_chain(e: BaseException, hit: Callable[[BaseException], bool]) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if hit(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _out_of_memory(e: BaseException) -> bool:
    """MemoryError, or TensorFlow's ResourceExhaustedError, anywhere in the cause chain."""
    return _in_chain(e, lambda c: isinstance(c, MemoryError) or type(c).__name__ == "ResourceExhaustedError")


def _file_too_large(e: BaseException) -> bool:
    """EFBIG anywhere in the cause chain: Python ignores SIGXFSZ, so RLIMIT_FSIZE shows up as this."""
    return _in_chain(e, lambda c: isinstance(c, OSError) and c.errno == errno.EFBIG)


def _task_convert(request: dict[str, Any], arrays: list[Any] | None) -> dict[str, Any]:
    from replaybench.bundle import PostprocessSpec, PreprocessSpec, SourceInfo
    from replaybench.extract.convert.writer import convert_model_in_process

    kw = dict(request["kwargs"])
    for key, cls in (
        ("preprocess", PreprocessSpec),
        ("postprocess", PostprocessSpec),
        ("source", SourceInfo),
    ):
        if kw.get(key) is not None:
            kw[key] = cls.model_validate(kw[key])
    if kw.get("weights") is not None:
        kw["weights"] = Path(kw["weights"])
    if arrays is not None:
        kw["trace_inputs"] = arrays
    bundle = convert_model_in_process(Path(request["model"]), Path(request["out"]), **kw)
    return {"bundle": bundle.model_dump(mode="json")}


def _task_inspect(request: dict[str, Any], arrays: list[Any] | None) -> dict[str, Any]:
    from replaybench.extract.convert.inspect import describe_model_in_process

    bundle = describe_model_in_process(Path(request["model"]), request.get("input_shape"))
    return {"bundle": bundle.model_dump(mode="json")}


def _task_probe(request: dict[str, Any], arrays: list[Any] | None) -> dict[str, Any]:
    """No model: what the sandbox looks like from inside (for ``replaybench doctor`` and tests)."""
    return {}


TASKS: dict[str, Callable[[dict[str, Any], list[Any] | None], dict[str, Any]]] = {
    "convert": _task_convert,
    "inspect": _task_inspect,
    "probe": _task_probe,
}


def _import_runtimes(fmt: str) -> None:
    """A warm child's head start: the imports a conversion of ``fmt`` needs, before any request exists."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        from replaybench.extract.convert import registry, writer  # noqa: F401

        registry.registered_formats()
        if fmt in ("torchscript", "pytorch_lite"):
            import torch  # noqa: F401
        elif fmt != "onnx":
            from replaybench.extract.convert.tf_runtime import import_tf2onnx

            import_tf2onnx()
    except Exception:  # a missing runtime is reported by the task that needs it
        pass


def main(argv: list[str]) -> int:
    limits, work = json.loads(argv[0]), Path(argv[1])
    fds_at_start = _open_fds()
    # only stdin/stdout/stderr are expected; close anything else a careless parent let through
    os.closerange(3, max([*fds_at_start, 2]) + 1)
    _apply_limits(limits)
    # fd 1 is the result channel; everything the runtimes print goes to stderr instead
    result = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    warm = [a.split("=", 1)[1] for a in argv[2:] if a.startswith("--warm=")]
    if warm:
        _import_runtimes(warm[0])
    if sys.stdin.readline().strip() != "go":
        return 0  # the parent ended without a task for it
    doc = json.loads((work / "request.json").read_text(encoding="utf-8"))
    records = _Records()
    logging.getLogger().addHandler(records)
    logging.getLogger().setLevel(logging.INFO)
    out: dict[str, Any] = {
        "sandbox": {
            "fds_at_start": fds_at_start,
            "limits": limits,
            "rlimits": {
                name: list(resource.getrlimit(getattr(resource, name)))
                for name in ("RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE")
            },
        }
    }
    try:
        arrays = None
        if (work / "arrays.npz").is_file():
            import numpy as np

            from replaybench.extract.convert.sandbox import unpack_arrays

            with np.load(work / "arrays.npz", allow_pickle=False) as npz:
                arrays = unpack_arrays(doc["request"]["layout"], {k: npz[k] for k in npz.files})
        out["payload"] = TASKS[doc["task"]](doc["request"], arrays)
    except BaseException as e:  # everything goes back to the parent, typed where it is ours
        from replaybench.errors import ReplaybenchError, ResourceLimitError

        err: dict[str, Any] = {
            "type": type(e).__name__,
            "message": getattr(e, "message", None) or str(e),
            "hint": getattr(e, "hint", None),
            "out_of_memory": _out_of_memory(e),
            "file_too_large": _file_too_large(e),
            "unexpected": not isinstance(e, ReplaybenchError),
        }
        if isinstance(e, ResourceLimitError):
            err["limit"] = e.limit
        if err["unexpected"]:
            err["traceback"] = traceback.format_exc()
        out["error"] = err
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["sandbox"]["cpu_seconds"] = round(ru.ru_utime + ru.ru_stime, 3)
    out["sandbox"]["max_rss_mb"] = round(ru.ru_maxrss / 1024, 1)
    out["sandbox"]["vm_mb"] = _vm_status()
    out["logs"] = records.records
    result.write(json.dumps(out).encode("utf-8"))
    result.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
