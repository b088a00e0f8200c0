"""Replay: every bundle over a dataset, as predictions Parquet parts (the predictions contract).

::

    dataset ──► items (select, --resume skips the items already in whole parts)
        ──chunks──► decode stage (workers.py: decode, faces, preprocess once per distinct PreprocessSpec)
        ──► model stage (inference.py: one session per bundle, batched)
        ──► row stage (rows.py: one row per item and bundle) ──► Parquet parts, atomic (sink.py) ──► PREDS/

This module holds what a run is (options, admission, run.json, resume, the result); the engine that
moves chunks through the stages is the local one (pool.py: worker processes, shared-memory slots,
stream threads). Chunks are written in order, so parts hold whole items and ``--resume`` can skip exactly
the items already written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from replaybench._console import NullProgress, Progress
from replaybench.bundle import LoadedBundle, PreprocessSpec, file_sha256, load_bundle
from replaybench.errors import UsageError
from replaybench.replay.admission import check_bundle_admissible
from replaybench.replay.items import DatasetItem
from replaybench.replay.preprocess import ResizeBackend

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
    variant: str | None = None  # a quantised variant of the bundles' graphs (the student's "int8")
    # the engine: None runs here (pool.py); a Ray address runs on that cluster (ray_engine.py): "local"
    # (a cluster started for this run), "auto" or "host:port" (the head's GCS)
    ray: str | None = None
    ray_actors: int | None = None  # inference actors (default: one per GPU, else one per CPU)


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
        "model_sha256": file_sha256(lb.runtime_paths[0]),
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
    from replaybench.replay.datasets import ReadOptions, read_dataset
    from replaybench.replay.inference import ModelStage, inference_threads
    from replaybench.replay.pool import DecodePool, chunks, payload
    from replaybench.replay.rows import RowBuilder
    from replaybench.replay.sink import PartWriter, check_or_write_manifest, done_item_ids
    from replaybench.replay.text_models import by_caption_length, check_variant, is_image_text
    from replaybench.replay.workers import DecodeConfig, init_worker, process_chunk

    opts = options or ReplayOptions()
    progress = progress or NullProgress()
    if not bundle_paths:
        raise UsageError("give at least one bundle before the dataset")
    if opts.one_face and opts.faces is None:
        raise UsageError("--one-face needs --faces DETECTOR_BUNDLE")
    if opts.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if opts.ray is not None:  # before run.json: a missing ray or a wrong address leaves no run folder
        from replaybench.replay import ray_engine

        ray_engine.preflight(opts.ray)
    bundles = [load_bundle(Path(p)) for p in bundle_paths]
    admitted = [
        check_bundle_admissible(
            lb.bundle, allow_unfaithful=opts.allow_unfaithful, accept_unresolved=opts.accept_unresolved
        )
        for lb in bundles
    ]
    for lb in bundles:  # before run.json: a refused variant leaves no run folder behind
        check_variant(lb, opts.variant)
    names = [lb.bundle.name for lb in bundles]
    if len(set(names)) != len(names):
        raise UsageError(f"two bundles share a name ({', '.join(names)}); rows are keyed by bundle name")
    specs, groups = _group_specs(bundles)
    if opts.faces is not None and any(s.jpeg_draft for s in specs):
        raise UsageError(
            "--faces crops each face from the full-resolution image, but a bundle's preprocessing "
            "decodes JPEGs at reduced scale (jpeg_draft): replay it without --faces"
        )
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
            # only when set: run.json of runs without it stay resumable
            **({"variant": opts.variant} if opts.variant else {}),
        },
    }
    check_or_write_manifest(output, manifest, opts.resume)
    done = done_item_ids(output) if opts.resume else set()
    todo = [it for it in selected if it.item_id not in done]
    if any(is_image_text(lb) for lb in bundles):
        todo = by_caption_length(todo)  # chunks of similar caption lengths: less padding in the text graph

    n_workers = (os.cpu_count() or 1) if opts.workers is None else max(0, opts.workers)
    threads, streams = inference_threads(opts.threads, n_workers)
    config = DecodeConfig(
        specs=tuple(specs),
        faces=opts.faces,
        face_margin=opts.face_margin,
        one_face=opts.one_face,
        fast_decode=opts.fast_decode,
        resize_backend=opts.resize_backend,
        simplejpeg=opts.simplejpeg,
    )
    # started before the sessions open: worker start-up overlaps the main process's (see DecodePool)
    local = opts.ray is None
    pool = DecodePool(config, n_workers, opts.batch_size, streams) if local and n_workers and todo else None
    try:
        models = ModelStage(
            bundles,
            specs,
            groups,
            # with --ray the driver's sessions only give the schema: the actors run on the providers
            providers=opts.providers if local else (),
            threads=threads,
            spinning=n_workers == 0,
            batch_size=opts.batch_size,
            variant=opts.variant,
        )
        rows = RowBuilder(names, items, models.columns, faces=opts.faces is not None)
        writer = PartWriter(
            output, max(opts.part_rows, len(bundles)), rows.schema, metadata=_parts_metadata(bundles, opts)
        )
        counts = {"ok": 0, "error": 0, "skipped": 0}

        def add(frame: Any, status: list[str]) -> None:
            """A chunk's rows (all its items, every bundle) into the parts, as the engines finish them."""
            for st in status:
                counts[st] += 1
            writer.add(frame)
            progress.advance(len(status))

        def write(
            chunk: list[DatasetItem], res: dict[str, Any], per_bundle: list[dict[str, Any] | None]
        ) -> None:
            add(rows.frame(chunk, res, per_bundle), res["status"])

        progress.start(len(todo), f"replay {len(todo)} items x {len(bundles)} bundle(s)")
        t_run = time.perf_counter()
        try:
            if opts.ray is not None:  # the Ray actors build the rows
                cluster = ray_engine.run(
                    opts.ray,
                    todo,
                    dataset=dataset,
                    decode=config,
                    model=ray_engine.ModelConfig.of(
                        bundles,
                        groups,
                        providers=opts.providers,
                        threads=opts.threads,
                        batch_size=opts.batch_size,
                        variant=opts.variant,
                    ),
                    rows=rows,
                    batch_size=opts.batch_size,
                    add=add,
                    actors=opts.ray_actors,
                )
                n_workers = cluster.decode_slots
            elif n_workers == 0:
                init_worker(config)
                for chunk in chunks(todo, opts.batch_size):
                    res = process_chunk(payload(chunk))
                    write(chunk, res, models.infer(chunk, res))
            elif pool is not None:
                pool.run(todo, models.infer, write)
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
        rows_written=sum(counts.values()) * len(bundles),
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
            for lb, ms, g, accepted in zip(bundles, models.sessions, groups, admitted, strict=True)
        ],
        preprocess_groups=len(specs),
        workers=n_workers,
        seconds=round(seconds, 3),
        setup_seconds=round(setup_seconds, 3),
        items_per_second=round(len(todo) / seconds, 2) if seconds > 0 else 0.0,
        steady_items_per_second=round(len(todo) / (t_end - t_run), 2) if t_end > t_run else 0.0,
    )
