"""The pipelined replay runner: decode + preprocess in worker processes, batched inference, streamed parts.

::

    items ──chunks──► worker processes (decode, faces, preprocess once per distinct PreprocessSpec)
                          │  numpy batches in shared memory, a bounded number of chunks in flight
                          ▼
                      main process: one stream thread per core runs whole chunks (one batched
                      onnxruntime call per bundle) and the postprocess decoders; chunks are written
                      in order: rows ──► Parquet parts (atomic) ──► PREDS/

Bundles with identical preprocessing share one tensor; every bundle shares the decode. Chunks are
written in order, so parts hold whole items and ``--resume`` can skip exactly the items already written.
Worker processes are started with ``forkserver`` (``spawn`` where unavailable): forking a parent that
already runs onnxruntime threads is unsafe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from replaybench._console import NullProgress, Progress
from replaybench.bundle import LoadedBundle, PreprocessSpec, load_bundle
from replaybench.errors import ReplaybenchError, UsageError
from replaybench.replay.admission import check_bundle_admissible
from replaybench.replay.items import DatasetItem
from replaybench.replay.preprocess import ResizeBackend

if TYPE_CHECKING:
    from replaybench.replay.sessions import ModelSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayOptions:
    """Everything ``replaybench replay`` can be told (defaults are the CLI's)."""

    format: str | None = None
    pattern: str | None = None
    workers: int | None = None  # None: one per CPU; 0: decode in the main process
    # 32: finer chunks fill and drain the pipeline sooner; measured end to end against 64 and 16 (128px
    # faces +3%, int8 faces equal, 224px model on 1080px photos +6%; benchmarks/replay_bench.py)
    batch_size: int = 32
    providers: tuple[str, ...] = ()
    threads: int | None = None  # onnxruntime intra-op threads; None: one per CPU
    resume: bool = False
    limit: int | None = None
    shuffle: bool = False
    seed: int = 0
    fast_decode: bool = False
    faces: Path | None = None
    one_face: bool = False
    face_margin: float = 0.2
    part_rows: int = 8192
    allow_outside: bool = False  # posts: images outside the dataset folder are refused unless set
    # Library-only (no CLI option): the bilinear resize kernel in the workers; "numpy" is the reference
    # the benchmark compares against.
    resize_backend: ResizeBackend = "onnxruntime"
    simplejpeg: bool = True  # library-only: plain JPEGs through simplejpeg (same pixels as Pillow)
    # replay a bundle whose end-to-end fidelity failed (recorded in run.json and the parts' metadata)
    allow_unfaithful: bool = False
    accept_unresolved: bool = False  # replay a bundle whose preprocessing is unresolved (admission.py)


class BundleRun(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    folder: str
    batch_mode: str
    preprocess_group: int
    notes: list[str] = Field(default_factory=list)


class ReplayResult(BaseModel):
    """What a replay did (the CLI renders it; ``--json`` prints it)."""

    model_config = ConfigDict(extra="forbid")
    output: str
    format: str
    items_total: int
    items_skipped_done: int
    items_processed: int
    items_ok: int
    items_error: int
    items_filtered: int  # no face / not exactly one face (status "skipped")
    rows_written: int
    parts_written: int
    bundles: list[BundleRun]
    preprocess_groups: int
    workers: int
    seconds: float  # the whole call: set-up and the items
    setup_seconds: float  # before the first item: dataset listing, bundles, sessions, worker start-up
    items_per_second: float  # items_processed / seconds: the end-to-end rate, set-up included
    steady_items_per_second: float  # items_processed / (seconds - setup_seconds): the rate once set up


# ----------------------------------------------------------------------------------------- workers

_W: dict[str, Any] = {}


def _tune_malloc() -> None:
    """Keep freed image buffers in the heap (glibc): by default every array over 128 kB is a fresh mmap,
    and the page faults of four such temporaries per image cost as much as the resize arithmetic
    (measured: preprocessing 200px -> 128x128 in 0.87 ms before, 0.45-0.56 ms after)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 26)  # M_MMAP_THRESHOLD: 64 MB
        libc.mallopt(-1, 1 << 27)  # M_TRIM_THRESHOLD: 128 MB
    except (OSError, AttributeError):  # not glibc (musl): nothing to tune
        pass


def _init_worker(
    specs: list[PreprocessSpec],
    faces: Path | None,
    margin: float,
    one_face: bool,
    fast: bool,
    resize_backend: ResizeBackend = "onnxruntime",
    simplejpeg: bool = True,
    slots: SlotSpec | None = None,
) -> None:
    """Per-process state: the distinct preprocess specs, the shared-memory slots and, with --faces, a
    detector session."""
    from replaybench.replay.decode import draft_size
    from replaybench.replay.preprocess import apply_preprocess

    if slots is not None:  # a worker process: Ctrl-C reaches the whole process group, and the main
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # process stops the pool (no traceback per worker)
    _tune_malloc()
    _W["specs"] = specs
    _W["slots"] = _attach_slots(slots) if slots else None
    _W["margin"] = margin
    _W["resize_backend"] = resize_backend
    _W["simplejpeg"] = simplejpeg
    _W["one_face"] = one_face
    _W["detector"] = None
    if faces is not None:
        from replaybench.replay.faces import FaceDetector

        _W["detector"] = FaceDetector(faces)
    # Reduced-size decode only when asked, and never with faces (the crop needs the full resolution).
    targets = [(s.resize.width, s.resize.height) for s in specs]
    _W["fast_size"] = draft_size(targets) if fast and faces is None else None
    for s in specs:  # warm up: the resize session is built here, not on the first chunk
        apply_preprocess(np.zeros((16, 16, 3), np.uint8), s, resize_backend)


def _process_chunk(chunk: list[tuple[int, str | None]], slot: int | None = None) -> dict[str, Any]:
    """Decode, detect, preprocess one chunk. Returns per-item status; the tensors of the ok items are
    written into shared-memory ``slot`` (one array per spec), or returned stacked when there is none."""
    from replaybench.replay.decode import DecodeFailure, decode_image
    from replaybench.replay.faces import crop_face
    from replaybench.replay.preprocess import apply_preprocess

    specs: list[PreprocessSpec] = _W["specs"]
    detector = _W["detector"]
    status: list[str] = []
    errors: list[str | None] = []
    faces: list[tuple[int, list[float] | None, float | None] | None] = []
    tensors: list[list[np.ndarray]] = [[] for _ in specs]
    for _, path in chunk:
        face_info = None
        try:
            if path is None:
                raise DecodeFailure("missing: the item has no image")
            img = decode_image(Path(path), fast_size=_W["fast_size"], simplejpeg=_W["simplejpeg"])
            if detector is not None:
                found = detector.detect(img)
                best = found[0] if found else None
                face_info = (len(found), list(best.box) if best else None, best.score if best else None)
                if _W["one_face"] and len(found) != 1:
                    status.append("skipped")
                    errors.append(f"--one-face: {len(found)} faces found")
                    faces.append(face_info)
                    continue
                if best is None:
                    status.append("skipped")
                    errors.append("no face found")
                    faces.append(face_info)
                    continue
                img = crop_face(img, best.box, _W["margin"])
            per_spec = [apply_preprocess(img, s, _W["resize_backend"]) for s in specs]
        except DecodeFailure as e:
            status.append("error")
            errors.append(e.reason)
            faces.append(face_info)
            continue
        except Exception as e:  # a bug or an odd image must not take the run down: an error row
            status.append("error")
            errors.append(f"preprocess failed: {type(e).__name__}: {e}")
            faces.append(face_info)
            continue
        for k, t in enumerate(per_spec):
            tensors[k].append(t)
        status.append("ok")
        errors.append(None)
        faces.append(face_info)
    if slot is not None:
        for dst, ts in zip(_W["slots"][slot][1], tensors, strict=True):
            for k, t in enumerate(ts):
                dst[k] = t  # the slot was sized for a whole chunk of the spec's exact shape
        return {"status": status, "error": errors, "faces": faces, "tensors": None, "n_ok": len(tensors[0])}
    stacked = [np.stack(ts) if ts else None for ts in tensors]
    return {"status": status, "error": errors, "faces": faces, "tensors": stacked}


# Shared-memory slots: one per chunk in flight, holding that chunk's tensors for every spec. Workers
# write tensors straight into them, so only statuses travel through the pipe (pickling a 64 x 224 x 224
# x 3 float32 batch costs as much as preprocessing it).
SLOT_BUDGET_BYTES = 768 * 2**20
SlotLayout = list[tuple[tuple[int, ...], str, int]]  # per spec: (item shape, dtype, byte offset)
SlotSpec = tuple[int, list[str], SlotLayout]  # items per slot, segment names, layout


def _slot_layout(specs: Sequence[PreprocessSpec], batch: int) -> tuple[SlotLayout, int]:
    from replaybench.replay.preprocess import apply_preprocess

    layout: SlotLayout = []
    offset = 0
    for spec in specs:
        probe = apply_preprocess(np.zeros((8, 8, 3), np.uint8), spec)
        layout.append((probe.shape, probe.dtype.str, offset))
        offset += batch * probe.nbytes
        offset += (-offset) % 64  # keep every array 64-byte aligned
    return layout, max(offset, 1)


def _views(buf: Any, layout: SlotLayout, batch: int) -> list[np.ndarray]:
    return [
        np.ndarray((batch, *shape), dtype=np.dtype(dt), buffer=buf, offset=off) for shape, dt, off in layout
    ]


def _attach_slots(slots: SlotSpec) -> list[tuple[Any, list[np.ndarray]]]:
    from multiprocessing import shared_memory

    batch, names, layout = slots
    out = []
    for name in names:
        # Workers share the parent's resource tracker (forkserver/spawn pass it on), so attaching
        # registers the same name again (a no-op) and the parent's unlink settles it.
        shm = shared_memory.SharedMemory(name=name)
        out.append((shm, _views(shm.buf, layout, batch)))
    return out


# ------------------------------------------------------------------------------------------- main


def _fingerprint(fmt: str, items: Sequence[DatasetItem]) -> str:
    h = hashlib.sha256(fmt.encode())
    for it in items:
        h.update(f"{it.item_id}\t{it.path}\n".encode())
    return h.hexdigest()


def select_items(
    items: Sequence[DatasetItem], *, shuffle: bool, seed: int, limit: int | None
) -> list[DatasetItem]:
    """The items a run replays: all, or a seeded shuffle, cut to ``limit`` (offline and in-app alike)."""
    selected = list(items)
    if shuffle:
        random.Random(seed).shuffle(selected)
    return selected if limit is None else selected[:limit]


def dataset_record(dataset: Path, fmt: str, items: Sequence[DatasetItem]) -> dict[str, Any]:
    """The dataset entry of run.json: ``--resume`` refuses a run whose dataset changed."""
    return {
        "path": str(Path(dataset).resolve()),
        "format": fmt,
        "fingerprint": _fingerprint(fmt, items),
        "items": len(items),
    }


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _chunks(items: Sequence[DatasetItem], size: int) -> Iterator[list[DatasetItem]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _mp_context() -> Any:
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # The fork server imports the worker code (and the main module, which a worker would otherwise
    # import again) once; every worker then forks with it loaded instead of importing numpy,
    # onnxruntime, Pillow and pydantic itself. No effect once the server runs.
    preload = [
        "replaybench.replay.decode",
        "replaybench.replay.preprocess",
        "onnx",
        "onnxruntime",
        "simplejpeg",
        "cv2",  # the "area" resize kernel
    ]
    ctx.set_forkserver_preload(["__main__", __name__, *preload])  # a module that is not installed is skipped
    return ctx


def _parts_metadata(bundles: Sequence[LoadedBundle], opts: ReplayOptions) -> dict[str, str]:
    """Key/values stored in every Parquet part: each bundle's fidelity verdict and whether unfaithful
    bundles were allowed, so a predictions file says how far its numbers are the app's."""
    verdicts = {
        lb.bundle.name: (lb.bundle.fidelity.verdict if lb.bundle.fidelity else None) for lb in bundles
    }
    return {
        "replaybench.fidelity": json.dumps(verdicts, sort_keys=True),
        "replaybench.allow_unfaithful": json.dumps(opts.allow_unfaithful),
        "replaybench.unfaithful_bundles": json.dumps(sorted(n for n, v in verdicts.items() if v == "failed")),
    }


def _parity_record(lb: LoadedBundle) -> dict[str, Any] | None:
    """What a bundle's outputs were checked against, for evaluate's report. A bundle replayed in the app's
    own engine runs the original itself: nothing was converted, so there is no parity to fail."""
    b = lb.bundle
    if b.runtime.name != "onnxruntime":
        return {
            "passed": None,
            "reference": "original",
            "reference_runtime": f"{b.runtime.name} {b.runtime.version or ''}".strip(),
            "reference_reason": f"replayed in the app's own engine: {b.runtime.reason}",
        }
    if b.parity is None:
        return None
    return b.parity.model_dump(
        mode="json", include={"passed", "reference", "reference_runtime", "reference_reason"}
    )


def _manifest_bundle(lb: LoadedBundle) -> dict[str, Any]:
    """A bundle's entry in run.json; an unresolved preprocessing replayed anyway is recorded there."""
    entry: dict[str, Any] = {
        "name": lb.bundle.name,
        "model_sha256": _file_sha256(lb.runtime_paths[0]),
        "runtime": lb.bundle.runtime.name,
        "fidelity": lb.bundle.fidelity.verdict if lb.bundle.fidelity else None,
    }
    if lb.bundle.preprocess is not None and lb.bundle.preprocess.unresolved:
        entry["preprocess_unresolved"] = True
        entry["accepted_unresolved"] = True  # only reachable with --accept-unresolved
    return entry


def _group_specs(bundles: Sequence[LoadedBundle]) -> tuple[list[PreprocessSpec], list[int]]:
    """Distinct preprocess specs (compared on what changes the tensor) and each bundle's group index."""
    specs: list[PreprocessSpec] = []
    keys: list[str] = []
    groups = []
    for lb in bundles:
        spec = lb.bundle.preprocess
        if spec is None:
            raise UsageError(
                f"bundle {lb.folder} has no preprocess block; replay needs to know how to build its input",
                hint="add one with 'replaybench convert ... --preprocess' or edit bundle.json",
            )
        key = spec.model_dump_json(exclude={"provenance", "residual", "alternatives", "notes"})
        if key not in keys:
            keys.append(key)
            specs.append(spec)
        groups.append(keys.index(key))
    return specs, groups


class DecodePool:
    """Decode worker processes and the shared-memory slots they write tensors into.

    Started before the model sessions open, so the workers' start-up (fork server, imports, the resize
    session) overlaps the main process's own: it was ~0.8 s before the first chunk, a fifth of a
    4,000-face run. ``run`` then streams chunks through it."""

    def __init__(
        self,
        specs: Sequence[PreprocessSpec],
        init_args: tuple[Any, ...],
        n_workers: int,
        batch: int,
        streams: int,
    ) -> None:
        from multiprocessing import shared_memory

        self.batch, self.streams = batch, streams
        layout, slot_bytes = _slot_layout(specs, batch)
        # Bounded: every worker can have a chunk queued behind the one it decodes while every stream
        # infers and one chunk waits to be written, within a memory budget.
        least = n_workers + streams + 1
        n_slots = max(least, min(least + n_workers, SLOT_BUDGET_BYTES // slot_bytes))
        self.shms = [shared_memory.SharedMemory(create=True, size=slot_bytes) for _ in range(n_slots)]
        self.views = [_views(s.buf, layout, batch) for s in self.shms]
        slots: SlotSpec = (batch, [s.name for s in self.shms], layout)
        self.pool = ProcessPoolExecutor(
            n_workers, mp_context=_mp_context(), initializer=_init_worker, initargs=(*init_args, slots)
        )
        # The executor starts its workers on the first submit, and the first start waits for the fork
        # server to come up and import the worker code (~0.3 s): both happen on a thread, so the caller
        # goes on opening its sessions meanwhile.
        self._starting = threading.Thread(target=self._start_workers, args=(n_workers,), daemon=True)
        self._starting.start()

    def _start_workers(self, n_workers: int) -> None:
        with contextlib.suppress(Exception):  # a failure shows again, typed, on the first real chunk
            for _ in range(n_workers):
                self.pool.submit(int)

    def close(self) -> None:
        self._starting.join()
        self.pool.shutdown(cancel_futures=True)
        self.views.clear()  # no array may point into a segment when it is closed
        for s in self.shms:
            s.close()
            s.unlink()

    def run(self, todo: Sequence[DatasetItem], payload: Any, infer: Any, write: Any) -> None:
        """Decode chunks in the workers, run ``infer(res)`` on the decoded ones in ``streams`` threads
        (onnxruntime releases the GIL), and ``write(chunk, res, inferred)`` in chunk order.

        A chunk goes to inference as soon as it is decoded, in whatever order the workers finish, and
        each stream takes whole chunks from the queue: no stream waits for another (splitting one
        batch across threads idled cores for the tail of every batch; waiting for the oldest chunk
        idled them behind one slow chunk). Only the writing is in order. A chunk's slot is reused once
        it is written, so the slots bound everything in flight."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        free = deque(range(len(self.shms)))
        decoding: dict[int, tuple[list[DatasetItem], int, Future[dict[str, Any]]]] = {}
        inferring: dict[int, tuple[list[DatasetItem], int, dict[str, Any], Future[Any]]] = {}
        chunks = enumerate(_chunks(todo, self.batch))
        more, next_write = True, 0
        infer_pool = ThreadPoolExecutor(self.streams, thread_name_prefix="replay-infer")
        try:
            while True:
                while more and free:
                    k, chunk = next(chunks, (-1, []))
                    if k < 0:
                        more = False
                        break
                    slot = free.popleft()
                    decoding[k] = (chunk, slot, self.pool.submit(_process_chunk, payload(chunk), slot))
                for k in [k for k, (_, _, fut) in decoding.items() if fut.done()]:
                    chunk, slot, fut = decoding.pop(k)
                    res = _decoded(fut)
                    n_ok = res["n_ok"]
                    res["tensors"] = [v[:n_ok] if n_ok else None for v in self.views[slot]]
                    inferring[k] = (chunk, slot, res, infer_pool.submit(infer, res))
                while next_write in inferring and inferring[next_write][3].done():
                    chunk, slot, res, fut = inferring.pop(next_write)
                    write(chunk, res, fut.result())
                    res["tensors"] = None
                    free.append(slot)
                    next_write += 1
                if not (more or decoding or inferring):
                    return
                waits = [fut for _, _, fut in decoding.values()]
                if next_write in inferring:
                    waits.append(inferring[next_write][3])
                wait(waits, return_when=FIRST_COMPLETED)
        finally:  # on an error, chunks still queued for inference are dropped, not run
            infer_pool.shutdown(cancel_futures=True)


def _decoded(fut: Future[dict[str, Any]]) -> dict[str, Any]:
    try:
        return fut.result()
    except BrokenProcessPool as e:
        # A worker died (killed, out of memory, a crash in a native decoder). Parts written so far are
        # whole; --resume continues from them.
        raise ReplaybenchError(
            f"a decode worker process died ({e}); the predictions written so far are kept",
            hint="re-run with --resume (and fewer --workers if memory is short)",
        ) from e


def inference_threads(threads: int | None, n_workers: int) -> tuple[int | None, int]:
    """(onnxruntime intra-op threads, concurrent streams) for the model stage.

    With decode workers on the same cores (the default), one intra-op thread per session call and one
    stream (a chunk in inference) per core: intra-op threads synchronise at every operator, and with more
    runnable threads than cores a descheduled one stalls the rest (measured on 2 loaded cores, MobileNetV2
    128: 2 intra-op threads ~1000 img/s, 1 thread ~1100, 2 one-thread streams more). An explicit
    ``--threads`` keeps one stream with that many threads; ``--workers 0`` (decode in the main process)
    keeps onnxruntime's own threading.
    """
    if threads is not None or n_workers == 0:
        return threads, 1
    return 1, os.cpu_count() or 1


def _open_sessions(
    bundles: Sequence[LoadedBundle],
    specs: Sequence[PreprocessSpec],
    groups: Sequence[int],
    opts: ReplayOptions,
    threads: int | None,
    spinning: bool,
) -> tuple[list[ModelSession], dict[str, str]]:
    """One session per bundle, checked against its preprocess dtype, and the decoded columns (name ->
    kind) they make together. ``spinning``: off when decode workers share the cores (idle onnxruntime
    threads would busy-wait on them)."""
    from replaybench.replay.decoders import decoded_columns
    from replaybench.replay.runtimes import open_bundle_model

    sessions = []
    decoded: dict[str, str] = {}
    for lb, g in zip(bundles, groups, strict=True):
        ms = open_bundle_model(lb, providers=opts.providers, threads=threads, spinning=spinning)
        want = np.dtype(specs[g].dtype)
        if np.dtype(ms.input_dtype) != want:
            raise UsageError(
                f"bundle {lb.bundle.name}: preprocess makes {want} but the model takes {np.dtype(ms.input_dtype)}"
            )
        for col, kind in decoded_columns(lb.bundle.postprocess.decoders, ms.output_sizes, lb.labels).items():
            if decoded.setdefault(col, kind) != kind:
                raise UsageError(f"bundles disagree on the type of column {col!r}")
        sessions.append(ms)
    return sessions, decoded


def replay(
    bundle_paths: Sequence[Path],
    dataset: Path,
    output: Path,
    options: ReplayOptions | None = None,
    progress: Progress | None = None,
) -> ReplayResult:
    """Replay ``dataset`` through every bundle; write predictions Parquet parts into ``output``.

    Example::

        replay([Path("bundles/gender")], Path("utkface_300"), Path("preds"), ReplayOptions(format="utkface"))
    """
    t0 = time.perf_counter()  # first: the imports below are part of the set-up a user waits for
    import polars as pl

    from replaybench.predictions import build_schema
    from replaybench.replay.datasets import ReadOptions, read_dataset
    from replaybench.replay.decoders import decode_outputs, output_columns
    from replaybench.replay.sink import (
        PartWriter,
        check_or_write_manifest,
        done_item_ids,
        item_columns,
        label_types,
        rows_frame,
    )

    opts = options or ReplayOptions()
    progress = progress or NullProgress()
    if not bundle_paths:
        raise UsageError("give at least one bundle before the dataset")
    if opts.one_face and opts.faces is None:
        raise UsageError("--one-face needs --faces DETECTOR_BUNDLE")
    if opts.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    bundles = [load_bundle(Path(p)) for p in bundle_paths]
    admitted = [
        check_bundle_admissible(
            lb.bundle, allow_unfaithful=opts.allow_unfaithful, accept_unresolved=opts.accept_unresolved
        )
        for lb in bundles
    ]
    names = [lb.bundle.name for lb in bundles]
    if len(set(names)) != len(names):
        raise UsageError(f"two bundles share a name ({', '.join(names)}); rows are keyed by bundle name")
    specs, groups = _group_specs(bundles)
    if opts.faces is not None:
        from replaybench.replay.faces import FaceDetector

        FaceDetector(opts.faces)  # a bad detector bundle fails here with its typed error, not in a worker
    fmt, items = read_dataset(
        dataset, opts.format, ReadOptions(pattern=opts.pattern, allow_outside=opts.allow_outside)
    )

    selected = select_items(items, shuffle=opts.shuffle, seed=opts.seed, limit=opts.limit)
    manifest = {
        "version": 1,
        "dataset": dataset_record(dataset, fmt, items),
        "bundles": [_manifest_bundle(lb) for lb in bundles],
        # what each bundle's parity was measured against, for evaluate's report (not compared on --resume)
        "bundle_parity": {lb.bundle.name: _parity_record(lb) for lb in bundles},
        "settings": {
            "limit": opts.limit,
            "shuffle": opts.shuffle,
            "seed": opts.seed if opts.shuffle else None,
            "fast_decode": opts.fast_decode,
            "faces": str(opts.faces) if opts.faces else None,
            "one_face": opts.one_face,
            "face_margin": opts.face_margin if opts.faces else None,
            "allow_unfaithful": opts.allow_unfaithful,
        },
    }
    check_or_write_manifest(output, manifest, opts.resume)
    done = done_item_ids(output) if opts.resume else set()
    todo = [it for it in selected if it.item_id not in done]

    n_workers = (os.cpu_count() or 1) if opts.workers is None else max(0, opts.workers)
    threads, streams = inference_threads(opts.threads, n_workers)
    init_args = (
        specs,
        opts.faces,
        opts.face_margin,
        opts.one_face,
        opts.fast_decode,
        opts.resize_backend,
        opts.simplejpeg,
    )
    # started before the sessions open: worker start-up overlaps the main process's (see DecodePool)
    pool = DecodePool(specs, init_args, n_workers, opts.batch_size, streams) if n_workers and todo else None
    try:
        sessions, decoded = _open_sessions(bundles, specs, groups, opts, threads, spinning=n_workers == 0)
        schema = build_schema(
            label_types([it.labels for it in items]),
            [
                col
                for lb, ms in zip(bundles, sessions, strict=True)
                for col in output_columns(
                    lb.bundle.name, lb.bundle.postprocess.decoders, ms.output_sizes, lb.labels
                )
            ],
            posts=any(it.post_id is not None or it.caption is not None for it in items),
            faces=opts.faces is not None,
        )
        writer = PartWriter(
            output, max(opts.part_rows, len(bundles)), schema, metadata=_parts_metadata(bundles, opts)
        )

        counts = {"ok": 0, "error": 0, "skipped": 0}
        rows_written = 0

        def infer(res: dict[str, Any]) -> list[dict[str, Any] | None]:
            """Model outputs decoded per bundle for a chunk's ok items (runs in a stream thread)."""
            per_bundle: list[dict[str, Any] | None] = []
            for lb, ms, g in zip(bundles, sessions, groups, strict=True):
                batch = res["tensors"][g]
                if batch is None:
                    per_bundle.append(None)
                    continue
                outs: dict[str, list[np.ndarray]] = {}
                for s in range(0, len(batch), opts.batch_size):
                    for k, v in ms.run(batch[s : s + opts.batch_size]).items():
                        outs.setdefault(k, []).append(v)
                merged = {k: np.concatenate(v) for k, v in outs.items()}
                per_bundle.append(decode_outputs(merged, lb.bundle.postprocess.decoders, lb.labels))
            return per_bundle

        def write(
            chunk: list[DatasetItem], res: dict[str, Any], per_bundle: list[dict[str, Any] | None]
        ) -> None:
            """The chunk's rows, built column by column (the main thread's share of every item)."""
            nonlocal rows_written
            n = len(chunk)
            status: list[str] = res["status"]
            for st in status:
                counts[st] += 1
            base = item_columns(schema, chunk)
            base.update(status=status, error=res["error"], route=["offline"] * n)
            if opts.faces is not None:
                faces = [f or (None, None, None) for f in res["faces"]]
                for k, col in enumerate(("face_count", "face_box", "face_score")):
                    base[col] = [f[k] for f in faces]
            valid = np.array([st == "ok" for st in status], bool)
            frames = [
                rows_frame(schema, n, dict(base, bundle=[lb.bundle.name] * n), decoded_cols or {}, valid)
                for lb, decoded_cols in zip(bundles, per_bundle, strict=True)
            ]
            writer.add(pl.concat(frames) if len(frames) > 1 else frames[0])
            rows_written += n * len(bundles)
            progress.advance(n)

        def payload(chunk: list[DatasetItem]) -> list[tuple[int, str | None]]:
            return [(i, str(it.path) if it.path is not None else None) for i, it in enumerate(chunk)]

        progress.start(len(todo), f"replay {len(todo)} items x {len(bundles)} bundle(s)")
        t_run = time.perf_counter()
        try:
            if n_workers == 0:
                _init_worker(*init_args)
                for chunk in _chunks(todo, opts.batch_size):
                    res = _process_chunk(payload(chunk))
                    write(chunk, res, infer(res))
            elif pool is not None:
                pool.run(todo, payload, infer, write)
            writer.flush()
        finally:
            progress.close()
    finally:
        if pool is not None:
            pool.close()
    t_end = time.perf_counter()
    seconds, setup_seconds = t_end - t0, t_run - t0
    return ReplayResult(
        output=str(output),
        format=fmt,
        items_total=len(selected),
        items_skipped_done=len(selected) - len(todo),
        items_processed=len(todo),
        items_ok=counts["ok"],
        items_error=counts["error"],
        items_filtered=counts["skipped"],
        rows_written=rows_written,
        parts_written=len(writer.written),
        bundles=[
            BundleRun(
                name=lb.bundle.name,
                folder=str(lb.folder),
                batch_mode=ms.batch_mode,
                preprocess_group=g,
                notes=[*accepted, *ms.notes]
                + (
                    ["the app fed this model a per-image region (a detected face): give it such crops"]
                    if lb.bundle.preprocess is not None and lb.bundle.preprocess.resize.roi == "per_image"
                    else []
                ),
            )
            for lb, ms, g, accepted in zip(bundles, sessions, groups, admitted, strict=True)
        ],
        preprocess_groups=len(specs),
        workers=n_workers,
        seconds=round(seconds, 3),
        setup_seconds=round(setup_seconds, 3),
        items_per_second=round(len(todo) / seconds, 2) if seconds > 0 else 0.0,
        steady_items_per_second=round(len(todo) / (t_end - t_run), 2) if t_end > t_run else 0.0,
    )
