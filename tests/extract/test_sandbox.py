"""Untrusted model code: op allowlists (TF graphs, TorchScript) and the limited conversion child.

The hostile models are built here with TensorFlow / torch themselves; "not written" is checked on disk.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from replaybench.cli import main
from replaybench.errors import ResourceLimitError, UnsafeInputError
from replaybench.extract.convert import convert_model
from replaybench.extract.convert.sandbox import ENV_CPU, ChildLimits, run_task
from tests.fixtures.models import torch_models


def _write_file_graphdef(pb: Path, target: Path) -> Path:
    """A frozen GraphDef whose output has a control edge to a WriteFile of ``target`` (the issue's repro)."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 4], name="x")
        w = tf.raw_ops.WriteFile(
            filename=tf.constant(str(target)), contents=tf.constant("pwned"), name="dropper"
        )
        with tf.control_dependencies([w]):
            tf.identity(x * 2.0, name="y")
    pb.write_bytes(g.as_graph_def().SerializeToString())
    assert pb.stat().st_size < 600
    return pb


def test_graphdef_writing_a_file_is_refused_and_writes_nothing(tmp_path, capsys):
    target = tmp_path / "written_by_the_model.txt"
    pb = _write_file_graphdef(tmp_path / "model.pb", target)
    with pytest.raises(UnsafeInputError, match=r"WriteFile.*dropper \(WriteFile, graph\)"):
        convert_model(pb, tmp_path / "b", n_random=1)
    assert main(["convert", str(pb), "-o", str(tmp_path / "c")]) == UnsafeInputError.exit_code
    assert "WriteFile" in capsys.readouterr().err
    assert not target.exists()
    assert not (tmp_path / "b" / "model.onnx").exists() and not (tmp_path / "c" / "model.onnx").exists()


def test_extract_refuses_the_graphdef_in_an_apk(tmp_path):
    from replaybench.extract.pipeline import extract_app
    from tests.fixtures.apk import build_apk

    target = tmp_path / "written_by_the_app.txt"
    pb = _write_file_graphdef(tmp_path / "frozen.pb", target)
    apk = build_apk(tmp_path / "hostile.apk", assets={"models/frozen.pb": pb.read_bytes()}, ml_code=True)
    result = extract_app([apk], tmp_path / "out", code=False)
    (m,) = [m for m in result.models if m.format == "tf_graphdef"]
    assert m.status == "failed" and m.bundle is None
    assert m.error is not None and "WriteFile" in m.error and "dropper" in m.error
    assert not target.exists()


def _saved_model_calling(kind: str, folder: Path, victim: Path) -> Path:
    """A SavedModel whose serving function (in the function library) holds a file, Python or
    checkpoint op next to real compute."""
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def serve(self, x):
            if kind == "ReadFile":
                side = tf.cast(tf.strings.length(tf.io.read_file(str(victim))), tf.float32)
            elif kind == "EagerPyFunc":
                side = tf.py_function(lambda v: v * 0.0, [x], tf.float32)
            elif kind == "SaveV2":
                tf.raw_ops.SaveV2(prefix=str(victim), tensor_names=["x"], shape_and_slices=[""], tensors=[x])
                side = tf.constant(0.0)
            else:  # RestoreV2
                (r,) = tf.raw_ops.RestoreV2(
                    prefix=str(victim), tensor_names=["x"], shape_and_slices=[""], dtypes=[tf.float32]
                )
                side = tf.reduce_sum(r)
            return {"y": tf.nn.relu(x) + side}

    m = M()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    return folder


@pytest.mark.parametrize("kind", ["ReadFile", "EagerPyFunc", "SaveV2", "RestoreV2"])
def test_savedmodel_function_library_with_file_python_or_checkpoint_ops_is_refused(kind, tmp_path):
    victim = tmp_path / "victim"
    sm = _saved_model_calling(kind, tmp_path / "sm", victim)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UnsafeInputError, match=rf"{kind}.*function __inference_serve"):
        convert_model(sm, tmp_path / "b", n_random=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no checkpoint, no bundle


def test_savedmodel_own_checkpoint_functions_are_not_refused():
    """The save/restore functions tf.saved_model.save writes hold SaveV2/RestoreV2: exempt, nothing else."""
    from tensorflow.core.protobuf import saved_model_pb2

    from replaybench.extract.convert.tf_ops import refused_ops
    from tests.fixtures.models import saved_model

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((saved_model() / "saved_model.pb").read_bytes())
    (mg,) = sm.meta_graphs
    ops = {nd.op for f in mg.graph_def.library.function for nd in f.node_def}
    assert {"SaveV2", "RestoreV2", "MergeV2Checkpoints"} <= ops
    assert refused_ops(mg.graph_def, mg.saver_def, set(mg.object_graph_def.concrete_functions)) == []
    # without the SaverDef naming them, the same functions are refused
    assert {b.op for b in refused_ops(mg.graph_def)} >= {"SaveV2", "RestoreV2", "MergeV2Checkpoints"}


def test_a_library_function_may_not_shadow_an_op():
    """A function named WriteFile would let a WriteFile node pass as a function call."""
    from tensorflow.core.framework import graph_pb2

    from replaybench.extract.convert.tf_ops import RefusedOp, check_graph, refused_ops

    gd = graph_pb2.GraphDef()
    gd.library.function.add().signature.name = "WriteFile"
    node = gd.node.add()
    node.name, node.op = "w", "WriteFile"
    assert refused_ops(gd) == []  # without knowing the registry it would pass
    with pytest.raises(UnsafeInputError, match=r"WriteFile \(WriteFile, function library\)"):
        check_graph(gd, "shadow.pb")
    assert RefusedOp("WriteFile", "WriteFile", "function library") in refused_ops(
        gd, is_op={"WriteFile"}.__contains__
    )


# TorchScript: a custom op (registered in Python, no C++) and a file-mapping aten op
@torch.library.custom_op("replaybench_test::leak", mutates_args=())
def _leak(x: torch.Tensor) -> torch.Tensor:
    Path(os.environ.get("RB_LEAK", "/nonexistent/leak")).write_text("leaked")
    return x.clone()


class _CustomOp(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.replaybench_test.leak(x) + 1


class _FileWriter(torch.nn.Module):
    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # maps the file shared and adds 1 to each byte: every parity run would write to it
        t = torch.from_file(self.victim, True, 4, dtype=torch.uint8)
        t.add_(1)
        return x * 2 + t.sum()


def test_torchscript_custom_op_is_refused(tmp_path):
    pt = tmp_path / "custom.pt"
    torch.jit.script(_CustomOp()).save(str(pt))
    with pytest.raises(UnsafeInputError, match="replaybench_test::leak"):
        convert_model(pt, tmp_path / "b", input_shape=[1, 4], n_random=1)


def test_torchscript_from_file_is_refused_and_the_file_is_untouched(tmp_path):
    from replaybench.extract.convert.torchscript import graph_refusals

    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"abcd")
    scripted = torch.jit.script(_FileWriter(str(victim)))
    pt = tmp_path / "writer.pt"
    scripted.save(str(pt))
    with pytest.raises(UnsafeInputError, match="aten::from_file"):
        convert_model(pt, tmp_path / "b", input_shape=[1, 4], n_random=1)
    assert victim.read_bytes() == b"abcd"
    # the loaded-graph check (run before forward) sees the same op
    assert graph_refusals(scripted) == ["aten::from_file"]
    # a plain TorchScript model still converts
    b = convert_model(torch_models()[0], tmp_path / "plain", input_shape=[1, 3, 32, 32], n_random=1)
    assert b.parity is not None and b.parity.passed


def test_cpu_limit_is_a_typed_error(tmp_path, monkeypatch, capsys):
    pb = _write_file_graphdef(tmp_path / "model.pb", tmp_path / "never")
    # importing TensorFlow alone takes more than one CPU-second
    with pytest.raises(ResourceLimitError, match="CPU-time limit of 1 s") as e:
        convert_model(pb, tmp_path / "b", limits=ChildLimits(cpu_seconds=1))
    assert e.value.limit == "cpu" and e.value.exit_code == 17
    monkeypatch.setenv(ENV_CPU, "1")
    assert main(["convert", str(pb), "-o", str(tmp_path / "c")]) == ResourceLimitError.exit_code
    assert "CPU-time limit" in capsys.readouterr().err


def test_memory_limit_is_a_typed_error(tmp_path):
    """A 300-byte graph that fills a 1.6 GB tensor during parity, under a 1200 MiB data limit (a tiny
    model converts in about 700 MiB)."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 4], name="x")
        big = tf.fill([20000, 20000], x[0, 0])  # the fill value depends on the input: not folded
        tf.identity(x + tf.reduce_sum(big), name="y")
    pb = tmp_path / "bomb.pb"
    pb.write_bytes(g.as_graph_def().SerializeToString())
    with pytest.raises(ResourceLimitError, match="memory limit of 1200 MiB") as e:
        convert_model(pb, tmp_path / "b", n_random=1, limits=ChildLimits(memory_mb=1200))
    assert e.value.limit == "memory"


def test_file_size_limit_is_a_typed_error(tmp_path):
    """A 2.4 MB GraphDef under a 1 MiB file-size limit: writing its bundle (source copy, model.onnx) stops."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 600_000], name="x")
        w = tf.constant(np.random.default_rng(0).random((1, 600_000), dtype=np.float32))
        tf.identity(x + w, name="y")
    pb = tmp_path / "big.pb"
    pb.write_bytes(g.as_graph_def().SerializeToString())
    assert pb.stat().st_size > 2_000_000
    with pytest.raises(ResourceLimitError, match="file-size limit of 1 MiB") as e:
        convert_model(pb, tmp_path / "b", n_random=1, limits=ChildLimits(file_mb=1))
    assert e.value.limit == "file_size"
    assert all(p.stat().st_size <= 1024 * 1024 for p in (tmp_path / "b").rglob("*") if p.is_file())


def test_child_inherits_no_file_descriptor(tmp_path):
    secret = tmp_path / "parent_secret.txt"
    secret.write_text("parent only")
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)  # a careless parent: would survive a plain exec
    try:
        res = run_task("probe", {}, limits=ChildLimits(cpu_seconds=30))
    finally:
        os.close(fd)
    fds = res.sandbox["fds_at_start"]
    assert sorted(int(k) for k in fds) == [0, 1, 2]
    assert str(secret) not in fds.values()
    assert res.sandbox["rlimits"]["RLIMIT_CPU"][0] == 30


def test_typed_errors_and_bundles_cross_the_process_boundary(tmp_path):
    """The bundle returned equals the one written; a child's ParityError keeps its message."""
    from replaybench.bundle import load_bundle
    from replaybench.errors import ParityError
    from tests.fixtures.models import tflite_models

    tfl = tflite_models()["float"]
    trace = [np.full((1, 32, 32, 3), 0.25, np.float32)]
    b = convert_model(tfl, tmp_path / "b", n_random=1, trace_inputs=trace, labels=["a", "b"])
    assert b == load_bundle(tmp_path / "b").bundle
    assert b.parity is not None and b.parity.input_kinds == ["random-range", "trace"]
    copy = tmp_path / "t.tflite"
    shutil.copyfile(tfl, copy)
    with pytest.raises(ParityError, match=r"^t\.tflite: the ONNX model disagrees with ") as e:
        convert_model(copy, tmp_path / "c", n_random=1, tolerance=-1.0, runtime="onnx")
    assert e.value.hint is not None and "--allow-mismatch" in e.value.hint
    assert json.loads((tmp_path / "c" / "bundle.json").read_text())["parity"]["passed"] is False
