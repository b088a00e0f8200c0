"""onnxruntime sessions for replay: batched, with fixed-batch-1 models made batchable where possible.

Most converted mobile models have a fixed input shape ``[1, H, W, C]``. Running them one image at a time
costs a session call per image; instead ``open_model`` rewrites the batch dimension of the graph inputs
and outputs to a symbolic ``N`` and *verifies* the rewrite: a batch of two different inputs must give the
same outputs as two single runs. Graphs that bake the batch size into a constant (a ``Reshape`` to
``[1, -1]``) fail the check and fall back to looping over the batch with one session call per item.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from replaybench.errors import CorruptInputError, UsageError

log = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def _ort() -> Any:
    import onnxruntime as ort

    return ort


_OPT_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def session_options(threads: int | None, optimization: str | None = None, spinning: bool = True) -> Any:
    """Session options tuned for throughput: sequential execution, N threads, and the graph optimisation
    level the bundle's parity was measured with (``parity.onnxruntime_optimization``; default all)."""
    ort = _ort()
    so = ort.SessionOptions()
    level = _OPT_LEVELS.get(optimization or "all")
    if level is None:
        raise UsageError(
            f"unknown onnxruntime optimisation level {optimization!r}; known: {', '.join(_OPT_LEVELS)}"
        )
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads if threads else (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    if not spinning:
        # Idle intra-op threads busy-wait for the next call by default: with decode workers on the same
        # cores that steals their CPU time.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # old exporters list initializers as inputs: ORT warns once per tensor
    return so


def resolve_providers(providers: list[str] | None) -> list[str]:
    """Check the requested execution providers exist here; default: CPU."""
    ort = _ort()
    available = ort.get_available_providers()
    if not providers:
        return ["CPUExecutionProvider"]
    out = []
    for p in providers:
        name = p if p.endswith("ExecutionProvider") else f"{p.upper() if len(p) <= 4 else p}ExecutionProvider"
        if name not in available:
            raise UsageError(
                f"execution provider {p!r} is not available here; available: {', '.join(available)}",
                hint="CUDA needs onnxruntime-gpu instead of onnxruntime",
            )
        out.append(name)
    return out


@dataclass
class ModelSession:
    """A session plus how to feed it: the input name/dtype and whether batches run in one call."""

    session: Any
    input_name: str
    input_dtype: Any
    input_shape: list[Any]
    output_names: list[str]
    output_sizes: dict[str, int]
    batch_mode: Literal["dynamic", "made_dynamic", "loop"]
    notes: list[str] = field(default_factory=list)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch (leading axis = items); returns output name -> array with the same leading axis.
        Thread-safe (``Run`` is, and releases the GIL): the runner runs several chunks at once."""
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        if self.batch_mode != "loop":
            outs = self.session.run(self.output_names, {self.input_name: batch})
            return dict(zip(self.output_names, outs, strict=True))
        parts = [
            self.session.run(self.output_names, {self.input_name: batch[i : i + 1]})
            for i in range(len(batch))
        ]
        return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(self.output_names)}


def _sample_inputs(shape: list[int], dtype: Any, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=(n, *shape[1:])).astype(dtype)
    return rng.random((n, *shape[1:]), dtype=np.float32).astype(dtype)


def _make_batch_dynamic(model_path: Path) -> bytes | None:
    """The model with dim 0 of every input/output set to ``N``, or None when it is not a fixed 1."""
    import onnx

    model = onnx.load(str(model_path))
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    changed = False
    for vi in [*inputs, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "N"
            changed = True
    if not changed:
        return None
    # Intermediate shapes recorded by the converter still say 1; drop them, ORT re-infers.
    del model.graph.value_info[:]
    return model.SerializeToString()


def _verify_batching(session: Any, input_name: str, shape: list[int], dtype: Any, outputs: list[str]) -> bool:
    x = _sample_inputs(shape, dtype, 2)
    try:
        batched = session.run(outputs, {input_name: x})
        singles = [session.run(outputs, {input_name: x[i : i + 1]}) for i in range(2)]
    except Exception as e:  # any ORT failure means "cannot batch"; the caller falls back to a loop
        log.debug("batched run failed: %s", e)
        return False
    for k in range(len(outputs)):
        ref = np.concatenate([s[k] for s in singles])
        if batched[k].shape != ref.shape or not np.allclose(batched[k], ref, rtol=1e-4, atol=1e-5):
            return False
    return True


def open_model(
    model_path: Path,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    optimization: str | None = None,
    spinning: bool = True,
) -> ModelSession:
    """Open a bundle's ``model.onnx`` for batched replay (see the module docstring).

    ``optimization``: the onnxruntime graph optimisation level (``disabled`` for quantised models whose
    parity held only without fusions, as recorded by convert in ``parity.onnxruntime_optimization``).
    """
    ort = _ort()
    so = session_options(threads, optimization, spinning)
    prov = resolve_providers(providers)
    try:
        sess = ort.InferenceSession(str(model_path), sess_options=so, providers=prov)
    except Exception as e:
        raise CorruptInputError(f"onnxruntime cannot load {model_path}: {e}") from e
    ins = sess.get_inputs()
    if len(ins) != 1:
        raise UsageError(
            f"{model_path} has {len(ins)} inputs ({', '.join(i.name for i in ins)}); replay feeds one image input"
        )
    inp = ins[0]
    dtype = _ORT_DTYPES.get(inp.type)
    if dtype is None:
        raise UsageError(f"{model_path}: unsupported input type {inp.type}")
    shape = list(inp.shape)
    outputs = [o.name for o in sess.get_outputs()]
    concrete = [d if isinstance(d, int) else 1 for d in shape]
    probe = sess.run(outputs, {inp.name: _sample_inputs(concrete, dtype, 1)})
    sizes = {name: int(np.prod(a.shape[1:])) for name, a in zip(outputs, probe, strict=True)}
    notes: list[str] = []
    if not isinstance(shape[0], int):
        if _verify_batching(sess, inp.name, concrete, dtype, outputs):
            return ModelSession(sess, inp.name, dtype, shape, outputs, sizes, "dynamic")
        notes.append("declared a dynamic batch but batched outputs differ from single runs: looping")
        return ModelSession(sess, inp.name, dtype, shape, outputs, sizes, "loop", notes)
    rewritten = _make_batch_dynamic(model_path) if shape[0] == 1 else None
    if rewritten is not None:
        try:
            quiet = session_options(threads, optimization, spinning)
            quiet.log_severity_level = 4  # the verification run may fail by design; say it in notes instead
            dyn = ort.InferenceSession(rewritten, sess_options=quiet, providers=prov)
            if _verify_batching(dyn, inp.name, concrete, dtype, outputs):
                notes.append("fixed batch 1 rewritten to a dynamic batch (verified against single runs)")
                return ModelSession(dyn, inp.name, dtype, shape, outputs, sizes, "made_dynamic", notes)
        except Exception as e:  # the rewritten graph may not load (a shape baked into a constant)
            log.debug("dynamic-batch rewrite rejected: %s", e)
        notes.append("fixed batch 1 cannot be made dynamic (batch baked into the graph): looping")
    return ModelSession(sess, inp.name, dtype, shape, outputs, sizes, "loop", notes)
