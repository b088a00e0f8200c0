"""The local engine: decode worker processes, the shared-memory slots they fill, and the chunk scheduling.

::

    chunks ──► worker processes (workers.process_chunk) ──tensors in shared memory──► stream threads
               (a bounded number of chunks in flight)                                 (infer, any order)
                                                                                        │
                                                                   write, in chunk order ◄┘

Worker processes are started with ``forkserver`` (``spawn`` where unavailable): forking a parent that
already runs onnxruntime threads is unsafe.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from replaybench.bundle import PreprocessSpec
from replaybench.errors import ReplaybenchError
from replaybench.replay.items import DatasetItem
from replaybench.replay.workers import DecodeConfig, init_worker, process_chunk

# Shared-memory slots: one per chunk in flight, holding that chunk's tensors for every spec. Workers
# write tensors straight into them, so only statuses travel through the pipe (pickling a 64 x 224 x 224
# x 3 float32 batch costs as much as preprocessing it).
SLOT_BUDGET_BYTES = 768 * 2**20
SlotLayout = list[tuple[tuple[int, ...], str, int]]  # per spec: (item shape, dtype, byte offset)
SlotSpec = tuple[int, list[str], SlotLayout]  # items per slot, segment names, layout


def slot_layout(specs: Sequence[PreprocessSpec], batch: int) -> tuple[SlotLayout, int]:
    from replaybench.replay.preprocess import apply_preprocess

    layout: SlotLayout = []
    offset = 0
    for spec in specs:
        probe = apply_preprocess(np.zeros((8, 8, 3), np.uint8), spec)
        layout.append((probe.shape, probe.dtype.str, offset))
        offset += batch * probe.nbytes
        offset += (-offset) % 64  # keep every array 64-byte aligned
    return layout, max(offset, 1)


def views(buf: Any, layout: SlotLayout, batch: int) -> list[np.ndarray]:
    return [
        np.ndarray((batch, *shape), dtype=np.dtype(dt), buffer=buf, offset=off) for shape, dt, off in layout
    ]


def attach_slots(slots: SlotSpec) -> list[tuple[Any, list[np.ndarray]]]:
    from multiprocessing import shared_memory

    batch, names, layout = slots
    out = []
    for name in names:
        # Workers share the parent's resource tracker (forkserver/spawn pass it on), so attaching
        # registers the same name again (a no-op) and the parent's unlink settles it.
        shm = shared_memory.SharedMemory(name=name)
        out.append((shm, views(shm.buf, layout, batch)))
    return out


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
    ctx.set_forkserver_preload(
        ["__main__", __name__, "replaybench.replay.workers", *preload]
    )  # a module that is not installed is skipped
    return ctx


class DecodePool:
    """Decode worker processes and the shared-memory slots they write tensors into.

    Started before the model sessions open, so the workers' start-up (fork server, imports, the resize
    session) overlaps the main process's own: it was ~0.8 s before the first chunk, a fifth of a
    4,000-face run. ``run`` then streams chunks through it."""

    def __init__(
        self,
        config: DecodeConfig,
        n_workers: int,
        batch: int,
        streams: int,
    ) -> None:
        from multiprocessing import shared_memory

        self.batch, self.streams = batch, streams
        layout, slot_bytes = slot_layout(config.specs, batch)
        # Bounded: every worker can have a chunk queued behind the one it decodes while every stream
        # infers and one chunk waits to be written, within a memory budget.
        least = n_workers + streams + 1
        n_slots = max(least, min(least + n_workers, SLOT_BUDGET_BYTES // slot_bytes))
        self.shms = [shared_memory.SharedMemory(create=True, size=slot_bytes) for _ in range(n_slots)]
        self.views = [views(s.buf, layout, batch) for s in self.shms]
        slots: SlotSpec = (batch, [s.name for s in self.shms], layout)
        self.pool = ProcessPoolExecutor(
            n_workers, mp_context=_mp_context(), initializer=init_worker, initargs=(config, slots)
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

    def run(
        self,
        todo: Sequence[DatasetItem],
        infer: Callable[[list[DatasetItem], dict[str, Any]], Any],
        write: Callable[[list[DatasetItem], dict[str, Any], Any], None],
    ) -> None:
        """Decode chunks in the workers, run ``infer(chunk, res)`` on the decoded ones in ``streams`` threads
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
        pending = enumerate(chunks(todo, self.batch))
        more, next_write = True, 0
        infer_pool = ThreadPoolExecutor(self.streams, thread_name_prefix="replay-infer")
        try:
            while True:
                while more and free:
                    k, chunk = next(pending, (-1, []))
                    if k < 0:
                        more = False
                        break
                    slot = free.popleft()
                    decoding[k] = (chunk, slot, self.pool.submit(process_chunk, payload(chunk), slot))
                for k in [k for k, (_, _, fut) in decoding.items() if fut.done()]:
                    chunk, slot, fut = decoding.pop(k)
                    res = _decoded(fut)
                    n_ok = res["n_ok"]
                    res["tensors"] = [v[:n_ok] if n_ok else None for v in self.views[slot]]
                    inferring[k] = (chunk, slot, res, infer_pool.submit(infer, chunk, res))
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


def chunks(items: Sequence[DatasetItem], size: int) -> Iterator[list[DatasetItem]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def payload(chunk: Sequence[DatasetItem]) -> list[tuple[int, str | None]]:
    """What a decode worker gets for a chunk: each item's position and image path."""
    return [(i, str(it.path) if it.path is not None else None) for i, it in enumerate(chunk)]
