"""The Ray engine (``replay --ray ADDRESS``): the same stages as the local engine, on a Ray cluster.

::

    driver: chunks of items ──► Ray Data ──► decode tasks (workers.process_chunk: the same chunks and
                                             │             code as the local worker processes)
                                             ▼
                                    inference actors (one inference.ModelStage each: a session per
                                             │        bundle; a GPU each, with the CUDA provider, where
                                             │        the cluster has GPUs)
                                             ▼  the chunk's rows (rows.RowBuilder) as Arrow IPC
    driver ◄── streamed back as chunks finish ┘
       └──► the run's PartWriter (sink.py): the same parts, names, metadata and resume as a local run

The driver sends paths, never images or models: every node opens the bundles and reads the images
itself, so both must be on storage every node sees at the same path (NFS, a shared volume); a node that
does not see them stops the run with an error saying so. What travels between the stages is plain data
(JSON for items and statuses, raw tensor bytes, Arrow IPC for rows): nothing is unpickled from it.

Each chunk's rows come back whole and only the driver writes parts, so a part holds whole items and a
killed driver leaves whole parts that ``--resume`` continues from (Ray ends a dead driver's tasks and
actors).

On a cluster without GPUs there are no decode tasks: every actor decodes its own chunks and runs the
models on them, one actor per CPU with one onnxruntime thread (what Ray Data's own operator fusion does
with a task stage and an actor stage of equal resources). Measured on 2 cores (MobileNetV2 128 faces),
that ran 1.3-1.5x the rate of decode tasks feeding actors, which moves every tensor batch through the
object store and leaves a stage idle whenever the other has the work, and whose actors can hold every
CPU and starve the decode tasks. With GPUs the stages stay apart: decode tasks on the CPUs (at least half
of them), inference on the GPUs.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from replaybench.bundle import LoadedBundle, PreprocessSpec, file_sha256
from replaybench.errors import InputNotFoundError, ReplaybenchError, UsageError, missing_dependency
from replaybench.replay.items import DatasetItem
from replaybench.replay.pool import chunks as chunked
from replaybench.replay.pool import payload
from replaybench.replay.rows import RowBuilder
from replaybench.replay.workers import DecodeConfig

SHARED_STORAGE_HINT = (
    "bundles and the dataset must be on storage every Ray node sees at the same path "
    "(NFS or a shared volume mounted alike on every node)"
)
START_HINT = (
    "start a cluster with 'ray start --head' (and 'ray start --address=HEAD:6379' on the other nodes), "
    "or use --ray local for a cluster on this machine only"
)
# Chunks per Ray Data block (one task): Ray's cost per task (~25 ms on 2 loaded cores) is paid once per
# block; 4 chunks of 32 ran 1.4x the rate of one (MobileNetV2 128 faces), and blocks stay small enough
# that every actor gets several (the last ones finish together).
CHUNKS_PER_BLOCK = 4
BLOCKS_PER_ACTOR = 4


@dataclass(frozen=True)
class ModelConfig:
    """What an inference actor opens: the bundle folders (absolute, as the driver sees them), the model
    file each must hold (sha256, as in run.json) and the model stage's settings."""

    bundles: tuple[str, ...]
    model_sha256: tuple[str, ...]
    groups: tuple[int, ...]
    providers: tuple[str, ...] = ()  # empty: CUDA where the actor holds a GPU and onnxruntime has it
    threads: int = 1  # onnxruntime intra-op threads per session
    batch_size: int = 32
    variant: str | None = None

    @classmethod
    def of(
        cls,
        bundles: Sequence[LoadedBundle],
        groups: Sequence[int],
        *,
        providers: Sequence[str] = (),
        threads: int | None = None,
        batch_size: int = 32,
        variant: str | None = None,
    ) -> ModelConfig:
        return cls(
            bundles=tuple(str(lb.folder.absolute()) for lb in bundles),
            model_sha256=tuple(file_sha256(lb.runtime_paths[0]) for lb in bundles),
            groups=tuple(groups),
            providers=tuple(providers),
            threads=threads or 1,
            batch_size=batch_size,
            variant=variant,
        )


@dataclass(frozen=True)
class RayRun:
    """How a Ray run was laid out."""

    cpus: int  # the cluster's
    gpus: int
    actors: int
    decode_slots: int  # chunks decoding at once (in the actors themselves on a cluster without GPUs)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:  # the optional cluster extra: this is the one place that imports it
        raise missing_dependency("ray", extra="cluster") from e
    return ray


def _node() -> str:
    return socket.gethostname()


# ------------------------------------------------------------------------------------ what travels


def encode_items(chunk: Sequence[DatasetItem], rows: RowBuilder) -> str:
    """A chunk's items as JSON for the decode task and the actor: absolute image paths (a worker's
    working directory is not the driver's) and the labels already in their column kinds (bool, int,
    float, str or null, which JSON carries exactly)."""
    from replaybench.replay.sink import as_label

    labels = [(c.label_key or c.name, c.kind) for c in rows.schema.with_role("label")]
    return json.dumps(
        [
            [
                it.item_id,
                str(it.path.absolute()) if it.path is not None else None,
                {key: as_label(kind, it.labels.get(key)) for key, kind in labels},
                it.caption,
                it.post_id,
            ]
            for it in chunk
        ]
    )


def decode_items(doc: str) -> list[DatasetItem]:
    """The items ``encode_items`` wrote."""
    return [
        DatasetItem(item_id=i, path=Path(p) if p else None, labels=lab, caption=cap, post_id=pid)
        for i, p, lab, cap, pid in json.loads(doc)
    ]


# ------------------------------------------------------------------------------------- decode tasks

_TASK: dict[str, Any] = {}  # per Ray worker process: the run whose decode state (init_worker) it holds


def _init_decode(run_id: str, config: DecodeConfig, dataset: str) -> None:
    """``workers.init_worker`` once per process and run, after checking this node sees the dataset."""
    from replaybench.replay.workers import init_worker

    if _TASK.get("run") == run_id:
        return
    for what, path in (("the dataset", dataset), ("the face detector bundle", config.faces)):
        if path is not None and not Path(path).exists():
            raise InputNotFoundError(
                f"{what} {path} is not visible on Ray node {_node()}: {SHARED_STORAGE_HINT}"
            )
    init_worker(config)
    _TASK["run"] = run_id


def _decode(items: list[DatasetItem]) -> dict[str, Any]:
    from replaybench.replay.workers import process_chunk

    return process_chunk(payload(items))


def decode_chunk(row: dict[str, Any], *, run_id: str, config: DecodeConfig, dataset: str) -> dict[str, Any]:
    """A Ray Data task (clusters with GPUs): ``workers.process_chunk`` on one chunk. Out: the items,
    statuses/errors/faces (JSON) and one tensor batch per preprocess spec (raw bytes)."""
    _init_decode(run_id, config, dataset)
    res = _decode(decode_items(row["items"]))
    tensors: list[np.ndarray | None] = res["tensors"]
    meta = {
        "status": res["status"],
        "error": res["error"],
        "faces": res["faces"],
        "shapes": [None if t is None else list(t.shape) for t in tensors],
        "dtypes": [None if t is None else t.dtype.str for t in tensors],
    }
    out = {"items": row["items"], "meta": json.dumps(meta)}
    for g, t in enumerate(tensors):
        out[f"t{g}"] = b"" if t is None else np.ascontiguousarray(t).tobytes()
    return out


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """``process_chunk``'s result back from ``decode_chunk``'s row (the tensors are views of its bytes)."""
    meta = json.loads(row["meta"])
    tensors = [
        None if shape is None else np.frombuffer(row[f"t{g}"], dtype=np.dtype(dt)).reshape(shape)
        for g, (shape, dt) in enumerate(zip(meta["shapes"], meta["dtypes"], strict=True))
    ]
    faces = [None if f is None else tuple(f) for f in meta["faces"]]
    return {"status": meta["status"], "error": meta["error"], "faces": faces, "tensors": tensors}


# --------------------------------------------------------------------------------- inference actors


class InferenceActor:
    """A Ray Data actor: one ``ModelStage`` (a session per bundle) opened once; each call takes a chunk
    and returns its rows, every bundle's, as Arrow IPC. With ``decode`` (clusters without GPUs) it decodes
    the chunk itself; else the chunk comes decoded from ``decode_chunk``."""

    def __init__(
        self,
        model: ModelConfig,
        specs: tuple[PreprocessSpec, ...],
        rows: RowBuilder,
        decode: tuple[str, DecodeConfig, str] | None = None,
    ) -> None:
        self.rows, self.decodes = rows, decode is not None
        # An error here is raised by the first call instead: Ray reports a constructor's exception only as
        # text (ActorDiedError), a call's as the exception itself, which the driver re-raises typed.
        self.failure: ReplaybenchError | None = None
        try:
            self.models = self._open(model, specs, decode)
        except ReplaybenchError as e:
            self.failure = e

    @staticmethod
    def _open(
        model: ModelConfig, specs: tuple[PreprocessSpec, ...], decode: tuple[str, DecodeConfig, str] | None
    ) -> Any:
        from replaybench.bundle import load_bundle
        from replaybench.replay.inference import ModelStage

        bundles = []
        for folder, want in zip(model.bundles, model.model_sha256, strict=True):
            if not Path(folder).is_dir():
                raise InputNotFoundError(
                    f"bundle {folder} is not visible on Ray node {_node()}: {SHARED_STORAGE_HINT}"
                )
            lb = load_bundle(Path(folder))
            if (
                file_sha256(lb.runtime_paths[0]) != want
            ):  # the numbers must come from the model run.json names
                raise UsageError(
                    f"bundle {folder} on Ray node {_node()} holds another {lb.runtime_paths[0].name} than "
                    f"the driver's: {SHARED_STORAGE_HINT}"
                )
            bundles.append(lb)
        if decode is not None:
            _init_decode(*decode)
        return ModelStage(
            bundles,
            specs,
            model.groups,
            providers=model.providers or _default_providers(),
            threads=model.threads,
            spinning=False,  # decoding shares the cores
            batch_size=model.batch_size,
            variant=model.variant,
        )

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.failure is not None:
            raise self.failure
        items = decode_items(row["items"])
        res = _decode(items) if self.decodes else _decoded(row)
        frame = self.rows.frame(items, res, self.models.infer(items, res))
        buf = io.BytesIO()
        frame.write_ipc(buf)
        return {"status": json.dumps(res["status"]), "rows": buf.getvalue()}


def _default_providers() -> tuple[str, ...]:
    """CUDA (then CPU) in an actor that holds a GPU, where onnxruntime-gpu is installed; else CPU."""
    import ray

    if ray.get_gpu_ids():
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ("CUDAExecutionProvider", "CPUExecutionProvider")
        raise UsageError(
            f"Ray gave an inference actor a GPU on node {_node()}, but onnxruntime there has no CUDA provider",
            hint="install onnxruntime-gpu on the GPU nodes, or pass --providers CPU",
        )
    return ()


# ------------------------------------------------------------------------------------------- driver


def preflight(address: str) -> None:
    """Before a run writes anything: ray is installed, and a ``host:port`` address answers (a plain TCP
    connect: nothing is started or joined). ``ray://`` (Ray Client) is refused: Ray Data does not run
    through it (ray#42739)."""
    _import_ray()
    if address in ("local", "auto"):
        return
    if address.startswith("ray://"):
        raise UsageError(
            f"--ray {address}: Ray Data does not run through Ray Client (ray://), so replay cannot either",
            hint="run replay on a cluster node with --ray auto, from a machine that reaches every node with "
            "--ray HEAD:6379, or as a Ray job: ray job submit --address http://HEAD:8265 -- replaybench "
            "replay ... --ray auto",
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--ray {address!r}: give local, auto or HOST:PORT (the head's GCS address)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as e:
        raise UsageError(f"--ray {address}: nothing answers there ({e})", hint=START_HINT) from e


def connect(address: str) -> bool:
    """Connect this process to Ray at ``address`` (``local`` starts a cluster on this machine for the run,
    ``auto`` joins the one this node is in, ``HOST:PORT`` the head's GCS).
    Returns whether it connected now (False: it already was, and stays so)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(
            address=address,
            logging_level=logging.ERROR,  # replaybench's own output only; Ray's logs stay in its session dir
            log_to_driver=False,  # failures come back as exceptions
            **({"include_dashboard": False} if address == "local" else {}),
        )
    except (ConnectionError, RuntimeError) as e:
        raise UsageError(f"--ray {address}: cannot join the Ray cluster there ({e})", hint=START_HINT) from e
    return True


def layout(cpus: int, gpus: int, actors: int | None) -> tuple[int, dict[str, Any]]:
    """(inference actors, each one's Ray resources).

    With GPUs: one actor per GPU (``actors`` share them evenly), with at most half the CPUs between them
    so that decode tasks always have CPUs. Without: one actor per CPU, each decoding its own chunks (see
    the module notes)."""
    if gpus:
        n = actors or gpus
        return n, {"num_gpus": gpus / n, "num_cpus": min(1.0, cpus / (2 * n))}
    n = actors or max(1, cpus)
    return n, {"num_cpus": max(cpus, 1) / n}


def run(
    address: str,
    todo: Sequence[DatasetItem],
    *,
    dataset: Path,
    decode: DecodeConfig,
    model: ModelConfig,
    rows: RowBuilder,
    batch_size: int,
    add: Callable[[Any, list[str]], None],
    actors: int | None = None,
) -> RayRun:
    """Run ``todo`` through decode tasks and inference actors on the Ray cluster at ``address``, in the
    same chunks of ``batch_size`` items as the local engine; hand each chunk's rows (a polars DataFrame of
    all rows of its items) and its item statuses to ``add`` in the driver, as chunks finish."""
    import polars as pl

    ray = _import_ray()
    started = connect(address)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # replaybench draws its own
        ctx.execution_options.preserve_order = False  # parts hold whole items, in any order
        ctx.raise_original_map_exception = True  # a replaybench error comes back as itself (_stream)
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its failures come back raised (_stream)
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        n_actors, actor_res = layout(cpus, gpus, actors)
        info = RayRun(
            cpus=cpus, gpus=gpus, actors=n_actors, decode_slots=max(0, cpus - n_actors) if gpus else n_actors
        )
        chunks = list(chunked(todo, batch_size))  # the local engine's chunks
        if not chunks:
            return info
        per_block = max(1, min(CHUNKS_PER_BLOCK, len(chunks) // (BLOCKS_PER_ACTOR * n_actors)))
        ds = ray.data.from_items(
            [{"items": encode_items(c, rows)} for c in chunks],
            override_num_blocks=-(-len(chunks) // per_block),
        )
        if decode.faces is not None:  # opened on the nodes: a path relative to the driver's means nothing
            decode = replace(decode, faces=decode.faces.absolute())
        decoding = (uuid.uuid4().hex, decode, str(Path(dataset).absolute()))
        if gpus:  # decode tasks on the CPUs feed the GPU actors
            run_id, config, root = decoding
            ds = ds.map(
                decode_chunk, fn_kwargs={"run_id": run_id, "config": config, "dataset": root}, num_cpus=1
            )
        with warnings.catch_warnings():  # the deprecation of max_restarts' way in (_no_restarts)
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map(
                InferenceActor,
                fn_constructor_kwargs={
                    "model": model,
                    "specs": decode.specs,
                    "rows": rows,
                    "decode": None if gpus else decoding,
                },
                compute=ray.data.ActorPoolStrategy(size=n_actors),
                **actor_res,
                **_no_restarts(ds.map),
            )
        for out in _stream(ds):
            add(pl.read_ipc(io.BytesIO(out["rows"])), json.loads(out["status"]))
        return info
    finally:
        if started:
            ray.shutdown()


def _no_restarts(method: Any) -> dict[str, Any]:
    """``max_restarts=0`` where Ray Data still takes free-form remote args (deprecated in Ray 2.60, gone in
    2.64). A dead actor then fails the run, which ``--resume`` continues, instead of a restart that Ray
    cannot always do for Ray Data's actors (their constructor arguments sit in the object store,
    ray#53727) and warns about on stderr for every actor it starts."""
    import inspect

    if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(method).parameters.values()):
        return {}
    return {"max_restarts": 0}


def _stream(ds: Any) -> Iterator[dict[str, Any]]:
    """The dataset's rows as they finish. A task or actor failure that is a replaybench error (a bundle or
    the dataset not visible on a node) comes out as that error; any other as a ReplaybenchError."""
    from ray.exceptions import RayError

    it = iter(ds.iter_rows())
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except RayError as e:
            cause = _replaybench_cause(e)
            if cause is not None:
                raise cause from e
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ReplaybenchError(
                f"the Ray job failed ({first}); the predictions written so far are kept",
                hint="re-run with --resume; task and actor logs are in the Ray session folder on each node "
                "(/tmp/ray/session_latest/logs)",
            ) from e
        yield row


def _replaybench_cause(e: BaseException) -> ReplaybenchError | None:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        cause = getattr(cur, "cause", None)  # a RayTaskError: the exception the task raised
        if isinstance(cause, ReplaybenchError):
            return cause
        if isinstance(cur, ReplaybenchError):
            return cur
        cur = cause or cur.__cause__ or cur.__context__
    return None
