"""convert: registry, sniffing, every TFLite quant mode, TorchScript, SavedModel, ONNX, bad input, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from replaybench.bundle import PreprocessSpec, Provenance, ResizeSpec, load_bundle
from replaybench.cli import main
from replaybench.errors import (
    ConversionError,
    CorruptInputError,
    ParityError,
    TraceError,
    UnsafeInputError,
    UnsupportedFormatError,
)
from replaybench.extract.convert import convert_model, get_converter, register_converter, sniff_format
from replaybench.extract.convert.registry import UNCONVERTIBLE_FORMATS
from tests.fixtures.models import saved_model, tflite_models, torch_models


@pytest.fixture(scope="module")
def tfl() -> dict[str, Path]:
    return tflite_models()


def test_register_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown source format 'keras_h5'"):
        register_converter("keras_h5")


def test_register_rejects_duplicate():
    get_converter("tflite")
    with pytest.raises(ValueError, match="already registered"):
        register_converter("tflite")(lambda path, opts: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("fmt", UNCONVERTIBLE_FORMATS)
def test_known_but_unconvertible_formats_name_themselves(fmt):
    with pytest.raises(ConversionError, match=f"no converter for {fmt}"):
        get_converter(fmt)


def test_unknown_format_is_unsupported():
    with pytest.raises(UnsupportedFormatError):
        get_converter("bogus")


def test_sniff(tfl, tmp_path):
    pt, ptl = torch_models()
    assert sniff_format(tfl["int8"]) == "tflite"
    assert sniff_format(pt) == "torchscript"
    assert sniff_format(ptl) == "pytorch_lite"
    assert sniff_format(saved_model()) == "savedmodel"
    txt = tmp_path / "notes.txt"
    txt.write_text("hello, not a model\n")
    with pytest.raises(UnsupportedFormatError):
        sniff_format(txt)


@pytest.mark.parametrize("mode", ["float", "fp16", "dynamic", "int8", "uint8"])
def test_tflite_every_quant_mode(tfl, mode, tmp_path):
    b = convert_model(tfl[mode], tmp_path / "b", n_random=2)
    assert b.parity is not None and b.parity.passed
    assert b.parity.reference_runtime.startswith("ai-edge-litert")
    assert b.parity.reference == "original" and b.parity.reference_reason is None
    inp = b.io.inputs[0]
    assert inp.shape[1:] == [32, 32, 3] and inp.layout == "NHWC"
    # the model's own I/O dtypes are kept
    assert inp.dtype == {"int8": "int8", "uint8": "uint8"}.get(mode, "float32")
    assert (inp.quantization is not None) == (mode in ("int8", "uint8"))
    if mode in ("int8", "uint8"):
        assert b.parity.outputs[0].max_quant_steps is not None
        assert b.preprocess is not None and b.preprocess.quantization == inp.quantization
    else:
        assert b.preprocess is not None and b.preprocess.provenance["scale"] == Provenance.DEFAULT
        assert b.preprocess.scale == [pytest.approx(1 / 255)]
    assert (tmp_path / "b" / "source.tflite").read_bytes() == tfl[mode].read_bytes()
    loaded = load_bundle(tmp_path / "b")
    assert loaded.bundle == b


def test_onnx_model_runs_and_matches_tflite(tfl, tmp_path):
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    convert_model(tfl["float"], tmp_path / "b", n_random=1)
    x = np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32)
    s = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"))
    got = s.run(None, {s.get_inputs()[0].name: x})[0]
    it = Interpreter(model_path=str(tfl["float"]))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    ref = it.get_tensor(it.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_user_preprocess_provenance(tfl, tmp_path):
    spec = PreprocessSpec(resize=ResizeSpec(width=32, height=32), scale=[1 / 127.5], offset=[-1.0])
    b = convert_model(tfl["float"], tmp_path / "b", preprocess=spec, n_random=1)
    assert b.preprocess is not None
    assert b.preprocess.provenance["scale"] == Provenance.USER
    assert b.preprocess.offset == [-1.0]


def test_parity_failure_is_written_then_raised(tfl, tmp_path):
    with pytest.raises(ParityError, match="disagrees"):
        convert_model(tfl["dynamic"], tmp_path / "b", n_random=1, tolerance=0.0 - 1.0, runtime="onnx")
    doc = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert doc["parity"]["passed"] is False
    b = convert_model(
        tfl["dynamic"], tmp_path / "c", n_random=1, tolerance=-1.0, allow_mismatch=True, runtime="onnx"
    )
    assert b.parity is not None and not b.parity.passed and b.parity.allow_mismatch


def test_parity_failure_falls_back_to_the_apps_own_engine(tfl, tmp_path):
    """By default a model whose ONNX disagrees with the original is replayed in the original's engine."""
    b = convert_model(tfl["dynamic"], tmp_path / "b", n_random=1, tolerance=-1.0)
    assert b.runtime.name == "tflite" and b.runtime.files == ["source.tflite"]
    assert "disagrees with" in (b.runtime.reason or "") and b.parity is None
    assert not (tmp_path / "b" / "model.onnx").exists()
    assert (tmp_path / "b" / "source.tflite").read_bytes() == tfl["dynamic"].read_bytes()


def test_trace_inputs_are_used(tfl, tmp_path):
    x = np.full((1, 32, 32, 3), 0.5, dtype=np.float32)
    b = convert_model(tfl["float"], tmp_path / "b", n_random=1, trace_inputs=[[x], x[0].ravel()])
    assert b.parity is not None and b.parity.inputs_tried == 3
    assert b.parity.input_kinds == ["random-range", "trace"]
    with pytest.raises(TraceError, match="does not fit"):
        convert_model(tfl["float"], tmp_path / "c", n_random=1, trace_inputs=[np.zeros(7, np.float32)])


def test_torchscript_and_lite(tmp_path):
    pt, ptl = torch_models()
    for p in (pt, ptl):
        b = convert_model(p, tmp_path / p.name, input_shape=[1, 3, 32, 32], n_random=2)
        assert b.parity is not None and b.parity.passed and b.parity.reference_runtime == "torch.jit"
        assert b.parity.reference == "original"
        assert b.io.outputs[0].shape == [1, 2]
    assert (tmp_path / "tiny.ptl" / "source.ptl").is_file()


def test_torchscript_needs_input_shape(tmp_path):
    pt, _ = torch_models()
    with pytest.raises(ConversionError, match="input shapes"):
        convert_model(pt, tmp_path / "b")


def test_savedmodel(tmp_path):
    b = convert_model(saved_model(), tmp_path / "b", n_random=2)
    assert b.parity is not None and b.parity.passed and b.parity.reference_runtime == "tensorflow"
    assert (tmp_path / "b" / "source.savedmodel" / "saved_model.pb").is_file()


def test_not_a_model(tmp_path):
    p = tmp_path / "x.tflite"
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(UnsupportedFormatError):
        convert_model(p, tmp_path / "b")


def test_truncated_tflite(tfl, tmp_path):
    p = tmp_path / "t.tflite"
    p.write_bytes(tfl["float"].read_bytes()[:600])
    with pytest.raises(CorruptInputError, match="truncated or malformed"):
        convert_model(p, tmp_path / "b")


def _onnx_with_external(folder: Path, location: str) -> Path:
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    w.data_location = TensorProto.EXTERNAL
    del w.float_data[:]
    for k, v in (("location", location), ("offset", "0"), ("length", "8")):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    p = folder / "m.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def test_onnx_too_new_for_onnxruntime_is_a_conversion_error(tmp_path):
    import onnx

    (tmp_path / "w.bin").write_bytes(np.array([1, 2], dtype=np.float32).tobytes())
    p = _onnx_with_external(tmp_path, "w.bin")
    m = onnx.load(str(p))
    m.ir_version = 99
    onnx.save(m, str(p))
    with pytest.raises((ConversionError, CorruptInputError)):
        convert_model(p, tmp_path / "b", n_random=1)


def test_onnx_external_data_escaping_folder(tmp_path):
    inner = tmp_path / "model"
    inner.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.array([1, 2], dtype=np.float32).tobytes())
    p = _onnx_with_external(inner, "../secret.bin")
    with pytest.raises(UnsafeInputError, match="outside the model's folder"):
        convert_model(p, tmp_path / "b")


def test_onnx_external_data_inside_folder(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.array([1, 2], dtype=np.float32).tobytes())
    p = _onnx_with_external(tmp_path, "w.bin")
    b = convert_model(p, tmp_path / "b", n_random=1)
    assert b.parity is not None and b.parity.passed and b.conversion is not None
    assert b.conversion.converter == "passthrough"


def test_cli_convert_and_inspect(tfl, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["convert", str(tfl["uint8"]), "-o", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["io"]["inputs"][0]["dtype"] == "uint8"
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == doc
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "parity vs ai-edge-litert" in text and "the original model" in text and "provenance" in text
    assert main(["convert", str(tfl["int8"]), "-o", str(tmp_path / "f"), "--float-io", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["io"]["inputs"][0]["dtype"] == "float32"
    assert main(["inspect", str(tfl["float"])]) == 0
    assert "model (not converted)" in capsys.readouterr().out


def test_cli_errors_have_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    assert main(["convert", str(bad), "-o", str(tmp_path / "b")]) == UnsupportedFormatError.exit_code
    assert main(["convert", str(tmp_path / "missing.tflite"), "-o", str(tmp_path / "b")]) == 3
    pt, _ = torch_models()
    assert main(["convert", str(pt), "-o", str(tmp_path / "c"), "--input-shape", "1,x"]) == 2


@pytest.mark.parametrize("mode", ["int8", "uint8"])
def test_float_io_for_quantised_model(tfl, mode, tmp_path):
    import onnxruntime as ort

    keep = convert_model(tfl[mode], tmp_path / "q", n_random=1)
    b = convert_model(tfl[mode], tmp_path / "f", n_random=2, keep_quantized_io=False)
    assert b.parity is not None and b.parity.passed
    assert b.io.inputs[0].dtype == "float32" and b.io.outputs[0].dtype == "float32"
    assert b.io.inputs[0].quantization is None
    assert b.parity.outputs[0].max_quant_steps is not None
    # the same pixels through both bundles give the same (dequantised) answer
    pix = np.random.default_rng(2).integers(0, 256, size=(1, 32, 32, 3))
    outs = {}
    for name, bundle in (("q", keep), ("f", b)):
        pre = bundle.preprocess
        assert pre is not None
        x = pix * pre.scale[0] + pre.offset[0]
        if pre.dtype in ("uint8", "int8"):
            x = np.rint(x / pre.quantization.scale + pre.quantization.zero_point).astype(pre.dtype)
        s = ort.InferenceSession(str(tmp_path / name / "model.onnx"))
        y = s.run(None, {s.get_inputs()[0].name: x.astype(pre.dtype)})[0]
        q = keep.io.outputs[0].quantization
        outs[name] = (y.astype(np.float64) - q.zero_point) * q.scale if name == "q" else y
    np.testing.assert_allclose(outs["f"], outs["q"], atol=2 * keep.io.outputs[0].quantization.scale)


def test_frozen_graphdef(tmp_path):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from tests.fixtures.models import keras_model

    m = keras_model()
    fn = tf.function(lambda x: m(x)).get_concrete_function(
        tf.TensorSpec([1, 32, 32, 3], tf.float32, name="image")
    )
    frozen = convert_variables_to_constants_v2(fn)
    pb = tmp_path / "frozen.pb"
    pb.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    assert sniff_format(pb) == "tf_graphdef"
    b = convert_model(pb, tmp_path / "b", n_random=2)
    assert b.parity is not None and b.parity.passed and b.parity.reference_runtime == "tensorflow"
    assert b.conversion is not None and b.conversion.converter == "tf2onnx.from_graph_def"
    assert (tmp_path / "b" / "source.pb").read_bytes() == pb.read_bytes()


def test_convert_many_keeps_going_after_a_failure(tfl, tmp_path):
    from replaybench.extract.convert import ConversionJob, convert_many

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"1234TFL3" + b"\x00" * 10)
    spec = PreprocessSpec(resize=ResizeSpec(width=32, height=32), scale=[1 / 127.5], offset=[-1.0])
    res = convert_many(
        [
            (tfl["float"], tmp_path / "a"),
            (bad, tmp_path / "bad"),
            ConversionJob(tfl["fp16"], tmp_path / "c", {"preprocess": spec}),
        ],
        n_random=1,
    )
    assert [r.error is None for r in res] == [True, False, True]
    assert isinstance(res[1].error, CorruptInputError)
    assert res[2].bundle is not None and res[2].bundle.preprocess is not None
    assert res[2].bundle.preprocess.offset == [-1.0]
    assert res[0].bundle is not None and res[0].bundle.preprocess.offset == [0.0]


def _build_mediapipe_style_transpose_conv(out: Path) -> None:
    """A Keras Conv2DTranspose as builtin TFLite, and the same op re-encoded the way MediaPipe ships it:
    CUSTOM 'Convolution2DTransposeBias' with inputs (x, weights, bias) and raw TfLiteTransposeConvParams."""
    import struct

    import tensorflow as tf
    from tensorflow.lite.python import schema_py_generated as schema

    from replaybench.extract.convert import tflite_rewrite as rw

    tf.keras.utils.set_random_seed(0)
    m = tf.keras.Sequential(
        [
            tf.keras.Input((8, 8, 4), batch_size=1),
            tf.keras.layers.Conv2DTranspose(
                3, 4, strides=2, padding="same", bias_initializer="random_normal"
            ),
        ]
    )
    builtin = tf.lite.TFLiteConverter.from_keras_model(m).convert()
    (out / "builtin.tflite").write_bytes(builtin)
    model = rw.read(builtin)
    op = model.subgraphs[0].operators[0]
    assert rw.op_name(model, op) == "TRANSPOSE_CONV"
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = rw.CUSTOM
    code.customCode = "Convolution2DTransposeBias"
    code.version = 1
    model.operatorCodes.append(code)
    shape_in, w, x, b = (int(i) for i in op.inputs)
    op.opcodeIndex = len(model.operatorCodes) - 1
    op.inputs = np.array([x, w, b], dtype=np.int32)
    op.builtinOptionsType, op.builtinOptions = 0, None
    op.customOptions = np.frombuffer(struct.pack("<iii", 1, 2, 2), dtype=np.uint8)  # SAME, stride 2x2
    (out / "mediapipe_style.tflite").write_bytes(rw.to_bytes(model))


def test_mediapipe_transpose_conv_bias_handler(tmp_path):
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from tests.fixtures.cache import cached_build

    folder = cached_build("mp-transpose-conv", _build_mediapipe_style_transpose_conv)
    b = convert_model(folder / "mediapipe_style.tflite", tmp_path / "b", n_random=1)
    assert b.parity is not None and b.parity.passed
    assert b.conversion is not None and any("Convolution2DTransposeBias" in n for n in b.conversion.notes)
    assert b.conversion.cut_at == []
    # LiteRT's XNNPACK delegate runs MediaPipe's op, so parity ran the original model
    assert b.parity.reference == "original" and b.parity.reference_reason is None
    # independent reference: the builtin TRANSPOSE_CONV model the custom op was made from
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 4)).astype(np.float32)
    it = Interpreter(model_path=str(folder / "builtin.tflite"))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    ref = it.get_tensor(it.get_output_details()[0]["index"])
    s = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"))
    got = s.run(None, {s.get_inputs()[0].name: x})[0]
    assert got.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def _build_transpose_conv_with_runtime_weights(out: Path) -> None:
    """The MediaPipe-style model with its weights computed at run time (weights + 0 by a builtin ADD):
    XNNPACK only takes Convolution2DTransposeBias with static weights and the builtin kernels lack the
    op, so LiteRT cannot run this original at all; the rewrite (TRANSPOSE_CONV + ADD) it can."""
    from tensorflow.lite.python import schema_py_generated as schema

    from replaybench.extract.convert import tflite_rewrite as rw
    from tests.fixtures.cache import cached_build

    src = cached_build("mp-transpose-conv", _build_mediapipe_style_transpose_conv)
    model = rw.read((src / "mediapipe_style.tflite").read_bytes())
    sg = model.subgraphs[0]
    op = sg.operators[0]
    w = sg.tensors[int(op.inputs[1])]
    zeros, runtime_w = schema.TensorT(), schema.TensorT()
    for t, name in ((zeros, "zeros"), (runtime_w, "weights_at_run_time")):
        t.shape, t.type, t.name = np.asarray(w.shape, dtype=np.int32), w.type, name
    zeros.buffer = rw._add_buffer(model, np.zeros([int(d) for d in w.shape], dtype=np.float32).tobytes())
    runtime_w.buffer = 0
    sg.tensors += [zeros, runtime_w]
    add = schema.OperatorT()
    add.opcodeIndex = rw._opcode_index(model, rw.ADD, 1)
    add.inputs = np.array([int(op.inputs[1]), len(sg.tensors) - 2], dtype=np.int32)
    add.outputs = np.array([len(sg.tensors) - 1], dtype=np.int32)
    add.builtinOptionsType, add.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
    op.inputs = np.array([int(op.inputs[0]), len(sg.tensors) - 1, int(op.inputs[2])], dtype=np.int32)
    sg.operators = [add, *sg.operators]
    (out / "runtime_weights.tflite").write_bytes(rw.to_bytes(model))


def test_parity_against_the_rewrite_only_when_the_original_cannot_run(tmp_path, capsys):
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from tests.fixtures.cache import cached_build

    folder = cached_build("mp-transpose-conv-runtime-weights", _build_transpose_conv_with_runtime_weights)
    with pytest.raises(RuntimeError, match="Convolution2DTransposeBias"):  # LiteRT itself refuses it
        Interpreter(model_path=str(folder / "runtime_weights.tflite")).allocate_tensors()
    b = convert_model(folder / "runtime_weights.tflite", tmp_path / "b", n_random=1)
    assert b.parity is not None and b.parity.passed
    assert b.parity.reference == "rewritten"
    assert b.parity.reference_reason is not None
    assert "cannot run the original model" in b.parity.reference_reason
    assert "rewrote Convolution2DTransposeBias" in b.parity.reference_reason
    # recorded in bundle.json, and shown by inspect
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["parity"]["reference"] == "rewritten"
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "b")]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "REWRITTEN model" in text and "cannot run the original" in text
    # independent reference: the builtin TRANSPOSE_CONV model (weights + 0 = weights)
    src = cached_build("mp-transpose-conv", _build_mediapipe_style_transpose_conv)
    x = np.random.default_rng(4).standard_normal((1, 8, 8, 4)).astype(np.float32)
    it = Interpreter(model_path=str(src / "builtin.tflite"))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    ref = it.get_tensor(it.get_output_details()[0]["index"])
    s = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"))
    np.testing.assert_allclose(s.run(None, {s.get_inputs()[0].name: x})[0], ref, atol=1e-5)


def test_lite_only_ptl_is_named_clearly(tmp_path):
    import zipfile

    _, ptl = torch_models()
    lite_only = tmp_path / "bytecode_only.ptl"
    with zipfile.ZipFile(ptl) as src, zipfile.ZipFile(lite_only, "w") as dst:
        for info in src.infolist():
            if "/code/" not in info.filename and not info.filename.endswith("constants.pkl"):
                dst.writestr(info, src.read(info))
    assert sniff_format(lite_only) == "pytorch_lite"
    with pytest.raises(ConversionError, match="lite-interpreter-only"):
        convert_model(lite_only, tmp_path / "b", input_shape=[1, 3, 32, 32], runtime="onnx")
    # by default it is kept for torch's lite interpreter, which can run it
    b = convert_model(lite_only, tmp_path / "c", input_shape=[1, 3, 32, 32])
    assert b.runtime.name == "pytorch_lite" and "lite-interpreter-only" in (b.runtime.reason or "")
