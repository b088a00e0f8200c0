"""A real Frida run: spawn a local process that loads a TFLite model with ai_edge_litert and invokes it,
trace it with the agent through ``capture``, and check what the trace holds against what the process did.

The ai_edge_litert wheel exports no TFLite C API (checked with nm: ``TfLiteInterpreterInvoke`` is in no
.so of the environment); its ``libpywrap_litert_common.so`` keeps a symbol table, so the agent's C++ path
is what runs here: ``FlatBufferModelBase<FlatBufferModel>::VerifyAndBuildFrom{Buffer,Allocation}`` for
the load and ``tflite::Subgraph::Invoke`` for the tensors.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from replaybench.errors import TraceError
from replaybench.extract.trace import FileOpenEvent, InvokeEvent, ModelLoadEvent, TensorEvent, read_trace
from replaybench.extract.trace_match import traced_invokes
from tests.extract.trace_target import stop_when_exists
from tests.fixtures.models import tflite_models

pytestmark = pytest.mark.frida
TARGET = Path(__file__).with_name("trace_target.py")
INVOKES = 3


def _ptrace_denied_reason() -> str | None:
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    if scope.is_file() and scope.read_text().strip() == "3":
        return "ptrace is disabled (kernel.yama.ptrace_scope = 3)"
    return None


def _capture(tmp_path: Path, model: Path, mode: str):
    pytest.importorskip("frida", reason="frida is not installed (pip install 'replaybench[frida]')")
    from replaybench.extract.capture import CaptureTarget, capture

    reason = _ptrace_denied_reason()
    if reason:
        pytest.skip(reason)
    fed = tmp_path / "fed.npz"
    out = tmp_path / "trace"
    target = CaptureTarget(
        spawn=sys.executable, spawn_args=[str(TARGET), str(model), mode, str(fed), str(INVOKES)]
    )
    try:
        result = capture(
            target, out, seconds=240, stop=stop_when_exists(fed, timeout=240)
        )  # loaded CI machines are slow
    except TraceError as e:
        if "cannot attach" in e.message:
            pytest.skip(f"frida cannot attach here (ptrace denied?): {e.message}")
        raise
    assert result.ended_by == "stopped", result  # the process did its work under the agent
    assert fed.is_file(), "the traced process did not finish"
    return result, read_trace(out), dict(np.load(fed))


@pytest.mark.parametrize(("kind", "mode"), [("float", "path"), ("int8", "content")])
def test_frida_trace_records_model_and_tensors(tmp_path: Path, kind: str, mode: str) -> None:
    model = tflite_models()[kind]
    result, trace, fed = _capture(tmp_path, model, mode)
    model_sha = hashlib.sha256(model.read_bytes()).hexdigest()

    loads = trace.of_kind(ModelLoadEvent)
    assert len(loads) == 1, loads
    load = loads[0]
    assert load.runtime == "tflite"
    assert load.sha256 == model_sha
    assert load.size == model.stat().st_size
    dump = trace.read_dump(load.dump)
    assert dump is not None and hashlib.sha256(dump).hexdigest() == model_sha
    if mode == "path":
        # The buffer lies in the mmap of the opened model file: the load names its source.
        assert load.path == str(model)
        opens = [e for e in trace.of_kind(FileOpenEvent) if e.path == str(model)]
        assert {e.api for e in opens} >= {"mmap"}
    assert result.models_loaded == 1 and result.invokes == INVOKES

    invokes = traced_invokes(trace)[model_sha]
    assert len(invokes) == INVOKES
    for i, inv in enumerate(invokes):
        (inp,) = inv.inputs
        np.testing.assert_array_equal(inp.array, fed[f"input_{i}"])
        assert inp.dtype == str(fed[f"input_{i}"].dtype)
        (out,) = inv.outputs
        np.testing.assert_array_equal(out.array, fed[f"output_{i}"])
    # Every event names its thread, so an image can be paired with the invoke it fed on that thread.
    tids = {e.tid for e in trace.events if isinstance(e, TensorEvent | InvokeEvent)}
    assert None not in tids and tids == {inv.tid for inv in invokes}
    if kind == "int8":
        q = invokes[0].inputs[0].quantization
        assert q is not None and q.scale > 0
    assert trace.summary.malformed_lines == 0 and not trace.summary.dump_folder_missing
