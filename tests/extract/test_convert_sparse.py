"""Sparse TFLite models (DENSIFY): the densified weights are TFLite's, and parity is against the original.

The fixtures (tests/fixtures/sparse_models.py) re-encode a dense model's weights in TFLite's sparse
format; every expected value comes from the dense model they were made from or from ai-edge-litert
running the sparse original, never from replaybench's decoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from replaybench.errors import ConversionError, ParityError
from replaybench.extract.convert import convert_model
from replaybench.extract.convert import tflite_rewrite as rw
from replaybench.extract.convert.writer import convert_model_in_process
from tests.fixtures.sparse_models import SPARSE_CASES, sparse_models


@pytest.fixture(scope="module")
def folder() -> Path:
    return sparse_models()


def _litert(path: Path, x: np.ndarray, *, delegates: bool = True) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=kind)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return np.array(it.get_tensor(it.get_output_details()[0]["index"]))


def _x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (1, 16)).astype(np.float32)


def _weights(model_bytes: bytes) -> dict[str, np.ndarray]:
    """Constant tensors by name, as stored (only the dense ones)."""
    model = rw.read(model_bytes)
    types = {0: np.float32, 1: np.float16, 9: np.int8}
    out = {}
    for t in model.subgraphs[0].tensors:
        data = model.buffers[t.buffer].data if t.buffer else None
        if data is not None and t.sparsity is None and int(t.type) in types:
            out[rw._name(t)] = np.frombuffer(bytes(data), dtype=types[int(t.type)]).reshape(
                [int(d) for d in t.shape]
            )
    return out


@pytest.mark.parametrize("case", list(SPARSE_CASES))
def test_fixture_is_valid_tflite_sparsity(folder, case):
    """The fixture's encoding means to TFLite what it means to us: its builtin kernels give the dense
    model's outputs exactly (so the fixture, not just our decoder, is right)."""
    mode = SPARSE_CASES[case]["mode"]
    x = _x(1)
    got = _litert(folder / f"{case}.tflite", x, delegates=False)
    want = _litert(folder / f"dense_{mode}.tflite", x, delegates=False)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("case", list(SPARSE_CASES))
def test_densify_restores_the_dense_weights(folder, case):
    """Every sparse constant decodes to the dense model's weight, bit for bit (fp16 and int8 included)."""
    sparse = (folder / f"{case}.tflite").read_bytes()
    model = rw.read(sparse)
    names = rw.densify(model)
    assert len(names) == 2
    assert not any(rw.op_name(model, op) == "DENSIFY" for op in model.subgraphs[0].operators)
    dense = _weights((folder / f"dense_{SPARSE_CASES[case]['mode']}.tflite").read_bytes())
    got = _weights(rw.to_bytes(model))
    for name in names:
        base = name.removesuffix("_sparse")
        assert got[name].dtype == dense[base].dtype
        np.testing.assert_array_equal(got[name], dense[base])
        assert np.count_nonzero(dense[base] == 0) > 0  # the fixture really drops entries


@pytest.mark.parametrize("case", list(SPARSE_CASES))
def test_sparse_model_converts_with_parity_against_the_original(folder, case, tmp_path):
    mode = SPARSE_CASES[case]["mode"]
    b = convert_model(folder / f"{case}.tflite", tmp_path / "b", n_random=2)
    assert b.parity is not None and b.parity.passed
    assert b.parity.reference == "original" and b.parity.reference_reason is None
    assert "ai-edge-litert" in b.parity.reference_runtime
    assert b.conversion is not None and any(n.startswith("densified 2 sparse") for n in b.conversion.notes)
    # the bundle computes what the dense model computes, on an input parity did not use
    import onnxruntime as ort

    x = _x(99)
    s = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"))
    got = s.run(None, {s.get_inputs()[0].name: x})[0]
    want = _litert(folder / f"dense_{mode}.tflite", x, delegates=False)
    tol = 1e-5 if mode != "int8" else 0.05 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=tol)


def _swap_two_values(real):
    def wrong(values, shape, sparsity):
        dense = real(values, shape, sparsity).copy()
        flat = dense.reshape(-1)
        hi, lo = int(np.argmax(flat)), int(np.argmin(flat))  # the two most different weights
        flat[hi], flat[lo] = flat[lo], flat[hi]
        return dense

    return wrong


@pytest.mark.parametrize("case", ["csr_f32", "block1x16_fp16"])
def test_parity_fails_on_a_wrong_densify(folder, case, tmp_path, monkeypatch):
    """A densify that swaps two weights must fail parity: the reference is the original sparse model in
    LiteRT, not the (equally wrong) rewritten one, against which it would pass."""
    monkeypatch.setattr(rw, "sparse_to_dense", _swap_two_values(rw.sparse_to_dense))
    # the fault is injected in this process, so convert here too (convert_model runs in a sandbox child)
    with pytest.raises(ParityError, match="disagrees"):
        convert_model_in_process(folder / f"{case}.tflite", tmp_path / "b", n_random=2, runtime="onnx")
    b = convert_model_in_process(
        folder / f"{case}.tflite", tmp_path / "c", n_random=2, allow_mismatch=True, runtime="onnx"
    )
    assert b.parity is not None and not b.parity.passed and b.parity.reference == "original"
    # by default such a model is replayed in LiteRT itself, the reason recorded
    native = convert_model_in_process(folder / f"{case}.tflite", tmp_path / "d", n_random=2)
    assert native.runtime.name == "tflite" and "disagrees" in (native.runtime.reason or "")


def _csr_levels(segments, indices, index_type=1):
    from tensorflow.lite.python import schema_py_generated as schema

    sp = schema.SparsityParametersT()
    sp.traversalOrder = np.array([0, 1], dtype=np.int32)
    dense = schema.DimensionMetadataT()
    dense.format, dense.denseSize = 0, 2
    csr = schema.DimensionMetadataT()
    csr.format = 1
    csr.arraySegmentsType = csr.arrayIndicesType = index_type
    csr.arraySegments, csr.arrayIndices = schema.Int32VectorT(), schema.Int32VectorT()
    csr.arraySegments.values, csr.arrayIndices.values = segments, indices
    sp.dimMetadata = [dense, csr]
    return sp


def test_sparse_to_dense_csr_by_hand():
    # [[0, 5, 0], [7, 0, 9]]: row 0 holds column 1, row 1 columns 0 and 2 (TFLite's format doc example)
    sp = _csr_levels([0, 1, 3], [1, 0, 2])
    got = rw.sparse_to_dense(np.array([5, 7, 9], dtype=np.float32), [2, 3], sp)
    np.testing.assert_array_equal(got, [[0, 5, 0], [7, 0, 9]])


@pytest.mark.parametrize(
    ("segments", "indices", "values", "match"),
    [
        ([0, 1, 3], [1, 0, 7], [5, 7, 9], "out of range"),  # column 7 of a 3-column tensor
        ([0, 4, 3], [1, 0, 2], [5, 7, 9], "out of order or range"),
        ([0, 1], [1], [5], "too short"),  # one segment for two rows
        ([-2, 1, 3], [1, 0, 2], [5, 7, 9], "out of order or range"),  # would wrap around in numpy
        ([0, 1, 3], [1, 0, 2], [5, 7], "stores 2 values"),
    ],
)
def test_malformed_sparsity_is_a_conversion_error(segments, indices, values, match):
    """Untrusted models: bad metadata is refused, never decoded into a wrong tensor or an overread."""
    sp = _csr_levels(segments, indices)
    with pytest.raises(ConversionError, match=match):
        rw.sparse_to_dense(np.array(values, dtype=np.float32), [2, 3], sp)


def test_huge_sparse_tensor_is_refused():
    sp = _csr_levels([0, 0, 0], [])
    with pytest.raises(ConversionError, match="too large"):
        rw.sparse_to_dense(np.zeros(0, dtype=np.float32), [1 << 20, 1 << 20], sp)
    with pytest.raises(ConversionError, match="too large"):  # would overflow int64
        rw.sparse_to_dense(np.zeros(0, dtype=np.float32), [1 << 40, 1 << 40], sp)
