"""The replay runtimes: one registry of the engines a bundle's model can run in on the host.

``onnxruntime`` runs a converted ``model.onnx``. Where no faithful ONNX route exists (no converter, or
parity against the original failed) the bundle names the app's own engine instead and keeps the original
files: ``tflite`` (ai-edge-litert, custom ops it knows included), ``ncnn`` (``.param`` + ``.bin``), ``mnn``
and ``pytorch_lite`` (torch's lite interpreter for ``.ptl``, XNNPACK-prepacked ops included). Then the
reference runtime *is* the replay runtime: nothing was converted, so there is nothing to disagree.

Every runtime opens into the same :class:`~replaybench.replay.sessions.ModelSession` that replay's
inference streams, ``inspect`` and ``doctor`` use: a native engine is wrapped in an adapter with
onnxruntime's ``run(output_names, feed)`` call shape, fed one item at a time (``batch_mode="loop"``).
Adapters are safe to call from several streams at once: engines whose interpreters are not re-entrant
(TFLite, MNN) get one interpreter per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from replaybench.bundle import QuantParams
from replaybench.errors import CorruptInputError, MissingDependencyError, UsageError, missing_dependency

if TYPE_CHECKING:
    from replaybench.bundle import LoadedBundle
    from replaybench.replay.sessions import ModelSession


@dataclass(frozen=True)
class Runtime:
    """One engine replay can run: what it opens, the Python module it needs and how to install it."""

    name: str
    formats: tuple[str, ...]  # detector keys of the model files it opens
    module: str  # the import that must work (``doctor`` checks it)
    package: str  # pip distribution that provides it
    describe: str
    open_engine: Callable[[Sequence[Path], int | None], Any] | None = None  # None: onnxruntime (sessions.py)


_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> Runtime:
    if runtime.name in _RUNTIMES:
        raise ValueError(f"runtime {runtime.name!r} is already registered")
    _RUNTIMES[runtime.name] = runtime
    return runtime


def get_runtime(name: str) -> Runtime:
    try:
        return _RUNTIMES[name]
    except KeyError:
        raise UsageError(f"unknown runtime {name!r}; known: {', '.join(_RUNTIMES)}") from None


def runtimes() -> list[Runtime]:
    return list(_RUNTIMES.values())


def native_runtime_for(fmt: str) -> Runtime | None:
    """The app's own engine that opens models of detector key ``fmt`` on the host, if there is one."""
    return next((r for r in _RUNTIMES.values() if r.open_engine is not None and fmt in r.formats), None)


def runtime_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(get_runtime(name).package)
    except PackageNotFoundError:
        return None


def _import(runtime: str) -> Any:
    import importlib

    rt = get_runtime(runtime)
    try:
        return importlib.import_module(rt.module)
    except ImportError as e:
        raise missing_dependency(rt.module, package=rt.package) from e


# --- engine adapters: run(output_names, {input_name: array with a leading batch axis of 1}) ---------


class _PerThread:
    """One engine instance per calling thread, made by ``make`` (interpreters that are not re-entrant)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._local = threading.local()
        self.first = make()  # opened now, so a bad file fails at open, not in a stream
        self._local.engine = self.first

    def get(self) -> Any:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine = self._local.engine = self._make()
        return engine


class NcnnEngine:
    """An NCNN ``Net`` from a ``.param`` (text or binary) and its ``.bin``; extractors are per call."""

    def __init__(self, files: Sequence[Path], threads: int | None) -> None:
        ncnn = _import("ncnn")
        param, weights = ncnn_pair(files)
        net = ncnn.Net()
        net.opt.num_threads = threads or 1
        net.opt.use_vulkan_compute = False
        with param.open("rb") as f:
            binary = f.read(4) == (7767517).to_bytes(4, "little")
        if (net.load_param_bin(str(param)) if binary else net.load_param(str(param))) != 0:
            raise CorruptInputError(f"ncnn cannot read the param file {param}")
        if net.load_model(str(weights)) != 0:
            raise CorruptInputError(
                f"ncnn cannot load the weights {weights} for {param.name} (truncated, or not this param's .bin)"
            )
        self.net = net
        self._ncnn = ncnn
        self.input_names = list(net.input_names())
        self.output_names = list(net.output_names())

    def run(self, output_names: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        ex = self.net.create_extractor()
        # ncnn.Mat wraps the array's memory without holding the array: ``inputs`` keeps each alive until
        # the extractions below (a freed temporary gave wrong outputs now and then)
        inputs = {name: np.ascontiguousarray(x[0], dtype=np.float32) for name, x in feed.items()}
        for name, x in inputs.items():
            ex.input(name, self._ncnn.Mat(x))
        outs = []
        for name in output_names:
            ret, mat = ex.extract(name)
            if ret != 0:
                raise CorruptInputError(f"ncnn could not compute output {name!r}")
            outs.append(np.array(mat)[None])  # a copy: the Mat dies with the extractor
        return outs


def ncnn_pair(files: Sequence[Path]) -> tuple[Path, Path]:
    """The ``.param`` and the ``.bin`` of an NCNN model: given both, or the param with its ``.bin`` beside
    it (the pairing apps use: same stem). A missing ``.bin`` is a typed error naming the file looked for."""
    param = next((f for f in files if f.suffix == ".param"), files[0])
    weights = next((f for f in files if f.suffix == ".bin"), param.with_suffix(".bin"))
    if not weights.is_file():
        raise CorruptInputError(
            f"the NCNN model {param} has no weights: {weights.name} not found beside it",
            hint="an NCNN model is a .param with its .bin; give both from the app",
        )
    return param, weights


class MnnEngine:
    """An MNN model through ``MNN.Interpreter``, one interpreter and session per thread."""

    def __init__(self, files: Sequence[Path], threads: int | None) -> None:
        self._mnn = _import("mnn")
        self.path = files[0]
        self._threads = threads or 1
        self._pool = _PerThread(self._open)
        interp, session = self._pool.first
        self.input_names = list(interp.getSessionInputAll(session))
        self.output_names = list(interp.getSessionOutputAll(session))
        self.input_shapes = {n: list(t.getShape()) for n, t in interp.getSessionInputAll(session).items()}

    def _open(self) -> tuple[Any, Any]:
        try:
            interp = self._mnn.Interpreter(str(self.path))
            session = interp.createSession({"numThread": self._threads})
        except Exception as e:  # MNN raises a bare Exception for a file it rejects
            raise CorruptInputError(f"MNN cannot load {self.path}: {e}") from e
        return interp, session

    def run(self, output_names: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        mnn = self._mnn
        interp, session = self._pool.get()
        caffe = mnn.Tensor_DimensionType_Caffe
        for name, x in feed.items():
            x = np.ascontiguousarray(x, dtype=np.float32)
            t = interp.getSessionInput(session, name)
            if list(t.getShape()) != list(x.shape):
                interp.resizeTensor(t, tuple(x.shape))
                interp.resizeSession(session)
            t.copyFrom(mnn.Tensor(x.shape, mnn.Halide_Type_Float, x, caffe))
        code = interp.runSession(session)
        if code != 0:
            # MNN reports an op this build cannot run (old int8 ops such as EltwiseInt8) only here, and
            # its outputs are then zeros: never let those through as results.
            raise CorruptInputError(
                f"MNN {runtime_version('mnn') or ''} cannot run {self.path.name} (error code {code}: an op of "
                "this model is not supported by this MNN build; its log names it)"
            )
        outs = []
        for name in output_names:
            o = interp.getSessionOutput(session, name)
            shape = tuple(o.getShape())
            host = mnn.Tensor(shape, mnn.Halide_Type_Float, np.zeros(shape, np.float32), caffe)
            o.copyToHostTensor(host)
            outs.append(np.array(host.getNumpyData(), dtype=np.float32).reshape(shape))
        return outs


class TfliteEngine:
    """A ``.tflite`` in ai-edge-litert's interpreter (the builtin op resolver, with the custom ops it
    registers such as ``TFLite_Detection_PostProcess``), one interpreter per thread."""

    def __init__(self, files: Sequence[Path], threads: int | None) -> None:
        self._litert = _import("tflite")
        self.path = files[0]
        self._threads = threads or 1
        self._pool = _PerThread(self._open)
        interp = self._pool.first
        self.input_names = [d["name"] for d in interp.get_input_details()]
        self.output_names = [d["name"] for d in interp.get_output_details()]
        self.input_shapes = {d["name"]: [int(s) for s in d["shape"]] for d in interp.get_input_details()}
        self.input_dtypes = {d["name"]: np.dtype(d["dtype"]) for d in interp.get_input_details()}
        self.quantization = {
            d["name"]: QuantParams(scale=float(d["quantization"][0]), zero_point=int(d["quantization"][1]))
            for d in interp.get_input_details()
            if d["quantization"][0]
        }

    def _open(self) -> Any:
        try:
            interp = self._litert.Interpreter(model_path=str(self.path), num_threads=self._threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise CorruptInputError(f"the TFLite runtime cannot load {self.path}: {e}") from e
        return interp

    def run(self, output_names: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        interp = self._pool.get()
        index = {d["name"]: d["index"] for d in interp.get_input_details()}
        for name, x in feed.items():
            interp.set_tensor(index[name], x)
        interp.invoke()
        out_index = {d["name"]: d["index"] for d in interp.get_output_details()}
        return [interp.get_tensor(out_index[name]).copy() for name in output_names]


class TorchLiteEngine:
    """A PyTorch Mobile ``.ptl`` in torch's lite interpreter (runs XNNPACK-prepacked ops); a TorchScript
    archive that carries a ``.ptl`` name opens with ``torch.jit.load`` instead."""

    def __init__(self, files: Sequence[Path], threads: int | None) -> None:
        import zipfile

        torch = _import("pytorch_lite")
        self.path = files[0]
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        try:
            with zipfile.ZipFile(self.path) as z:
                names = z.namelist()
            lite = any(n.endswith("/bytecode.pkl") for n in names)
            if any("/torch/classes/xnnpack" in n for n in names) and not torch._C._is_xnnpack_enabled():
                raise MissingDependencyError(
                    f"{self.path.name} runs XNNPACK-prepacked ops (prepacked::*_clamp_run) and this torch "
                    f"build ({torch.__version__}) has no XNNPACK",
                    hint="run it with a torch build that has XNNPACK (torch._C._is_xnnpack_enabled() is True)",
                )
            if lite:
                from torch.jit.mobile import _load_for_lite_interpreter

                self.module = _load_for_lite_interpreter(str(self.path), map_location="cpu")
            else:
                self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
        except (zipfile.BadZipFile, RuntimeError, ValueError) as e:
            raise CorruptInputError(f"torch cannot load {self.path}: {e}") from e
        self.input_names = ["input"]
        self.output_names: list[str] = []  # known after the first run (a tensor or a tuple of tensors)

    def run(self, output_names: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(x)) for x in feed.values()))
        outs = list(out) if isinstance(out, tuple | list) else [out]
        return [o.detach().numpy() for o in outs]


register_runtime(
    Runtime("onnxruntime", ("onnx",), "onnxruntime", "onnxruntime", "a converted model.onnx (default)")
)
register_runtime(
    Runtime(
        "tflite", ("tflite",), "ai_edge_litert.interpreter", "ai-edge-litert", "TFLite (LiteRT)", TfliteEngine
    )
)
register_runtime(Runtime("ncnn", ("ncnn_param",), "ncnn", "ncnn", "Tencent NCNN (.param + .bin)", NcnnEngine))
register_runtime(Runtime("mnn", ("mnn",), "MNN", "MNN", "Alibaba MNN (.mnn)", MnnEngine))
register_runtime(
    Runtime(
        "pytorch_lite",
        ("pytorch_lite",),
        "torch",
        "torch",
        "PyTorch Mobile lite interpreter",
        TorchLiteEngine,
    )
)


@dataclass
class NativeModel:
    """An engine opened on a model's files, with the input shape/dtype it takes and what it outputs."""

    runtime: str
    engine: Any
    input_name: str
    input_shape: list[int]
    input_dtype: np.dtype[Any]
    output_names: list[str]
    output_shapes: list[list[int]]
    output_dtypes: list[str]


def open_native(
    runtime: str,
    files: Sequence[Path],
    *,
    input_shape: Sequence[int] | None = None,
    threads: int | None = None,
) -> NativeModel:
    """Open ``files`` in the engine ``runtime`` and probe it once with zeros, so the model's outputs are
    known and a file the engine rejects fails here, before anything is written or replayed.

    ``input_shape``: needed where the format records none (NCNN params without an Input shape, ``.ptl``).
    """
    rt = get_runtime(runtime)
    if rt.open_engine is None:
        raise UsageError(f"{runtime} is not a native engine")
    engine = rt.open_engine(files, threads)
    if len(engine.input_names) != 1:
        raise UsageError(
            f"{files[0].name} has {len(engine.input_names)} inputs ({', '.join(engine.input_names)}); "
            "replay feeds one image input"
        )
    name = engine.input_names[0]
    declared = getattr(engine, "input_shapes", {}).get(name)
    shape = list(input_shape) if input_shape else declared
    if not shape or any(int(d) <= 0 for d in shape):
        raise UsageError(
            f"{files[0].name} does not record its input shape",
            hint="give it, e.g. --input-shape 1,3,224,224 (the app's trace shows it)",
        )
    shape = [int(d) for d in shape]
    dtype = getattr(engine, "input_dtypes", {}).get(name, np.dtype(np.float32))
    try:
        probe = engine.run(engine.output_names, {name: np.zeros(shape, dtype=dtype)})
    except CorruptInputError:
        raise
    except Exception as e:  # the engine's own error type (a wrong input shape, a missing op)
        raise CorruptInputError(f"{runtime} cannot run {files[0].name} on a {shape} input: {e}") from e
    outputs = engine.output_names or [
        f"output_{i}" if len(probe) > 1 else "output" for i in range(len(probe))
    ]
    if not engine.output_names:
        engine.output_names = outputs
    return NativeModel(
        runtime, engine, name, shape, np.dtype(dtype), outputs, [list(p.shape) for p in probe],
        [p.dtype.name for p in probe],
    )  # fmt: skip


class _EngineSession:
    """onnxruntime's ``InferenceSession.run`` call shape over a native engine (one item per call)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def run(self, output_names: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.engine.run(list(output_names), feed)  # type: ignore[no-any-return]


def open_bundle_model(
    lb: LoadedBundle,
    *,
    providers: Sequence[str] = (),
    threads: int | None = None,
    spinning: bool = True,
) -> ModelSession:
    """Open a bundle's replay model in the runtime its ``bundle.json`` names."""
    from replaybench.replay.sessions import ModelSession, open_model

    b = lb.bundle
    if b.runtime.name == "onnxruntime":
        return open_model(
            lb.model_path,
            providers=list(providers),
            threads=threads,
            optimization=b.parity.onnxruntime_optimization if b.parity else None,
            spinning=spinning,
        )
    if any(p.lower() not in ("cpu", "cpuexecutionprovider") for p in providers):
        raise UsageError(f"bundle {b.name} runs in {b.runtime.name}, which replay runs on the CPU only")
    shape = b.io.inputs[0].shape if b.io.inputs else None
    concrete = [d for d in shape if isinstance(d, int)] if shape else None
    if concrete is not None and shape is not None and len(concrete) != len(shape):
        concrete = None
    nm = open_native(b.runtime.name, lb.runtime_paths, input_shape=concrete, threads=threads or 1)
    sizes = {n: int(np.prod(s[1:])) for n, s in zip(nm.output_names, nm.output_shapes, strict=True)}
    return ModelSession(
        _EngineSession(nm.engine),
        nm.input_name,
        nm.input_dtype.type,
        list(nm.input_shape),
        nm.output_names,
        sizes,
        "loop",
        [f"runs in the app's own engine: {b.runtime.name} {b.runtime.version or ''}".rstrip()],
    )
