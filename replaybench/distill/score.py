"""Bulk scoring of posts with a student bundle: parallel decode, length-bucketed text batches, onnxruntime.

The pipeline: worker processes decode JPEGs at reduced scale (a bounded number of decode jobs in flight,
so memory stays flat on a million posts) while the main process runs the image graph on fixed-size batches
and the text graph on captions sorted by token length and padded only to the longest caption of each batch
(padding everything to 128 tokens costs ~4x on real caption lengths).

Output: ``part-NNNNN.parquet`` files (post_id, item_id, score, bucket, status, error), each written to a
temporary name and renamed, so a part is either whole or absent. ``--resume`` reads the item ids of the
parts present and scores only the rest: a run killed with ``kill -9`` resumes with no duplicate and no lost
row. A missing or corrupt image is an ``error`` row; an empty caption is scored.

This is the student's own runner; it can be swapped for replay's runner (same decode function, same part
format) once that lands.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from replaybench._console import NullProgress, Progress
from replaybench.errors import CorruptInputError, InputNotFoundError, UsageError
from replaybench.replay.items import DatasetItem

PART_GLOB = "part-*.parquet"
SUMMARY_JSON = "summary.json"
_DECODE_JOB = 16  # images per decode job sent to a worker
TOKENS_PER_ROW = 8  # text batch budget: batch_size x this many padded tokens (swept 8-64: 8 best)
MAX_ROWS_FACTOR = 4  # at most this many x batch_size short captions in one text batch


class ScoreResult(BaseModel):
    """What ``score_posts`` did, and the score distribution over every row written so far."""

    model_config = ConfigDict(extra="forbid")

    output: str
    variant: str  # fp32 | int8
    items: int
    already_done: int
    scored_now: int
    errors_now: int
    parts: int
    seconds: float
    items_per_s: float
    summary: dict[str, Any]


def _decode_job(paths: Sequence[str | None]) -> list[tuple[np.ndarray | None, str | None]]:
    from replaybench.distill.images import try_decode

    return [try_decode(Path(p) if p else None) for p in paths]


class TextBatcher:
    """Tokenises captions with the bundle's tokenizer and yields length-sorted, dynamically padded batches."""

    def __init__(self, tokenizer_json: Path, max_length: int, pad_id: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.tok.enable_truncation(max_length)
        self.tok.no_padding()
        self.pad_id = pad_id

    def encode(self, captions: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(captions))]

    def batches(
        self, ids: list[list[int]], batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(positions, input_ids, attention_mask) per batch, shortest captions first.

        Batches are cut by a token budget (``batch_size`` x ``TOKENS_PER_ROW`` padded tokens), not a row
        count: real caption lengths are heavy-tailed (Instagram: median 8 tokens, a few at 128), and a
        fixed 32 rows pads the tail batch's short captions to the longest one. Short captions go in
        wider batches (up to ``MAX_ROWS_FACTOR`` x ``batch_size`` rows), long ones in narrower ones.
        """
        lengths = np.array([max(1, len(x)) for x in ids], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        budget = batch_size * TOKENS_PER_ROW
        max_rows = batch_size * MAX_ROWS_FACTOR
        s = 0
        while s < len(order):
            e = s + 1
            # sorted ascending: the width of [s, e] is the length of its last row
            while e < len(order) and e - s < max_rows and (e + 1 - s) * lengths[order[e]] <= budget:
                e += 1
            pos = order[s:e]
            width = int(lengths[order[e - 1]])
            input_ids = np.full((len(pos), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(pos), width), dtype=np.int64)
            for r, i in enumerate(pos):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            yield pos, input_ids, mask
            s = e


class StudentRunner:
    """The bundle's two graphs in onnxruntime plus its tokenizer: images + captions -> scores."""

    def __init__(self, bundle_dir: Path, *, int8: bool = False, threads: int | None = None) -> None:
        import onnxruntime as ort

        from replaybench.bundle import load_bundle

        loaded = load_bundle(bundle_dir)
        b = loaded.bundle
        parts = {p.role: p for p in b.parts}
        if b.text is None or "image_encoder" not in parts or "text_head" not in parts:
            raise CorruptInputError(
                f"{bundle_dir} is not a student bundle (no text preprocessing or split graphs)",
                hint="make one with: replaybench distill export STUDENT -o BUNDLE",
            )
        files = []
        for role in ("image_encoder", "text_head"):
            name = parts[role].file_int8 if int8 else parts[role].file
            if name is None:
                raise UsageError(f"{bundle_dir} has no int8 variant; export it without --no-int8")
            if not (bundle_dir / name).is_file():
                raise CorruptInputError(f"student bundle {bundle_dir} lacks {name}")
            files.append(bundle_dir / name)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads or os.cpu_count() or 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spin-waiting: on a few cores the decode workers need the cycles an idle ORT thread would burn.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.image = ort.InferenceSession(str(files[0]), so, providers=["CPUExecutionProvider"])
        self.text = ort.InferenceSession(str(files[1]), so, providers=["CPUExecutionProvider"])
        tok = bundle_dir / b.text.tokenizer / "tokenizer.json"
        if not tok.is_file():
            raise CorruptInputError(f"student bundle {bundle_dir} lacks {tok.relative_to(bundle_dir)}")
        self.batcher = TextBatcher(tok, b.text.max_length, b.text.pad_id)

    def image_embeddings(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        out = [
            self.image.run(None, {"image": images[s : s + batch_size]})[0]
            for s in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, 512), np.float32)

    def scores(self, embeddings: np.ndarray, captions: Sequence[str], batch_size: int) -> np.ndarray:
        ids = self.batcher.encode(captions)
        scores = np.zeros(len(captions), dtype=np.float32)
        for pos, input_ids, mask in self.batcher.batches(ids, batch_size):
            feed = {"input_ids": input_ids, "attention_mask": mask, "image_embedding": embeddings[pos]}
            scores[pos] = self.text.run(None, feed)[0]
        return scores

    def score(self, images: np.ndarray, captions: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Scores for uint8 NCHW images and their captions."""
        return self.scores(self.image_embeddings(images, batch_size), captions, batch_size)


def done_item_ids(output: Path) -> set[str]:
    """Item ids already written in whole parts (leftover temporary files of a killed run are removed)."""
    import polars as pl

    for tmp in output.glob("*.parquet.tmp"):
        tmp.unlink()
    done: set[str] = set()
    for part in sorted(output.glob(PART_GLOB)):
        try:
            done.update(pl.read_parquet(part, columns=["item_id"])["item_id"].to_list())
        except Exception as e:
            raise CorruptInputError(f"score part {part} is unreadable: {e}") from e
    return done


def score_posts(
    bundle_dir: Path,
    posts_path: Path,
    output: Path,
    *,
    int8: bool = False,
    resume: bool = False,
    batch_size: int = 32,
    chunk_size: int = 512,
    workers: int | None = None,
    threads: int | None = None,
    items: Sequence[DatasetItem] | None = None,
    progress: Progress | None = None,
    allow_outside: bool = False,
) -> ScoreResult:
    """Score every image of a posts dataset with a student bundle; Parquet parts in ``output``.

    Example: ``score_posts(Path("student-bundle"), Path("posts"), Path("scores"), int8=True)``.
    ``items`` (already read posts) skips reading ``posts_path``.
    """
    import multiprocessing as mp

    from replaybench.replay.posts import read_posts

    t0 = time.perf_counter()
    if not bundle_dir.is_dir():
        raise InputNotFoundError(f"student bundle not found: {bundle_dir}")
    if batch_size < 1 or chunk_size < 1:
        raise UsageError("--batch-size and the part size must be positive")
    progress = progress or NullProgress()
    runner = StudentRunner(bundle_dir, int8=int8, threads=threads)
    all_items = list(items) if items is not None else read_posts(posts_path, allow_outside=allow_outside)
    output.mkdir(parents=True, exist_ok=True)
    existing = list(output.glob(PART_GLOB))
    if existing and not resume:
        raise UsageError(
            f"{output} already holds {len(existing)} score parts",
            hint="add --resume to continue that run, or choose a new output folder",
        )
    done = done_item_ids(output) if resume else set()
    todo = [it for it in all_items if it.item_id not in done]
    next_part = 1 + max((int(p.stem.split("-")[1]) for p in existing), default=-1)
    scored = errors = 0
    progress.start(len(todo), "scoring posts")
    n_workers = workers or max(1, (os.cpu_count() or 1))
    ctx = mp.get_context("spawn")  # never fork a process holding onnxruntime / polars thread pools
    with ctx.Pool(n_workers) as pool:
        jobs = [todo[s : s + _DECODE_JOB] for s in range(0, len(todo), _DECODE_JOB)]
        pending: deque[tuple[list[DatasetItem], Any]] = deque()
        job_iter = iter(jobs)

        def submit() -> None:
            job = next(job_iter, None)
            if job is not None:
                pending.append(
                    (job, pool.apply_async(_decode_job, ([str(i.path) if i.path else None for i in job],)))
                )

        for _ in range(4 * n_workers):  # bounded prefetch: decode stays ahead, memory stays flat
            submit()
        chunk = _Chunk(runner, batch_size)
        while pending:
            job, res = pending.popleft()
            submit()
            # Images go through the image graph a batch at a time as they arrive, so the workers decode
            # the next jobs while the main process infers: both cores stay busy without a decode stall
            # at the start of every part.
            for it, (arr, err) in zip(job, res.get(), strict=True):
                chunk.add(it, arr, err)
            if len(chunk.items) >= chunk_size or not pending:
                n_err = chunk.write(output / f"part-{next_part:05d}.parquet")
                next_part += 1
                scored += len(chunk.items) - n_err
                errors += n_err
                progress.advance(len(chunk.items))
                chunk = _Chunk(runner, batch_size)
    progress.close()
    summary = summarize(output)
    (output / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - t0
    return ScoreResult(
        output=str(output),
        variant="int8" if int8 else "fp32",
        items=len(all_items),
        already_done=len(all_items) - len(todo),
        scored_now=scored,
        errors_now=errors,
        parts=len(list(output.glob(PART_GLOB))),
        seconds=seconds,
        items_per_s=(scored + errors) / seconds if seconds > 0 else 0.0,
        summary=summary,
    )


class _Chunk:
    """One output part being filled: image embeddings computed batch by batch as decoded images arrive,
    the text graph run once over the whole part (length-sorted batches), then one Parquet write."""

    def __init__(self, runner: StudentRunner, batch_size: int) -> None:
        self.runner = runner
        self.batch_size = batch_size
        self.items: list[DatasetItem] = []
        self.errors: list[str | None] = []
        self.ok: list[int] = []  # positions in items with a decoded image, in embedding order
        self.embeddings: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []

    def add(self, item: DatasetItem, image: np.ndarray | None, error: str | None) -> None:
        if image is not None:
            self.ok.append(len(self.items))
            self._pending.append(image)
            if len(self._pending) >= self.batch_size:
                self._flush_images()
        self.items.append(item)
        self.errors.append(error)

    def _flush_images(self) -> None:
        if self._pending:
            self.embeddings.append(self.runner.image_embeddings(np.stack(self._pending), self.batch_size))
            self._pending = []

    def write(self, part: Path) -> int:
        """Score the part, write it atomically; returns the number of error rows."""
        import polars as pl

        from replaybench.distill.metrics import bucket_of

        self._flush_images()
        scores = np.zeros(0, dtype=np.float32)
        if self.ok:
            captions = [self.items[i].caption or "" for i in self.ok]
            scores = self.runner.scores(np.concatenate(self.embeddings), captions, self.batch_size)
        by_pos = dict(zip(self.ok, scores.tolist(), strict=True))
        rows = []
        for i, (it, err) in enumerate(zip(self.items, self.errors, strict=True)):
            s = by_pos.get(i)
            rows.append(
                {
                    "post_id": it.post_id or it.item_id,
                    "item_id": it.item_id,
                    "score": s,
                    "bucket": bucket_of(s) if s is not None else None,
                    "status": "ok" if s is not None else "error",
                    "error": None if s is not None else err,
                }
            )
        schema = {
            "post_id": pl.String,
            "item_id": pl.String,
            "score": pl.Float32,
            "bucket": pl.String,
            "status": pl.String,
            "error": pl.String,
        }
        tmp = part.with_name(part.name + ".tmp")
        pl.DataFrame(rows, schema=schema).write_parquet(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(part)  # atomic: a part is whole or absent
        return len(self.items) - len(self.ok)


def summarize(output: Path) -> dict[str, Any]:
    """Score distribution over every part: counts and shares per bucket, mean, quantiles, errors."""
    import polars as pl

    from replaybench.distill.metrics import BUCKETS

    parts = sorted(output.glob(PART_GLOB))
    if not parts:
        return {"items": 0, "ok": 0, "errors": 0, "buckets": {b: {"count": 0, "share": 0.0} for b in BUCKETS}}
    df = pl.concat([pl.read_parquet(p) for p in parts])
    ok = df.filter(pl.col("status") == "ok")
    n_ok = ok.height
    counts = {b: int(ok.filter(pl.col("bucket") == b).height) for b in BUCKETS}
    s = ok["score"].to_numpy().astype(np.float64) if n_ok else np.zeros(0)
    return {
        "items": df.height,
        "unique_items": df["item_id"].n_unique(),
        "posts": df["post_id"].n_unique(),
        "ok": n_ok,
        "errors": df.height - n_ok,
        "buckets": {b: {"count": c, "share": c / n_ok if n_ok else 0.0} for b, c in counts.items()},
        "mean": float(s.mean()) if n_ok else None,
        "std": float(s.std()) if n_ok else None,
        "quantiles": {q: float(np.quantile(s, float(q))) for q in ("0.1", "0.5", "0.9")} if n_ok else {},
    }
