"""Record a trace: load the Frida agent into an app (USB device, remote frida-server, or a local process)
and write its events to ``trace.jsonl`` and its dumps to ``dumps/<sha256>`` (see ``extract/trace.py``).

Frida is optional (the ``frida`` extra) and imported only here, inside the functions that need it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from replaybench.errors import ExternalServiceError, TraceError, UsageError, missing_dependency
from replaybench.extract.trace import TRACE_JSONL, TraceWriter

log = logging.getLogger(__name__)


def agent_source() -> str:
    """The Frida agent's JavaScript (package data ``replaybench/extract/agent/agent.js``)."""
    return resources.files("replaybench.extract").joinpath("agent/agent.js").read_text(encoding="utf-8")


def agent_version() -> str:
    for line in agent_source().splitlines():
        if line.startswith("const AGENT_VERSION"):
            return line.split("'")[1]
    return "unknown"


@dataclass
class AgentConfig:
    """Limits and options handed to the agent (it prepends them as ``REPLAYBENCH_CONFIG``)."""

    max_dump_bytes: int = 64 * 1024 * 1024
    max_tensor_bytes: int = 16 * 1024 * 1024
    tensor_dump_invokes: int = 8  # full tensor dumps for the first N invokes per interpreter
    max_events_per_second: int = 200
    watch: list[str] = field(default_factory=list)

    def to_js(self) -> str:
        doc = {
            "maxDumpBytes": self.max_dump_bytes,
            "maxTensorBytes": self.max_tensor_bytes,
            "tensorDumpInvokes": self.tensor_dump_invokes,
            "maxEventsPerSecond": self.max_events_per_second,
            "watch": list(self.watch),
        }
        return f"const REPLAYBENCH_CONFIG = {json.dumps(doc)};\n"


@dataclass
class CaptureTarget:
    """Which device and process. Exactly one of pid / name / spawn; device: local, usb or remote host."""

    usb: bool = False
    remote: str | None = None
    pid: int | None = None
    name: str | None = None
    spawn: str | None = None  # Android package name, or a local program path
    spawn_args: list[str] = field(default_factory=list)

    def check(self) -> None:
        chosen = [x for x in (self.pid, self.name, self.spawn) if x is not None]
        if len(chosen) != 1:
            raise UsageError("give exactly one of --pid, --name or --spawn")
        if self.usb and self.remote:
            raise UsageError("--usb and --remote are exclusive")
        if self.spawn_args and self.spawn is None:
            raise UsageError("program arguments after -- need --spawn")


class CaptureResult(BaseModel):
    """What a capture wrote."""

    model_config = ConfigDict(extra="forbid")

    folder: str
    trace: str
    pid: int
    seconds: float
    events: int
    by_kind: dict[str, int] = Field(default_factory=dict)
    models_loaded: int = 0
    invokes: int = 0
    dumps_written: int = 0
    ended_by: str = "timeout"  # timeout, detached (the process ended), stopped, interrupted, max-dumps
    agent_errors: list[str] = Field(default_factory=list)


def _frida() -> Any:
    try:
        import frida
    except ImportError as e:
        raise missing_dependency("frida", extra="frida") from e
    return frida


def _device(frida: Any, target: CaptureTarget) -> Any:
    try:
        if target.usb:
            return frida.get_usb_device(timeout=5)
        if target.remote:
            return frida.get_device_manager().add_remote_device(target.remote)
        return frida.get_local_device()
    except (frida.InvalidArgumentError, frida.TimedOutError, frida.ServerNotRunningError) as e:
        raise ExternalServiceError(
            f"no Frida device: {e}", hint="is the device connected and frida-server running on it?"
        ) from e


def _app_info(device: Any, package: str) -> dict[str, Any]:
    """Package, version name/code from the device's application list (Android), where it answers."""
    try:
        for app in device.enumerate_applications(identifiers=[package], scope="full"):
            params = getattr(app, "parameters", {}) or {}
            info: dict[str, Any] = {"app": app.name, "package": app.identifier}
            if params.get("version"):
                info["version_name"] = str(params["version"])
            build = params.get("build")
            if build is not None and str(build).isdigit():
                info["version_code"] = int(str(build))
            return info
    except Exception as e:  # any device-side failure only costs us the version fields
        log.info("could not read application info for %s: %s", package, e)
    return {"package": package}


# A target whose agent stopped answering (a wedged hook) must not hold the capture forever: teardown RPCs
# get this long, then a spawned process is killed and the trace so far is kept.
TEARDOWN_SECONDS = 10.0


def _teardown(frida: Any, script: Any, session: Any) -> None:
    try:
        script.exports_sync.flush()
        script.unload()
        session.detach()
    except (frida.InvalidOperationError, frida.TransportError) as e:
        log.info("detach after capture: %s", e)


def _bounded(fn: Any, seconds: float) -> bool:
    """Run ``fn`` in a daemon thread; False when it did not finish in time."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        log.warning("the agent did not answer within %.0f s at the end of the capture", seconds)
        return False
    return True


def capture(
    target: CaptureTarget,
    out: Path,
    *,
    seconds: float | None = 30.0,
    max_dumps: int | None = None,
    config: AgentConfig | None = None,
    stop: threading.Event | None = None,
) -> CaptureResult:
    """Attach to (or spawn) the target, run the agent and write the trace folder ``out``.

    Runs for ``seconds`` (None: until ``stop`` is set or the process ends), or until ``max_dumps``
    dumps were written. A KeyboardInterrupt ends the capture cleanly (the trace so far is kept).

    Example::

        capture(CaptureTarget(usb=True, spawn="com.example.app"), Path("trace"), seconds=30)
    """
    target.check()
    frida = _frida()
    config = config or AgentConfig()
    out = Path(out)
    if (out / TRACE_JSONL).exists():
        raise UsageError(f"{out / TRACE_JSONL} exists already; choose an empty output folder")
    device = _device(frida, target)
    writer = TraceWriter(out)
    lock = threading.Lock()
    detached = threading.Event()
    dumps_full = threading.Event()
    stop = stop or threading.Event()
    errors: list[str] = []

    def on_message(message: dict[str, Any], data: bytes | None) -> None:
        if message.get("type") == "error":
            errors.append(str(message.get("description")))
            log.warning("agent error: %s", message.get("description"))
            return
        payload = message.get("payload")
        if not isinstance(payload, dict) or "kind" not in payload:
            return
        if payload.get("kind") == "stats":
            errors.extend(str(x) for x in payload.get("errors") or [])
        with lock:
            writer.write(payload, data)
            if max_dumps is not None and writer.dumps_written >= max_dumps:
                dumps_full.set()
                stop.set()

    spawned = False
    session_fields: dict[str, Any] = {"kind": "session", "agent_version": agent_version()}
    try:
        if target.spawn is not None:
            argv = [target.spawn, *target.spawn_args]
            try:
                pid = device.spawn(argv if (device.type == "local") else target.spawn)
            except frida.ExecutableNotFoundError as e:
                raise TraceError(f"cannot spawn {target.spawn}: {e}") from e
            spawned = True
        elif target.pid is not None:
            pid = target.pid
        else:
            try:
                pid = device.get_process(target.name).pid
            except frida.ProcessNotFoundError as e:
                raise TraceError(f"no process named {target.name!r} on {device.name}") from e
        if device.type != "local" and (target.spawn or target.name):
            session_fields.update(_app_info(device, str(target.spawn or target.name)))
        else:
            session_fields["app"] = str(target.spawn or target.name or pid)
        session_fields["pid"] = pid
        try:
            session = device.attach(pid)
        except (frida.PermissionDeniedError, frida.ProcessNotRespondingError, frida.NotSupportedError) as e:
            raise TraceError(
                f"cannot attach to pid {pid}: {e}",
                hint="ptrace may be denied (kernel.yama.ptrace_scope, a container without CAP_SYS_PTRACE)",
            ) from e
        session.on("detached", lambda *a: detached.set())
        script = session.create_script(config.to_js() + agent_source(), name="replaybench-agent")
        script.on("message", on_message)
        with lock:
            writer.write(session_fields)
        script.load()
        if spawned:
            device.resume(pid)
        started = time.monotonic()
        ended_by = "timeout"
        try:
            while True:
                if stop.wait(0.1):
                    ended_by = "max-dumps" if dumps_full.is_set() else "stopped"
                    break
                if detached.is_set():
                    ended_by = "detached"
                    break
                if seconds is not None and time.monotonic() - started >= seconds:
                    break
        except KeyboardInterrupt:
            ended_by = "interrupted"
        elapsed = time.monotonic() - started
        if not detached.is_set():
            _bounded(lambda: _teardown(frida, script, session), TEARDOWN_SECONDS)
    finally:
        if spawned and not detached.is_set():
            try:
                device.kill(pid)
            except Exception as e:  # the process may be gone already
                log.info("kill %s: %s", pid if spawned else "", e)
        writer.close()
    by_kind = dict(sorted(writer.by_kind.items()))
    return CaptureResult(
        folder=str(out),
        trace=str(out / TRACE_JSONL),
        pid=pid,
        seconds=round(elapsed, 3),
        events=writer.events,
        by_kind=by_kind,
        models_loaded=by_kind.get("model_load", 0),
        invokes=by_kind.get("invoke", 0),
        dumps_written=writer.dumps_written,
        ended_by=ended_by,
        agent_errors=errors[:50],
    )
