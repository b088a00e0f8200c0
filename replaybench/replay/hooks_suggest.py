"""Draft a hook manifest from a trace, for the researcher to confirm (``replaybench hooks suggest TRACE``).

What a trace can tell:

- **feed**: a watched native function the app called with a readable buffer and a plausible (width,
  height) pair of integer arguments (``--watch MODULE!FUNCTION`` when tracing): the app calls it by itself,
  so the draft substitutes its frame (``frame_substitution``); calling it directly (``native_export``) is
  listed as the alternative. Bitmaps the agent saw (``bitmap`` events) name the framework call that took
  them (``createScaledBitmap``), not the app's own method: they are listed as evidence only.
- **read**: a watched function entered while the feed call ran (or just after) with a JSON text argument
  (the paper's ``postMessage``): a ``json_message`` read with one output per numeric field of the message;
  otherwise the output tensors of the traced invokes, or the feed's return value.

Everything guessed is said in ``notes`` and ``problems``; the draft is validated as a manifest.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from replaybench.errors import CorruptInputError
from replaybench.extract.trace import (
    BitmapEvent,
    InvokeEvent,
    ModelLoadEvent,
    TensorEvent,
    WatchEvent,
    read_trace,
)
from replaybench.replay.hooks import HOOKS_SCHEMA_VERSION, parse_manifest

FOLLOW_MS = 50.0  # a read candidate entered this long after the feed call returned still follows it
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str  # feed or read
    kind: str  # a manifest feed/read kind
    target: str  # MODULE!FUNCTION, a Java API, a tensor
    count: int
    evidence: str


class HookSuggestion(BaseModel):
    """A draft manifest and what it rests on."""

    model_config = ConfigDict(extra="forbid")
    trace: str
    draft: dict[str, Any]
    valid: bool
    problems: list[str] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)


def _int(value: str | None) -> int | None:
    try:
        return int(str(value), 0)
    except (TypeError, ValueError):
        return None


def _text(arg: dict[str, Any]) -> str | None:
    """The printable prefix of a watched pointer argument (the agent keeps 64 bytes of it)."""
    if arg.get("string"):
        return str(arg["string"])
    raw = arg.get("hex")
    if not raw:
        return None
    data = bytes.fromhex(str(raw)).split(b"\0", 1)[0]
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if len(text) >= 2 and text.isprintable() else None


def numeric_paths(text: str) -> list[str]:
    """Paths (``base_infos.0.age``) of the complete numeric leaves of a JSON text, which may be cut short
    (a trace keeps only a prefix of each argument). A number that runs to the end of the text is dropped:
    it may be cut too."""
    paths: list[str] = []
    stack: list[list[Any]] = []  # ["obj", key or None] or ["arr", index]
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "{[":
            stack.append(["obj", None] if c == "{" else ["arr", 0])
            i += 1
        elif c in "}]":
            if stack:
                stack.pop()
            i += 1
        elif c == ",":
            if stack:
                if stack[-1][0] == "arr":
                    stack[-1][1] += 1
                else:
                    stack[-1][1] = None
            i += 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                break
            s = text[i + 1 : j]
            i = j + 1
            while i < n and text[i] == " ":
                i += 1
            if i < n and text[i] == ":" and stack and stack[-1][0] == "obj":
                stack[-1][1] = s
                i += 1
        elif c == "-" or c.isdigit():
            m = _NUMBER.match(text, i)
            if m is None or m.end() >= n:
                break
            i = m.end()
            path = [str(f[1]) for f in stack]
            if stack and all(p != "None" for p in path):
                paths.append(".".join(path))
        else:
            i += 1
    return paths


def _output_names(paths: list[str]) -> dict[str, str]:
    """Output name per path: the last key where it is unique (``age``), else the whole path as a slug."""
    last = Counter(p.split(".")[-1] for p in paths)
    out = {}
    for p in paths:
        key = p.split(".")[-1]
        name = key if last[key] == 1 and not key.isdigit() else re.sub(r"[^0-9a-zA-Z]+", "_", p)
        out[name] = p
    return out


def _frame_args(args: list[dict[str, Any]]) -> tuple[int, int, int, int, int] | None:
    """(buffer arg, width arg, height arg, width, height) when the arguments look like a frame."""
    buffer = next((a["i"] for a in args if a.get("hex")), None)
    if buffer is None:
        return None
    ints = [(a["i"], _int(a.get("value"))) for a in args if not a.get("hex") and a["i"] > buffer]
    for (i, w), (j, h) in zip(ints, ints[1:], strict=False):
        if j == i + 1 and w is not None and h is not None and 8 <= w <= 8192 and 8 <= h <= 8192:
            return buffer, i, j, w, h
    return None


def suggest_hooks(trace_path: Path) -> HookSuggestion:
    """Draft a hook manifest from a trace (see the module doc). Never raises on a trace that reads."""
    trace = read_trace(Path(trace_path))
    session = trace.session()
    problems: list[str] = []
    notes = [f"DRAFT from {trace_path}: confirm every field before replaying"]
    candidates: list[Candidate] = []

    watches = [e for e in trace.events if isinstance(e, WatchEvent)]
    # feed candidates: watched functions called with a frame-like set of arguments
    frames: dict[str, tuple[int, int, int, int, int]] = {}
    calls: Counter[str] = Counter()
    for e in watches:
        if e.phase == "enter" and "!" in e.target:
            fa = _frame_args(e.args)
            if fa is not None:
                frames.setdefault(e.target, fa)
                calls[e.target] += 1
    for target, (b, wi, hi, w, h) in frames.items():
        evidence = f"called by the app with a buffer (arg {b}) and {w} x {h} (args {wi}, {hi})"
        candidates.append(
            Candidate(
                role="feed", kind="frame_substitution", target=target, count=calls[target], evidence=evidence
            )
        )
        candidates.append(
            Candidate(
                role="feed",
                kind="native_export",
                target=target,
                count=calls[target],
                evidence=evidence + "; the agent would call it itself",
            )
        )
    for api, k in Counter(e.api or "?" for e in trace.events if isinstance(e, BitmapEvent)).items():
        candidates.append(
            Candidate(
                role="feed",
                kind="java_bitmap_method",
                target=api,
                count=k,
                evidence="bitmaps fed to the model went through this framework call; the app's own method that "
                "took them is not in the trace (trace again with --watch pkg.Class.method)",
            )
        )

    # read candidates: JSON texts handed to a watched function during (or just after) a feed call
    open_since: dict[str, float] = {}
    last_leave: dict[str, float] = {}
    messages: dict[tuple[str, int], list[str]] = {}
    for e in watches:
        if e.target in frames:
            if e.phase == "enter":
                open_since[e.target] = e.t
            else:
                open_since.pop(e.target, None)
                last_leave[e.target] = e.t
            continue
        if e.phase != "enter":
            continue
        following = bool(open_since) or any(e.t - t <= FOLLOW_MS for t in last_leave.values())
        if not following:
            continue
        for a in e.args:
            text = _text(a)
            if text is not None and text.lstrip().startswith(("{", "[")):
                messages.setdefault((e.target, int(a["i"])), []).append(text)
    for (target, arg), texts in messages.items():
        candidates.append(
            Candidate(
                role="read",
                kind="json_message",
                target=f"{target} arg {arg}",
                count=len(texts),
                evidence=f"JSON text: {texts[0][:80]}",
            )
        )
    outputs = [e for e in trace.events if isinstance(e, TensorEvent) and e.io == "output"]
    seen_out: dict[str, TensorEvent] = {}
    for t in outputs:
        seen_out.setdefault(t.name or f"output_{t.index}", t)
    for name, t in seen_out.items():
        count = 1
        for d in t.shape[1:] if len(t.shape) > 1 else t.shape:
            count *= max(1, d)
        candidates.append(
            Candidate(
                role="read",
                kind="output_tensor",
                target=name,
                count=sum(1 for o in outputs if (o.name or f"output_{o.index}") == name),
                evidence=f"shape {t.shape} {t.dtype} ({count} values), after each invoke",
            )
        )

    if any(isinstance(e, ModelLoadEvent) for e in trace.events) or any(
        isinstance(e, InvokeEvent) for e in trace.events
    ):
        notes.append(
            "the trace shows a model loaded by a known runtime: 'replaybench extract' + offline replay covers "
            "it; in-app replay is for engines nothing else can run"
        )

    package = (session.package or Path(session.app or "app").name) if session else "app"
    draft: dict[str, Any] = {
        "schema_version": HOOKS_SCHEMA_VERSION,
        "name": package,
        "app": {"package": package, "version": (session.version_name or "?") if session else "?"},
    }
    if session is not None and session.platform == "android":
        draft["app"]["version_from"] = {"kind": "java_package"}
    elif session is None or not session.version_name:
        problems.append("the trace does not name the app version: set app.version (and app.version_from)")

    feed_target = max(frames, key=lambda t: calls[t]) if frames else None
    if feed_target is not None:
        b, wi, hi, w, h = frames[feed_target]
        module, symbol = feed_target.split("!", 1)
        draft["input"] = {
            "pixel_format": "RGBA8888",
            "resize": {"width": w, "height": h, "method": "bilinear_android"},
        }
        draft["feed"] = {
            "kind": "frame_substitution",
            "call_site": {"module": module, "symbol": symbol},
            "buffer_arg": b,
            "width_arg": wi,
            "height_arg": hi,
        }
        notes.append(
            "input.pixel_format and resize.method are guesses (the trace keeps only the first bytes of the "
            "buffer): check the frame's byte count and layout"
        )
    else:
        problems.append(
            "the trace shows no app function that took the images: trace again with --watch MODULE!FUNCTION "
            "(a native function given the frame) or a Java method"
        )
    json_reads = [(k, v) for k, v in messages.items() if feed_target is None or k[0] != feed_target]
    if json_reads:
        (target, arg), texts = max(json_reads, key=lambda kv: len(kv[1]))
        module, symbol = target.split("!", 1)
        names = _output_names(numeric_paths(texts[0]))
        draft["read"] = {
            "kind": "json_message",
            "hook": {"module": module, "symbol": symbol},
            "arg": arg,
            "fields": names,
        }
        if not names:
            problems.append(
                f"the JSON texts passed to {target} show no complete numeric field: fill read.fields"
            )
        notes.append(
            "read.fields lists every numeric field of the first message; keep the ones that are results"
        )
    elif feed_target is not None:
        problems.append(
            "no watched function received a JSON text while the feed ran: choose the read by hand"
        )
    draft["postprocess"] = {"decoders": []}
    draft["notes"] = notes

    valid = False
    if not problems:
        try:
            parse_manifest(draft, "the draft")
            valid = True
        except CorruptInputError as e:
            problems.append(e.message)
    return HookSuggestion(
        trace=str(trace_path), draft=draft, valid=valid, problems=problems, candidates=candidates
    )


def write_draft(suggestion: HookSuggestion, path: Path) -> None:
    """Write the draft manifest as JSON."""
    Path(path).write_text(json.dumps(suggestion.draft, indent=2) + "\n", encoding="utf-8")
