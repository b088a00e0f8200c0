"""Export the student to an ONNX bundle: the whole model, its two halves, and int8 variants of the halves.

The bundle holds

* ``model.onnx``: the whole student (image uint8 NCHW 224x224, input_ids, attention_mask -> score);
* ``image.onnx`` (image -> 512-d embedding) and ``text_head.onnx`` (input_ids, attention_mask,
  image_embedding -> score): what bulk scoring runs, so image and text batches can be sized separately;
* ``image.int8.onnx``: static per-channel int8 QDQ, calibrated on real images (dynamic int8 makes CNNs
  several times slower on CPU: activations are re-quantised at run time for every conv);
* ``text_head.int8.onnx``: per-channel dynamic int8 (the transformer's MatMuls; activations vary too much
  per caption for one static range);
* ``tokenizer/``: the tokenizer files; ``bundle.json`` with the image preprocessing (normalisation is
  inside the graphs: the input is the raw 0..255 pixel), the text preprocessing, the torch parity report and
  the int8-vs-fp32 score difference, measured on posts disjoint from the ones int8 was calibrated on.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from replaybench._console import NullProgress, Progress
from replaybench.errors import ConversionError, DatasetError, InputNotFoundError, ParityError

IMAGE_ONNX = "image.onnx"
TEXT_HEAD_ONNX = "text_head.onnx"
IMAGE_INT8 = "image.int8.onnx"
TEXT_HEAD_INT8 = "text_head.int8.onnx"
TOKENIZER_DIR = "tokenizer"
OPSET = 17
PARITY_TOLERANCE = 1e-3  # score points (0-10): fp32 ONNX vs torch


class ExportResult(BaseModel):
    """What export wrote and measured (the CLI's report)."""

    model_config = ConfigDict(extra="forbid")

    output: str
    files: list[str]
    parity_max_abs_diff: float
    parity_passed: bool
    int8_max_abs_diff: float | None
    int8_mean_abs_diff: float | None
    calibration_posts: list[str]  # post ids the int8 image encoder was calibrated on
    int8_eval_posts: list[str]  # post ids the int8 error was measured on: none of calibration_posts
    int8_eval_source: str | None  # where those came from, in words
    inputs_tried: int
    seconds: float


@dataclass
class Samples:
    """Real posts for export: ``calibration`` sets the int8 ranges, ``evaluation`` (disjoint) measures int8."""

    images: np.ndarray
    captions: list[str]
    post_ids: list[str]
    eval_images: np.ndarray
    eval_captions: list[str]
    eval_post_ids: list[str]
    eval_source: str


def _samples(student_dir: Path, posts: Path | None, allow_outside: bool = False) -> Samples:
    """Calibration and evaluation posts, disjoint by post id.

    From ``posts`` (--calibration): the first posts with a readable image, the first half (up to
    CALIBRATION_SIZE) to calibrate, the rest (up to HOLDOUT_SIZE) to evaluate. Else from the student's
    calibration.npz: training posts calibrate, held-out test (then validation) posts evaluate.
    """
    from replaybench.distill.images import try_decode
    from replaybench.distill.label import group_posts
    from replaybench.distill.train import CALIBRATION_NPZ, CALIBRATION_SIZE, HOLDOUT_SIZE
    from replaybench.replay.posts import read_posts

    empty = np.zeros((0, 3, 224, 224), np.uint8)
    if posts is not None:
        images, captions, ids = [], [], []
        for pid, items in group_posts(read_posts(posts, allow_outside=allow_outside)).items():
            for it in items:  # one image per post, so a carousel never lands on both sides
                arr, _ = try_decode(it.path)
                if arr is not None:
                    images.append(arr)
                    captions.append(it.caption or "")
                    ids.append(pid)
                    break
            if len(images) >= CALIBRATION_SIZE + HOLDOUT_SIZE:
                break
        if images:
            n_cal = min(CALIBRATION_SIZE, (len(images) + 1) // 2)
            return Samples(
                np.stack(images[:n_cal]), captions[:n_cal], ids[:n_cal],
                np.stack(images[n_cal:]) if len(images) > n_cal else empty, captions[n_cal:], ids[n_cal:],
                f"posts of {posts} not used for calibration",
            )  # fmt: skip
    npz = student_dir / CALIBRATION_NPZ
    if not npz.is_file():
        raise InputNotFoundError(
            f"no calibration images: {npz} is missing and no --calibration posts were given",
            hint="pass --calibration POSTS (a few dozen real posts)",
        )
    with np.load(npz, allow_pickle=False) as z:
        if "eval_images" not in z.files:
            raise InputNotFoundError(
                f"{npz} predates held-out evaluation posts (it has calibration posts only)",
                hint="retrain the student, or pass --calibration POSTS",
            )
        splits = [str(s) for s in z["eval_splits"]]
        n_test, n_val = splits.count("test"), splits.count("val")
        return Samples(
            z["images"], [str(c) for c in z["captions"]], [str(i) for i in z["post_ids"]],
            z["eval_images"], [str(c) for c in z["eval_captions"]], [str(i) for i in z["eval_post_ids"]],
            f"held-out posts of the student's training ({n_test} test, {n_val} validation); "
            "calibrated on training posts",
        )  # fmt: skip


def _encode(tokenizer: Any, captions: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    enc = tokenizer(captions, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def export_student(
    student_dir: Path,
    output: Path,
    *,
    calibration_posts: Path | None = None,
    int8: bool = True,
    progress: Progress | None = None,
    allow_outside: bool = False,
) -> ExportResult:
    """Write a student bundle (ONNX fp32 + int8, tokenizer, bundle.json) and check it against torch.

    Example: ``export_student(Path("student"), Path("student-bundle"))``. Raises ParityError when the
    fp32 graphs disagree with torch by more than PARITY_TOLERANCE score points.
    """
    import torch

    from replaybench.distill.student import load_student, modules

    t0 = time.perf_counter()
    progress = progress or NullProgress()
    student, tokenizer, config = load_student(student_dir)
    samples = _samples(student_dir, calibration_posts, allow_outside)
    images, captions = samples.images, samples.captions
    if int8 and len(samples.eval_images) == 0:
        raise DatasetError(
            f"no posts left to measure int8 on: all {len(images)} readable posts calibrate it",
            hint="give --calibration POSTS with at least two readable posts, or --no-int8",
        )
    if len(images) == 0:
        raise DatasetError("no readable calibration post")
    output.mkdir(parents=True, exist_ok=True)
    progress.start(4 if int8 else 3, "exporting student")

    n = min(8, len(images))
    ids, mask = _encode(tokenizer, captions[:n], config.max_length)
    img = torch.from_numpy(images[:n])
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    text_head = modules()["TextHead"](student.text, student.head).eval()
    with torch.no_grad():
        emb = student.image(img)
        expected = student(img, t_ids, t_mask).numpy()
    seq = {0: "batch", 1: "sequence"}
    try:
        with torch.no_grad():
            torch.onnx.export(
                student.image, (img,), str(output / IMAGE_ONNX), input_names=["image"],
                output_names=["image_embedding"], opset_version=OPSET, dynamo=False,
                dynamic_axes={"image": {0: "batch"}, "image_embedding": {0: "batch"}},
            )  # fmt: skip
            torch.onnx.export(
                text_head, (t_ids, t_mask, emb), str(output / TEXT_HEAD_ONNX),
                input_names=["input_ids", "attention_mask", "image_embedding"], output_names=["score"],
                opset_version=OPSET, dynamo=False,
                dynamic_axes={"input_ids": seq, "attention_mask": seq, "image_embedding": {0: "batch"},
                              "score": {0: "batch"}},
            )  # fmt: skip
            progress.advance()
            torch.onnx.export(
                student, (img, t_ids, t_mask), str(output / "model.onnx"),
                input_names=["image", "input_ids", "attention_mask"], output_names=["score"],
                opset_version=OPSET, dynamo=False,
                dynamic_axes={"image": {0: "batch"}, "input_ids": seq, "attention_mask": seq,
                              "score": {0: "batch"}},
            )  # fmt: skip
            progress.advance()
    except Exception as e:
        raise ConversionError(f"torch.onnx.export failed for the student: {e}") from e

    # Parity: the whole graph and the two halves chained, against torch, on real images and captions.
    whole = _session(output / "model.onnx").run(
        None, {"image": images[:n], "input_ids": ids, "attention_mask": mask}
    )[0]
    chained = run_split(output / IMAGE_ONNX, output / TEXT_HEAD_ONNX, images[:n], ids, mask)
    diff = float(max(np.abs(whole - expected).max(), np.abs(chained - expected).max()))
    passed = diff <= PARITY_TOLERANCE
    progress.advance()

    int8_max = int8_mean = None
    if int8:
        quantize_image_encoder(output / IMAGE_ONNX, output / IMAGE_INT8, images)
        quantize_text_head(output / TEXT_HEAD_ONNX, output / TEXT_HEAD_INT8)
        # Measured on posts that did not set the quantisation ranges: on the calibration posts themselves
        # int8 looks better than it is on the posts it will score.
        eval_ids, eval_mask = _encode(tokenizer, samples.eval_captions, config.max_length)
        ev = samples.eval_images
        fp = run_split(output / IMAGE_ONNX, output / TEXT_HEAD_ONNX, ev, eval_ids, eval_mask)
        q = run_split(output / IMAGE_INT8, output / TEXT_HEAD_INT8, ev, eval_ids, eval_mask)
        int8_max, int8_mean = float(np.abs(q - fp).max()), float(np.abs(q - fp).mean())
        progress.advance()
    progress.close()

    tok_dir = output / TOKENIZER_DIR
    tok_dir.mkdir(exist_ok=True)
    for f in sorted((student_dir / "text_encoder").iterdir()):
        if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens")) or f.name in ("vocab.txt",)):
            shutil.copy2(f, tok_dir / f.name)
    if not (tok_dir / "tokenizer.json").is_file():
        raise ConversionError("the student's tokenizer has no tokenizer.json (a fast tokenizer is needed)")
    bundle = _bundle_doc(output, config, tokenizer, diff, passed, n, int8_max, int8_mean, samples, int8)
    bundle.write(output)
    if not passed:
        raise ParityError(
            f"exported student disagrees with torch by {diff:.2e} score points (tolerance {PARITY_TOLERANCE})"
        )
    files = sorted(p.name for p in output.iterdir())
    return ExportResult(
        output=str(output),
        files=files,
        parity_max_abs_diff=diff,
        parity_passed=passed,
        int8_max_abs_diff=int8_max,
        int8_mean_abs_diff=int8_mean,
        calibration_posts=samples.post_ids,
        int8_eval_posts=samples.eval_post_ids if int8 else [],
        int8_eval_source=samples.eval_source if int8 else None,
        inputs_tried=n,
        seconds=time.perf_counter() - t0,
    )


def run_split(
    image_model: Path, text_model: Path, images: np.ndarray, ids: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Scores from the two-graph form (used for parity and the int8 comparison)."""
    emb = _session(image_model).run(None, {"image": images})[0]
    return _session(text_model).run(None, {"input_ids": ids, "attention_mask": mask, "image_embedding": emb})[
        0
    ]


class _ImageReader:
    """CalibrationDataReader over real uint8 images, a few at a time."""

    def __init__(self, images: np.ndarray, batch: int = 4) -> None:
        self._batches = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._batches, None)
        return None if b is None else {"image": b}


def quantize_image_encoder(src: Path, dst: Path, images: np.ndarray) -> None:
    """Static per-channel int8 QDQ (u8 activations, s8 weights), calibrated on ``images``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.stem + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # folds BN into conv first
        quantize_static(
            str(pre),
            str(dst),
            _ImageReader(images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    except Exception as e:
        raise ConversionError(f"static int8 quantisation of the image encoder failed: {e}") from e
    finally:
        pre.unlink(missing_ok=True)


def quantize_text_head(src: Path, dst: Path) -> None:
    """Per-channel dynamic int8 for the transformer and head MatMuls."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The head stays fp32: it is <1% of the compute, and its first layer carries the folded feature
    # standardisation (columns of very different magnitude) that one int8 scale per channel would crush.
    # The quantiser rewrites Gemm as "<name>_MatMul" + Add before matching names, hence both spellings.
    graph = onnx.load(str(src), load_external_data=False).graph
    head = [n.name for n in graph.node if n.name.startswith("/head/")]
    exclude = head + [f"{n}_MatMul" for n in head]
    try:
        quantize_dynamic(
            str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=exclude
        )
    except Exception as e:
        raise ConversionError(f"dynamic int8 quantisation of the text encoder failed: {e}") from e


def _bundle_doc(
    output: Path,
    config: Any,
    tokenizer: Any,
    diff: float,
    passed: bool,
    n: int,
    int8_max: float | None,
    int8_mean: float | None,
    samples: Samples,
    int8: bool,
) -> Any:
    import torch

    from replaybench.bundle import (
        Bundle,
        ConversionInfo,
        Decoder,
        GraphPart,
        IOSpec,
        OutputParity,
        ParityReport,
        PostprocessSpec,
        PreprocessSpec,
        Provenance,
        ResizeSpec,
        SourceInfo,
        TensorSpec,
        TextPreprocessSpec,
        VariantReport,
    )

    sha = hashlib.sha256((output / "model.onnx").read_bytes()).hexdigest()
    prov = {k: Provenance.USER for k in ("resize", "color_order", "layout", "dtype", "scale", "offset")}
    return Bundle(
        name="distill-student",
        source=SourceInfo(format="replaybench-student", runtime="torch", sha256=sha, file=None),
        io=IOSpec(
            inputs=[
                TensorSpec(name="image", shape=["batch", 3, 224, 224], dtype="uint8", layout="NCHW"),
                TensorSpec(name="input_ids", shape=["batch", "sequence"], dtype="int64", layout="NC"),
                TensorSpec(name="attention_mask", shape=["batch", "sequence"], dtype="int64", layout="NC"),
            ],
            outputs=[TensorSpec(name="score", shape=["batch"], dtype="float32", layout="other")],
        ),
        preprocess=PreprocessSpec(
            jpeg_draft=True,  # distill/images.py decodes JPEGs at reduced scale for training: same pixels
            resize=ResizeSpec(width=224, height=224, method="bilinear_pil"),
            color_order="RGB",
            layout="NCHW",
            dtype="uint8",
            scale=[1.0],
            offset=[0.0],
            provenance=prov,
            notes=[
                "ImageNet mean/std normalisation is inside the graphs; feed raw 0..255 pixels",
                "JPEGs decode at reduced scale (jpeg_draft) then resize bilinear to 224x224, EXIF-rotated",
            ],
        ),
        postprocess=PostprocessSpec(
            task="score",
            decoders=[Decoder(output="score", field="score", kind="scale")],
            notes=["gender-bias score 0-10 (higher = more female-oriented); buckets 0-3, 4-6, 7-10"],
        ),
        parity=ParityReport(
            reference_runtime="torch",
            reference="original",
            inputs_tried=n,
            input_kinds=["calibration-posts"],
            outputs=[
                OutputParity(
                    name="score",
                    shape_match=True,
                    dtype_match=True,
                    max_abs_diff=diff,
                    max_rel_diff=diff / 10.0,
                    tolerance=PARITY_TOLERANCE,
                    passed=passed,
                )  # fmt: skip
            ],
            passed=passed,
            note="model.onnx and image.onnx -> text_head.onnx both checked",
        ),
        conversion=ConversionInfo(
            converter="torch.onnx.export", converter_version=torch.__version__, opset=OPSET
        ),
        text=TextPreprocessSpec(
            tokenizer=TOKENIZER_DIR,
            max_length=config.max_length,
            pad_id=int(tokenizer.pad_token_id or 0),
            provenance=Provenance.USER,
        ),
        parts=[
            GraphPart(
                role="image_encoder",
                file=IMAGE_ONNX,
                inputs=["image"],
                outputs=["image_embedding"],
                file_int8=IMAGE_INT8 if int8 else None,
                quantization="static QDQ int8, per-channel weights, MinMax calibration" if int8 else None,
            ),  # fmt: skip
            GraphPart(
                role="text_head",
                file=TEXT_HEAD_ONNX,
                inputs=["input_ids", "attention_mask", "image_embedding"],
                outputs=["score"],
                file_int8=TEXT_HEAD_INT8 if int8 else None,
                quantization="dynamic int8, per-channel weights" if int8 else None,
            ),  # fmt: skip
        ],
        variants=(
            [
                VariantReport(
                    name="int8",
                    output="score",
                    inputs_tried=len(samples.eval_post_ids),
                    max_abs_diff=float(int8_max or 0.0),
                    mean_abs_diff=float(int8_mean or 0.0),
                    notes=[
                        "image.int8.onnx -> text_head.int8.onnx vs the fp32 pair, on "
                        f"{len(samples.eval_post_ids)} posts not used for calibration: {samples.eval_source}",
                        f"calibrated on {len(samples.post_ids)} other posts",
                    ],
                )  # fmt: skip
            ]
            if int8
            else []
        ),
    )
