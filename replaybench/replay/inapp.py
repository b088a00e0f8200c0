"""In-app replay: drive an app's own pipeline with dataset items through the Frida agent (issue 14).

For models that cannot leave the phone (a proprietary engine such as ByteNN, models compiled into code),
the items go to the app instead of the app's model coming to the workstation::

    dataset ──read──► items ──decode + pack (threads: resize, pixel format per the manifest)──┐
                                                                                              ▼
    PREDS/part-*.parquet ◄──rows in item order◄──decoders◄──results◄── agent in the app (replay/agent/inapp.js)
                                                                       feed: native export / offset call,
                                                                       frame substitution, Java method

The same dataset readers, decode, parts, ``--resume``, error rows and predictions contract as offline
replay (``route`` = ``in_app``), so ``evaluate`` works unchanged. Flow control: at most ``in_flight``
items are posted and unanswered; an item that takes longer than ``item_timeout`` hung the app, and an app
that dies (a crash) or hangs is killed and respawned (``--spawn`` targets), the item it was running
becomes an error row and the others are sent again. Parts hold whole items and are
renamed into place, so a killed run resumes with no duplicate and no lost rows. The items in flight
when the app died or hung are sent again one at a time: the one the app fails on alone is the cause (a
crash can take the results of the items before it with the process, so "the oldest unanswered" is not).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from replaybench._console import NullProgress, Progress
from replaybench.errors import CorruptInputError, ExternalServiceError, UsageError
from replaybench.replay.hooks import (
    HookManifest,
    InputSpec,
    JsonMessageRead,
    OutputTensorRead,
    ReturnValueRead,
    load_manifest,
)
from replaybench.replay.items import DatasetItem

log = logging.getLogger(__name__)

ROUTE_IN_APP = "in_app"
MAX_RAW_CHARS = 4000  # raw results kept in error rows are cut to this


class HookTargetError(CorruptInputError):
    """The manifest names something the running app lacks (an export, an offset, a class or method)."""


class AppVersionError(CorruptInputError):
    """The running app is not the version the manifest was written for."""


def agent_source() -> str:
    """The in-app agent's JavaScript (package data ``replaybench/replay/agent/inapp.js``)."""
    return resources.files("replaybench.replay").joinpath("agent/inapp.js").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ packing


def pack_image(img: np.ndarray, spec: InputSpec) -> tuple[bytes, int, int]:
    """An RGB (H, W, 3) uint8 image as the bytes the app takes: resized on the host when the manifest
    says so (replay's kernels: the same as bundles), in its pixel format. Returns (bytes, width, height).
    """
    from replaybench.bundle import PreprocessSpec
    from replaybench.replay.preprocess import apply_preprocess

    fmt = spec.pixel_format
    r = spec.resize
    if r is not None and fmt != "GRAY8" and r.method in _PIL_RGB and not (r.keep_aspect and r.crop == "none"):
        # Pillow's kernels resize each band alone, so one RGB resize makes the bytes the per-channel
        # reference (apply_preprocess) makes, without its float round trip (2.9 -> 1.6 ms at 200 -> 128 px).
        from PIL import Image

        from replaybench.replay.preprocess import crop

        small = Image.fromarray(np.ascontiguousarray(crop(img, r))).resize(
            (r.width, r.height), getattr(Image.Resampling, _PIL_RGB[r.method])
        )
        img = np.asarray(small)
    elif r is not None or fmt == "GRAY8":
        pre = PreprocessSpec(
            resize=r or _same_size(img),
            color_order="GRAY" if fmt == "GRAY8" else "RGB",
            dtype="uint8",
            scale=[1.0],
            offset=[0.0],
        )
        img = apply_preprocess(img, pre)
    if fmt in ("BGR888", "BGRA8888"):
        img = img[..., ::-1]
    if fmt in ("RGBA8888", "BGRA8888"):  # opaque: premultiplying (Android ARGB_8888) is then a no-op
        img = np.concatenate([img, np.full((*img.shape[:2], 1), 255, np.uint8)], axis=2)
    h, w = img.shape[:2]
    return np.ascontiguousarray(img, np.uint8).tobytes(), w, h


_PIL_RGB = {
    "bilinear_pil": "BILINEAR",
    "bicubic_pil": "BICUBIC",
}  # as replay/preprocess.py (area: OpenCV, below)


def _same_size(img: np.ndarray) -> Any:
    from replaybench.bundle import ResizeSpec

    return ResizeSpec(width=img.shape[1], height=img.shape[0], method="nearest")


# ------------------------------------------------------------------------------------------ results


@dataclass
class Outcome:
    """One item's result: ``status`` ok/error/skipped, the read's outputs (ok), the reason, the raw value."""

    status: str
    outputs: dict[str, np.ndarray] | None = None
    error: str | None = None
    raw: str | None = None


def _raw(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + "...(cut)"


def _lookup(doc: object, path: str) -> object:
    """``base_infos.0.age`` in a parsed JSON document; KeyError when it is not there."""
    v = doc
    for part in path.split("."):
        if isinstance(v, dict) and part in v:
            v = v[part]
        elif isinstance(v, list) and part.lstrip("-").isdigit() and -len(v) <= int(part) < len(v):
            v = v[int(part)]
        else:
            raise KeyError(path)
    return v


def _numbers(value: object, count: int, what: str) -> np.ndarray:
    """A number, or a list of ``count`` numbers, as float64; ValueError naming ``what`` otherwise."""
    vals = value if isinstance(value, list) else [value]
    if len(vals) != count or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        raise ValueError(
            f"{what} is {_raw(json.dumps(value, default=str))}, not {'a number' if count == 1 else f'{count} numbers'}"
        )
    arr = np.asarray(vals, np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} is not finite: {_raw(value)}")
    return arr


def parse_result(manifest: HookManifest, payload: Mapping[str, Any], data: bytes | None) -> Outcome:
    """The agent's result message for one item, read as the manifest says. Anything that does not parse
    is an error row that keeps the raw value."""
    if payload.get("error") is not None:
        raw = payload.get("raw")
        return Outcome("error", error=str(payload["error"]), raw=None if raw is None else _raw(raw))
    read = manifest.read
    sizes = manifest.output_sizes()
    if isinstance(read, ReturnValueRead):
        value = payload.get("value")
        try:
            return Outcome("ok", outputs={read.name: _numbers(value, 1, "the return value")})
        except ValueError as e:
            return Outcome("error", error=f"result does not parse: {e}", raw=_raw(value))
    if isinstance(read, OutputTensorRead):
        want = sum(o.count * np.dtype(o.dtype).itemsize for o in read.outputs)
        if data is None or len(data) != want:
            got = "no bytes" if data is None else f"{len(data)} bytes"
            return Outcome(
                "error",
                error=f"result does not parse: the output tensor is {got}, the manifest says {want}",
                raw=None if data is None else data[:256].hex(),
            )
        outputs, at = {}, 0
        for o in read.outputs:
            n = o.count * np.dtype(o.dtype).itemsize
            outputs[o.name] = np.frombuffer(data[at : at + n], o.dtype).astype(np.float64)
            at += n
        return Outcome("ok", outputs=outputs)
    if isinstance(read, JsonMessageRead):
        messages = [m for m in payload.get("messages") or [] if m is not None]
        if not messages:
            return Outcome("error", error="no message reached the hook while the item ran")
        text = str(messages[0] if read.pick == "first" else messages[-1])
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            return Outcome("error", error=f"result does not parse: not JSON ({e})", raw=_raw(text))
        for path, expected in read.skip_unless.items():
            found: object
            try:
                found = _lookup(doc, path)
            except KeyError:
                found = None
            if found != expected:
                return Outcome("skipped", error=f"{path} is {found!r}, not {expected!r}", raw=_raw(text))
        try:
            values = {name: _lookup(doc, path) for name, path in read.fields.items()}
        except KeyError as e:
            return Outcome(
                "error", error=f"result does not parse: no {e.args[0]!r} in the message", raw=_raw(text)
            )
        return _field_outcome(values, read.fields, sizes, _raw(text))
    fields = payload.get("fields")
    if not isinstance(fields, dict):
        return Outcome("error", error="result does not parse: no fields in the result", raw=_raw(payload))
    return _field_outcome(fields, read.fields, sizes, _raw(fields))


def _field_outcome(
    values: Mapping[str, object], paths: Mapping[str, str], sizes: Mapping[str, int], raw: str
) -> Outcome:
    try:
        outputs = {n: _numbers(values.get(n), sizes[n], f"{paths[n]!r}") for n in paths}
    except ValueError as e:
        return Outcome("error", error=f"result does not parse: {e}", raw=raw)
    return Outcome("ok", outputs=outputs, raw=raw)


# ------------------------------------------------------------------------------------- the app link


@dataclass
class InAppTarget:
    """Which device and process: exactly one of pid / name / spawn; device local, usb or remote."""

    usb: bool = False
    remote: str | None = None
    pid: int | None = None
    name: str | None = None
    spawn: str | None = None  # Android package, or a local program
    spawn_args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None  # extra environment for a spawned local program

    def check(self) -> None:
        if len([x for x in (self.pid, self.name, self.spawn) if x is not None]) != 1:
            raise UsageError("give exactly one of --pid, --name or --spawn")
        if self.usb and self.remote:
            raise UsageError("--usb and --remote are exclusive")
        if self.spawn_args and self.spawn is None:
            raise UsageError("program arguments after -- need --spawn")


class AppLink:
    """One agent session in one app process. Results, crashes and detaches arrive on ``events``."""

    def __init__(
        self, target: InAppTarget, manifest: HookManifest, events: queue.Queue[tuple[Any, ...]]
    ) -> None:
        from replaybench.extract.capture import CaptureTarget, _device, _frida

        self.frida = _frida()
        self.target = target
        self.manifest = manifest
        self.events = events
        self.device = _device(self.frida, CaptureTarget(usb=target.usb, remote=target.remote, pid=0))
        self.pid: int | None = None
        self.spawned = False
        self.session: Any = None
        self.script: Any = None
        self.dead = threading.Event()
        self.generation = 0

    def start(self, generation: int) -> dict[str, Any]:
        """Spawn or attach, load the agent, resolve every hook. Returns the agent's ``prepare`` answer."""
        frida, t = self.frida, self.target
        self.generation = generation
        try:
            if t.spawn is not None:
                argv = [t.spawn, *t.spawn_args]
                local = self.device.type == "local"
                kwargs = {"env": t.env} if (t.env and local) else {}
                self.pid = self.device.spawn(argv if local else t.spawn, **kwargs)
                self.spawned = True
            elif t.pid is not None:
                self.pid = t.pid
            else:
                self.pid = self.device.get_process(t.name).pid
            self.session = self.device.attach(self.pid)
        except (frida.ExecutableNotFoundError, frida.ProcessNotFoundError) as e:
            raise ExternalServiceError(f"cannot start or find the app: {e}") from e
        except (frida.PermissionDeniedError, frida.ProcessNotRespondingError, frida.NotSupportedError) as e:
            raise ExternalServiceError(
                f"cannot attach to pid {self.pid}: {e}",
                hint="ptrace may be denied (kernel.yama.ptrace_scope, a container without CAP_SYS_PTRACE)",
            ) from e
        gen = generation
        self.session.on("detached", lambda reason, crash: self._detached(gen, reason, crash))
        doc = {"manifest": self.manifest.model_dump(mode="json")}
        self.script = self.session.create_script(
            f"const INAPP = {json.dumps(doc)};\n" + agent_source(), name="replaybench-inapp"
        )
        self.script.on("message", lambda m, d: self._message(gen, m, d))
        self.script.load()
        if self.spawned:
            self.device.resume(self.pid)
        try:
            info: dict[str, Any] = self.script.exports_sync.prepare()
        except (frida.InvalidOperationError, frida.TransportError) as e:
            raise ExternalServiceError(
                f"the app (pid {self.pid}) went away while the hooks were set: {e}"
            ) from e
        return info

    def _detached(self, gen: int, reason: str, crash: Any) -> None:
        self.dead.set()
        detail = reason
        if crash is not None:
            detail += f": {getattr(crash, 'summary', crash)}"
        self.events.put(("dead", gen, detail))

    def _message(self, gen: int, message: dict[str, Any], data: bytes | None) -> None:
        if message.get("type") == "error":
            self.events.put(("agent_error", gen, str(message.get("description"))))
            return
        payload = message.get("payload")
        if isinstance(payload, dict) and payload.get("type") == "result":
            self.events.put(("result", gen, payload, data))

    def post(self, seq: int, width: int, height: int, data: bytes) -> None:
        self.script.post({"type": "item", "id": seq, "width": width, "height": height}, data)

    def close(self, kill: bool) -> None:
        """Detach (bounded: a wedged agent must not hold the run), and kill a process we spawned."""
        from replaybench.extract.capture import _bounded

        frida = self.frida

        def detach() -> None:
            try:
                if self.script is not None:
                    self.script.unload()
                if self.session is not None:
                    self.session.detach()
            except (frida.InvalidOperationError, frida.TransportError) as e:
                log.info("detach: %s", e)

        if kill and self.spawned and self.pid is not None:
            try:
                self.device.kill(self.pid)
            except Exception as e:  # the process may be gone already
                log.info("kill %s: %s", self.pid, e)
        if not self.dead.is_set():
            _bounded(detach, 5.0)
        if self.spawned and self.pid is not None and not kill:
            try:
                self.device.kill(self.pid)
            except Exception as e:
                log.info("kill %s: %s", self.pid, e)


def check_prepared(info: Mapping[str, Any], manifest: HookManifest, pid: int | None) -> str | None:
    """Refuse an app the manifest does not fit: a missing export/offset/method, or another version.
    Returns the version the app reported (None when the manifest gives no way to read it)."""
    missing = [str(m) for m in info.get("missing") or []]
    if missing:
        raise HookTargetError(
            f"the app (pid {pid}) lacks what the hook manifest {manifest.name!r} names: "
            + "; ".join(missing),
            hint="check the manifest against this app version (replaybench hooks suggest TRACE drafts one)",
        )
    reported = info.get("version")
    if manifest.app.version_from is not None and reported != manifest.app.version:
        raise AppVersionError(
            f"the app reports version {reported!r} but the hook manifest {manifest.name!r} is for version "
            f"{manifest.app.version!r}: its offsets and hooks may not fit",
            hint="use the manifest written for this app version",
        )
    return None if reported is None else str(reported)


# ------------------------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class InAppOptions:
    format: str | None = None
    pattern: str | None = None
    in_flight: int = 8  # items posted and unanswered at most
    item_timeout: float = 30.0  # seconds one item may run before the app counts as hung
    max_restarts: int = 20
    workers: int = 2  # decode + pack threads
    resume: bool = False
    limit: int | None = None
    shuffle: bool = False
    seed: int = 0
    part_rows: int = 8192


class InAppResult(BaseModel):
    """What an in-app replay did (the CLI renders it; ``--json`` prints it)."""

    model_config = ConfigDict(extra="forbid")
    output: str
    format: str
    route: str = ROUTE_IN_APP
    hooks: str
    app_package: str
    app_version_expected: str
    app_version_reported: str | None
    items_total: int
    items_skipped_done: int
    items_processed: int
    items_ok: int
    items_error: int
    items_filtered: int
    rows_written: int
    parts_written: int
    restarts: int
    agent_version: str | None = None
    pids: list[int] = Field(default_factory=list)
    seconds: float
    items_per_second: float


def _announce(events: queue.Queue[tuple[Any, ...]], k: int, _done: Future[Any]) -> None:
    events.put(("decoded", 0, k))  # wakes the main loop: item k is decoded (or failed to)


def _prepare_item(path: Path | None, spec: InputSpec) -> tuple[bytes, int, int] | str:
    """Decode and pack one item; a string is the reason it failed (an error row)."""
    from replaybench.replay.decode import DecodeFailure, decode_image

    try:
        if path is None:
            raise DecodeFailure("missing: the item has no image")
        return pack_image(decode_image(path), spec)
    except DecodeFailure as e:
        return e.reason
    except Exception as e:  # an odd image must not take the run down
        return f"preprocess failed: {type(e).__name__}: {e}"


def replay_in_app(
    hooks: Path,
    dataset: Path,
    output: Path,
    target: InAppTarget,
    options: InAppOptions | None = None,
    progress: Progress | None = None,
) -> InAppResult:
    """Replay ``dataset`` through the app the hook manifest ``hooks`` describes; write predictions Parquet
    parts (route ``in_app``) into ``output``.

    Example::

        replay_in_app(Path("hooks.json"), Path("utkface"), Path("preds"), InAppTarget(usb=True, spawn="com.app"))
    """

    from replaybench.predictions import Column, Producer
    from replaybench.replay.datasets import ReadOptions, read_dataset
    from replaybench.replay.decoders import decode_outputs, output_columns
    from replaybench.replay.rows import RowBuilder
    from replaybench.replay.runner import dataset_record, select_items
    from replaybench.replay.sink import PartWriter, check_or_write_manifest, done_item_ids

    opts = options or InAppOptions()
    progress = progress or NullProgress()
    target.check()
    if opts.in_flight < 1 or opts.item_timeout <= 0 or opts.workers < 1:
        raise UsageError("--in-flight and --workers must be at least 1, --item-timeout positive")
    manifest, hooks_sha = load_manifest(hooks)
    sizes = manifest.output_sizes()
    decoders = manifest.bound_decoders(sizes)
    labels = manifest.postprocess.labels
    outputs = output_columns(manifest.name, decoders, sizes, labels)
    # the app's result as the hook read it (text), kept beside the decoded fields
    outputs.append(
        Column(
            name="raw_result",
            kind="str",
            role="raw",
            producers=(Producer(bundle=manifest.name, decoder="raw", output="result"),),
        )
    )
    fmt, items = read_dataset(dataset, opts.format, ReadOptions(pattern=opts.pattern))
    selected = select_items(items, shuffle=opts.shuffle, seed=opts.seed, limit=opts.limit)
    run_doc = {
        "version": 1,
        "dataset": dataset_record(dataset, fmt, items),
        "bundles": [{"name": manifest.name, "route": ROUTE_IN_APP, "hooks_sha256": hooks_sha}],
        "settings": {
            "limit": opts.limit,
            "shuffle": opts.shuffle,
            "seed": opts.seed if opts.shuffle else None,
        },
    }
    check_or_write_manifest(output, run_doc, opts.resume)
    done = done_item_ids(output) if opts.resume else set()
    todo = [it for it in selected if it.item_id not in done]

    rows = RowBuilder([manifest.name], items, outputs, route=ROUTE_IN_APP)
    writer = PartWriter(output, max(1, opts.part_rows), rows.schema)
    counts = {"ok": 0, "error": 0, "skipped": 0}
    rows_written = 0

    def write_block(block: list[tuple[DatasetItem, Outcome]]) -> None:
        nonlocal rows_written
        status = [o.status for _, o in block]
        for st in status:
            counts[st] += 1
        ok = [o.outputs for _, o in block if o.outputs is not None and o.status == "ok"]
        cols: dict[str, Any] = {}
        if ok:
            merged = {name: np.stack([out[name].reshape(-1) for out in ok]) for name in sizes}
            cols = decode_outputs(merged, decoders, labels)
        res = {"status": status, "error": [o.error for _, o in block]}
        extra = {"raw_result": [o.raw for _, o in block]}
        writer.add(rows.frame([it for it, _ in block], res, [cols], extra))
        rows_written += len(block)
        progress.advance(len(block))

    events: queue.Queue[tuple[Any, ...]] = queue.Queue()
    pool = ThreadPoolExecutor(opts.workers, thread_name_prefix="inapp-decode")
    outcomes: dict[int, Outcome] = {}
    prepared: dict[int, tuple[bytes, int, int] | str] = {}
    decoding: dict[int, Future[Any]] = {}
    # Items in flight when the app died or hung: any of them may be the cause (results sent just before a
    # crash can be lost with the process), so each is sent again alone; one that fails alone is the cause.
    suspects: deque[int] = deque()
    probing = False  # a suspect is in flight, alone
    inflight: dict[int, tuple[int, float]] = {}  # seq -> (index in todo, posted at); in posting order
    lookahead = opts.in_flight * 2 + opts.workers
    next_decode = next_send = next_write = 0
    seq = generation = restarts = 0
    head_since = time.monotonic()
    pids: list[int] = []
    reported: str | None = None
    agent_version: str | None = None

    def open_link() -> AppLink:
        nonlocal generation, reported, agent_version
        generation += 1
        link = AppLink(target, manifest, events)
        try:
            info = link.start(generation)
            reported = check_prepared(info, manifest, link.pid)
            agent_version = None if info.get("agent") is None else str(info["agent"])
        except BaseException:
            link.close(kill=True)
            raise
        if link.pid is not None:
            pids.append(link.pid)
        return link

    def flush_written() -> None:
        nonlocal next_write
        block: list[tuple[DatasetItem, Outcome]] = []
        while next_write in outcomes:
            block.append((todo[next_write], outcomes.pop(next_write)))
            next_write += 1
            if len(block) >= 64:
                write_block(block)
                block = []
        if block:
            write_block(block)

    progress.start(len(todo), f"in-app replay {len(todo)} items through {manifest.app.package}")
    t_run = time.perf_counter()
    link: AppLink | None = open_link() if todo else None
    try:
        while next_write < len(todo):
            # decode ahead, in order, bounded
            while next_decode < len(todo) and len(decoding) + len(prepared) < lookahead:
                k = next_decode
                fut = pool.submit(_prepare_item, todo[k].path, manifest.input)
                fut.add_done_callback(partial(_announce, events, k))
                decoding[k] = fut
                next_decode += 1
            # post, bounded; a suspect goes alone
            while link is not None and len(inflight) < opts.in_flight and not probing:
                if suspects:
                    if inflight:
                        break
                    k = suspects.popleft()
                    probing = True
                elif next_send < len(todo) and next_send in prepared:
                    k = next_send
                    next_send += 1
                else:
                    break
                item = prepared[k]
                if isinstance(item, str):
                    outcomes[k] = Outcome("error", error=item)
                    del prepared[k]
                    probing = False
                    continue
                if not inflight:
                    head_since = time.monotonic()
                seq += 1
                inflight[seq] = (k, time.monotonic())
                link.post(seq, item[1], item[2], item[0])
            flush_written()
            if next_write >= len(todo):
                break
            # wait for the next event, or the head item's deadline
            wait = 1.0
            if inflight:
                wait = max(0.0, head_since + opts.item_timeout - time.monotonic())
            try:
                ev = events.get(timeout=min(wait, 1.0) + 0.001)
            except queue.Empty:
                ev = None
            trouble: str | None = None
            if ev is not None:
                kind, gen = ev[0], ev[1]
                if kind == "decoded":
                    k = ev[2]
                    prepared[k] = decoding.pop(k).result()
                elif gen != generation:
                    pass  # from an app instance already replaced
                elif kind == "result":
                    payload, data = ev[2], ev[3]
                    entry = inflight.pop(int(payload.get("id", -1)), None)
                    if entry is not None:
                        outcomes[entry[0]] = parse_result(manifest, payload, data)
                        prepared.pop(entry[0], None)
                        head_since = time.monotonic()
                        probing = False
                elif kind == "dead":
                    trouble = f"the app died ({ev[2]})"
                elif kind == "agent_error":
                    log.warning("in-app agent error: %s", ev[2])
            if trouble is None and inflight and time.monotonic() - head_since > opts.item_timeout:
                trouble = f"the app did not answer within {opts.item_timeout:g} s (hung)"
            if trouble is not None:
                if len(inflight) == 1:  # it ran alone: it is the cause
                    ((k, _),) = inflight.values()
                    outcomes[k] = Outcome("error", error=f"{trouble} on this item; the app was restarted")
                    prepared.pop(k, None)
                else:
                    suspects.extendleft(reversed([k for k, _ in inflight.values()]))
                inflight.clear()
                probing = False
                assert link is not None
                link.close(kill=True)
                link = None
                restarts += 1
                if target.spawn is None:
                    raise ExternalServiceError(
                        f"{trouble}; replay attached to it and cannot start it again",
                        hint="use --spawn so replay can restart the app, then --resume",
                    )
                if restarts > opts.max_restarts:
                    raise ExternalServiceError(
                        f"{trouble}; {restarts} restarts, more than --max-restarts {opts.max_restarts}",
                        hint="the parts written so far are kept: fix the cause and --resume",
                    )
                log.warning("%s; restarting it", trouble)
                link = open_link()
                head_since = time.monotonic()
    finally:
        try:
            flush_written()
            writer.flush()
        finally:
            progress.close()
            pool.shutdown(cancel_futures=True)
            if link is not None:
                link.close(kill=False)
    elapsed = time.perf_counter() - t_run
    return InAppResult(
        output=str(output),
        format=fmt,
        hooks=str(hooks),
        app_package=manifest.app.package,
        app_version_expected=manifest.app.version,
        app_version_reported=reported,
        items_total=len(selected),
        items_skipped_done=len(selected) - len(todo),
        items_processed=len(todo),
        items_ok=counts["ok"],
        items_error=counts["error"],
        items_filtered=counts["skipped"],
        rows_written=rows_written,
        parts_written=len(writer.written),
        restarts=restarts,
        agent_version=agent_version,
        pids=pids,
        seconds=round(elapsed, 3),
        items_per_second=round(len(todo) / elapsed, 2) if elapsed > 0 and not math.isnan(elapsed) else 0.0,
    )
