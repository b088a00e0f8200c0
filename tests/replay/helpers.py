"""Small real bundles and datasets for the replay tests (tiny ONNX graphs built with onnx.helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from replaybench.bundle import (
    Bundle,
    Decoder,
    IOSpec,
    PostprocessSpec,
    PreprocessSpec,
    ResizeSpec,
    SourceInfo,
    TensorSpec,
)

W_GENDER = np.array([[0.9, -0.4], [-0.3, 0.8], [0.2, -0.6]], np.float32) * 6.0
W_AGE = np.array([[0.5], [0.25], [0.125]], np.float32)


def tiny_model(batch: int | str = "N", size: int = 16, bake_batch: bool = False) -> bytes:
    """image f32[batch,size,size,3] -> probs f32[batch,2] (softmax of mean colour x W), age f32[batch,1].

    ``bake_batch``: a Reshape to the constant [1, 3] bakes batch 1 into the graph (cannot be batched).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0)]
    mean = "mean"
    inits = [
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(W_GENDER, "w_gender"),
        numpy_helper.from_array(np.array([0.1, -0.1], np.float32), "b_gender"),
        numpy_helper.from_array(W_AGE, "w_age"),
    ]
    if bake_batch:
        inits.append(numpy_helper.from_array(np.array([1, 3], np.int64), "shape13"))
        nodes.append(helper.make_node("Reshape", ["mean", "shape13"], ["mean_r"]))
        mean = "mean_r"
    nodes += [
        helper.make_node("MatMul", [mean, "w_gender"], ["mm"]),
        helper.make_node("Add", ["mm", "b_gender"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("MatMul", [mean, "w_age"], ["age"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, size, size, 3])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 2]),
            helper.make_tensor_value_info("age", TensorProto.FLOAT, [batch, 1]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_bundle(
    folder: Path,
    model: bytes,
    name: str,
    preprocess: PreprocessSpec | None,
    decoders: list[Decoder],
    labels: list[str] | None = None,
    task: str = "classification",
    detection: dict[str, object] | None = None,
) -> Path:
    """A bundle folder: model.onnx + bundle.json (io read from the graph)."""
    import hashlib

    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model)
    m = onnx.load_from_string(model)
    init = {i.name for i in m.graph.initializer}

    def spec(vi: onnx.ValueInfoProto) -> TensorSpec:
        dims = [
            d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim
        ]
        return TensorSpec(name=vi.name, shape=dims, dtype="float32")

    Bundle(
        name=name,
        source=SourceInfo(format="onnx", sha256=hashlib.sha256(model).hexdigest()),
        io=IOSpec(
            inputs=[spec(i) for i in m.graph.input if i.name not in init],
            outputs=[spec(o) for o in m.graph.output],
        ),
        preprocess=preprocess,
        postprocess=PostprocessSpec(task=task, labels=labels, decoders=decoders, detection=detection),  # type: ignore[arg-type]
    ).write(folder)
    return folder


def tiny_bundle(
    folder: Path, name: str = "tiny", size: int = 16, method: str = "bilinear_tf", **model_kw: object
) -> Path:
    pre = PreprocessSpec(resize=ResizeSpec(width=size, height=size, method=method))  # type: ignore[arg-type]
    decoders = [
        Decoder(output="probs", field="gender_pred", kind="softmax_argmax", labels=["male", "female"]),
        Decoder(output="age", field="age_pred", kind="scale", index=0, factor=116.0),
    ]
    return write_bundle(folder, tiny_model(size=size, **model_kw), name, pre, decoders)  # type: ignore[arg-type]


def utk_images(folder: Path, n: int, size: int = 40, seed: int = 0) -> list[Path]:
    """``n`` random-colour JPEGs named like UTKFace (age_gender_race_datetime.jpg.chip.jpg)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, size=3)
        arr = np.clip(base + rng.integers(-40, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
        p = folder / f"{20 + i % 50}_{i % 2}_{i % 5}_2017011{i:06d}.jpg.chip.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def tflite_to_onnx(out: Path, tflite: str) -> None:
    """``cached_build`` builder: a real TFLite model converted with tf2onnx into ``out/model.onnx``."""
    import tf2onnx

    tf2onnx.convert.from_tflite(tflite, opset=13, output_path=str(out / "model.onnx"))
