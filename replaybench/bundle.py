"""The bundle: the hand-off from extract/convert to replay (see DESIGN.md, "Contracts between stages").

A bundle is a folder::

    model.onnx        the converted model
    source.<ext>      the original blob, byte-exact (source.tflite, source.ptl, ...)
    labels.txt        optional, one label per line
    bundle.json       this module's ``Bundle`` document

Every preprocessing field records where it came from (``Provenance``) so a researcher can tell a value
read off a device trace from a documented default. The schema is versioned; readers refuse a newer major.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from replaybench.errors import CorruptInputError, InputNotFoundError

# 2: parity.reference / parity.reference_reason (optional fields: version-1 bundles still load)
BUNDLE_SCHEMA_VERSION = 2
BUNDLE_JSON = "bundle.json"
MODEL_ONNX = "model.onnx"
LABELS_TXT = "labels.txt"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provenance(StrEnum):
    """Where a preprocessing value came from, strongest evidence first."""

    TRACE = "trace"  # solved from (bitmap, input tensor) pairs captured on a device
    METADATA = "metadata"  # model metadata (TFLite Support NormalizationOptions, ...)
    APP_CODE = "app_code"  # constants read from the app's code (new NormalizeOp(127.5f, 127.5f))
    USER = "user"  # given on the command line / in a spec file
    DEFAULT = "default"  # documented default, nothing better known


ResizeMethod = Literal[
    "nearest",  # nearest neighbour (Android createScaledBitmap filter=false)
    "bilinear_android",  # Android createScaledBitmap(filter=true) / Skia bilinear
    "bilinear_tf",  # tf.image.resize bilinear, half_pixel_centers (TFLite support ResizeOp)
    "bilinear_tf_legacy",  # tf.compat.v1 resize_bilinear, align_corners=False, no half pixel
    "bilinear_pil",  # PIL Image.BILINEAR (antialiased when downscaling)
    "area",  # area averaging / antialiased (OpenCV INTER_AREA, PIL BOX)
    "bicubic_pil",
]


class QuantParams(Strict):
    """Affine quantisation: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int


class ResizeSpec(Strict):
    width: int
    height: int
    method: ResizeMethod = "bilinear_tf"
    keep_aspect: bool = False  # letterbox-free: scale the short side, then crop (see crop)
    crop: Literal["none", "center"] = "none"  # centre-crop to the target aspect before resizing
    crop_box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) as fractions of the image


class PreprocessSpec(Strict):
    """How an image becomes the model's input tensor.

    ``tensor = pixel * scale[c] + offset[c]`` per channel (pixel in 0..255 after colour conversion),
    then, when ``quantization`` is set, ``q = clip(round(tensor / q.scale + q.zero_point))`` in ``dtype``.
    Equivalent mean/std form: ``mean = -offset / scale``, ``std = 1 / scale``.
    """

    resize: ResizeSpec
    color_order: Literal["RGB", "BGR", "GRAY"] = "RGB"
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    dtype: Literal["float32", "float16", "uint8", "int8"] = "float32"
    scale: list[float] = Field(default_factory=lambda: [1.0 / 255.0])
    offset: list[float] = Field(default_factory=lambda: [0.0])
    quantization: QuantParams | None = None
    provenance: dict[str, Provenance] = Field(default_factory=dict)  # field name -> where it came from
    residual: dict[str, float] = Field(default_factory=dict)  # field name -> fit residual (trace fields)
    alternatives: list[dict[str, object]] = Field(default_factory=list)  # ranked runners-up with residuals
    notes: list[str] = Field(default_factory=list)

    @property
    def mean(self) -> list[float]:
        return [-o / s for o, s in zip(self.offset, self.scale, strict=True)]

    @property
    def std(self) -> list[float]:
        return [1.0 / s for s in self.scale]


class TensorSpec(Strict):
    name: str
    shape: list[int | str | None]
    dtype: str
    layout: Literal["NHWC", "NCHW", "NC", "NTC", "other"] | None = None
    quantization: QuantParams | None = None


class IOSpec(Strict):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class SourceInfo(Strict):
    app: str | None = None  # package name (or None for a loose model file)
    app_version: str | None = None
    container: list[str] = Field(default_factory=list)  # container chain, outermost first
    entry: str | None = None  # entry path inside the innermost container
    offset: int = 0  # byte offset inside the entry (models embedded in .so files)
    format: str  # detector key: tflite, onnx, torchscript, pytorch_lite, savedmodel, ...
    runtime: str | None = None  # runtime the app uses for it (tflite, pytorch_mobile, onnxruntime, ...)
    sha256: str
    file: str | None = None  # name of the original blob inside the bundle (source.tflite, ...)


DecoderKind = Literal[
    "scale",  # field = output[index] * factor + offset (age = out * 116)
    "softmax_argmax",  # label = labels[argmax]; p_<label> per class (softmax applied when not already)
    "sigmoid",  # p = sigmoid(out) (or out when already a probability) per label
    "expectation",  # field = sum(p_i * bin_value_i) (age as expectation over bins)
    "topk",  # top-k labels with scores (multi-label concepts)
    "raw",  # keep the raw output only
]


class Decoder(Strict):
    output: str = ""  # ONNX output name; "" = the model's only output (bound when the bundle is written)
    field: str  # predictions column name (age_pred, gender_pred, concepts, ...)
    kind: DecoderKind
    index: int | None = None  # element of the output to read (scale)
    factor: float = 1.0
    offset: float = 0.0
    labels: list[str] | None = None
    bin_values: list[float] | None = None  # expectation
    apply_softmax: bool | None = None  # None: infer (apply when the row does not sum to 1)
    k: int = 5
    threshold: float | None = None


class PostprocessSpec(Strict):
    task: Literal["classification", "regression", "multilabel", "detection", "score", "raw"] = "raw"
    labels: list[str] | None = None
    decoders: list[Decoder] = Field(default_factory=list)
    detection: dict[str, object] | None = None  # detector decode settings (anchors, variances, ...)
    provenance: Provenance = Provenance.DEFAULT
    notes: list[str] = Field(default_factory=list)


class OutputParity(Strict):
    name: str
    shape_match: bool
    dtype_match: bool
    max_abs_diff: float
    max_rel_diff: float
    max_quant_steps: float | None = None
    tolerance: float
    passed: bool


ParityReference = Literal["original", "rewritten"]


class ParityReport(Strict):
    reference_runtime: str  # ai-edge-litert 2.3.0, torch.jit, tensorflow, onnxruntime (source file), ...
    # What the reference runtime ran: the original blob, or a rewrite of it (densified, custom ops
    # replaced) only where the original cannot run on this host; reference_reason says why. None in
    # bundles written before schema version 2 (their TFLite parity may be against a rewritten model).
    reference: ParityReference | None = None
    reference_reason: str | None = None
    inputs_tried: int
    input_kinds: list[str] = Field(default_factory=list)  # random-range, trace, ...
    outputs: list[OutputParity] = Field(default_factory=list)
    passed: bool
    allow_mismatch: bool = False
    # onnxruntime graph optimisation level parity was measured with ("all", "disabled"); replay should run
    # the bundle the same way (quantised models: "disabled", see replaybench.extract.convert.parity).
    onnxruntime_optimization: str | None = None
    note: str | None = None


class ConversionInfo(Strict):
    converter: str  # tf2onnx.from_tflite, torch.onnx.export, passthrough, ...
    converter_version: str | None = None
    opset: int | None = None
    seconds: float | None = None
    cut_at: list[str] = Field(default_factory=list)  # custom ops the graph was cut before
    cut_tensors: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class TextPreprocessSpec(Strict):
    """How a caption becomes the text inputs (student bundles): a Hugging Face fast tokenizer in the bundle."""

    tokenizer: str = "tokenizer"  # folder inside the bundle holding tokenizer.json
    max_length: int = 128  # truncation length, special tokens included
    padding: Literal["dynamic", "max_length"] = "dynamic"  # dynamic: pad to the longest in the batch
    pad_id: int = 0
    input_ids: str = "input_ids"
    attention_mask: str = "attention_mask"
    provenance: Provenance = Provenance.DEFAULT


class GraphPart(Strict):
    """One ONNX graph of a multi-graph bundle (the student: image encoder, text encoder + head)."""

    role: str  # image_encoder, text_head, ...
    file: str  # fp32 graph inside the bundle
    inputs: list[str]
    outputs: list[str]
    file_int8: str | None = None  # quantised variant
    quantization: str | None = None  # how file_int8 was made (static QDQ per-channel, dynamic per-channel)


class VariantReport(Strict):
    """How far a quantised variant's outputs are from the fp32 graph's, on real inputs."""

    name: str  # int8
    output: str
    inputs_tried: int
    max_abs_diff: float
    mean_abs_diff: float
    notes: list[str] = Field(default_factory=list)


_SpecT = TypeVar("_SpecT", "PreprocessSpec", "PostprocessSpec")


class Bundle(Strict):
    schema_version: int = BUNDLE_SCHEMA_VERSION
    name: str
    source: SourceInfo
    io: IOSpec
    preprocess: PreprocessSpec | None = None
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec)
    parity: ParityReport | None = None
    conversion: ConversionInfo | None = None
    text: TextPreprocessSpec | None = None  # set for models with a caption input (the student)
    parts: list[GraphPart] = Field(default_factory=list)  # split graphs, when the bundle has them
    variants: list[VariantReport] = Field(default_factory=list)  # quantised variants vs fp32

    def write(self, folder: Path) -> Path:
        """Write ``bundle.json`` into ``folder`` (created if needed) and return its path."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / BUNDLE_JSON
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path


class LoadedBundle(Strict):
    """A bundle read from disk: the document plus the folder it lives in."""

    folder: Path
    bundle: Bundle

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_ONNX

    @property
    def labels(self) -> list[str] | None:
        p = self.folder / LABELS_TXT
        if p.is_file():
            return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        return self.bundle.postprocess.labels


def load_bundle(folder: Path) -> LoadedBundle:
    """Read a bundle folder. Raises InputNotFoundError / CorruptInputError with the reason."""
    from pydantic import ValidationError

    folder = Path(folder)
    doc = folder / BUNDLE_JSON
    if not doc.is_file():
        raise InputNotFoundError(
            f"not a bundle: {folder} has no {BUNDLE_JSON}",
            hint="make one with: replaybench convert MODEL -o BUNDLE",
        )
    try:
        bundle = Bundle.model_validate_json(doc.read_text(encoding="utf-8"))
    except ValidationError as e:
        raise CorruptInputError(f"{doc} is not a valid bundle document: {e}") from e
    if bundle.schema_version > BUNDLE_SCHEMA_VERSION:
        raise CorruptInputError(
            f"{doc} has schema version {bundle.schema_version}; this replaybench reads up to "
            f"{BUNDLE_SCHEMA_VERSION}",
            hint="upgrade replaybench",
        )
    if not (folder / MODEL_ONNX).is_file():
        raise CorruptInputError(f"bundle {folder} has no {MODEL_ONNX}")
    return LoadedBundle(folder=folder, bundle=bundle)


def read_spec(path: Path, kind: type[_SpecT]) -> _SpecT:
    """A ``PreprocessSpec`` or ``PostprocessSpec`` from its own JSON file or from a bundle's bundle.json
    (its ``preprocess`` / ``postprocess`` block), so one bundle's recovered settings can seed another.

    Raises InputNotFoundError for a missing file and UsageError for one that holds no such spec.
    """
    import json

    from pydantic import ValidationError

    from replaybench.errors import UsageError

    path = Path(path)
    if path.is_dir():
        path = path / BUNDLE_JSON
    if not path.is_file():
        raise InputNotFoundError(f"spec file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "schema_version" in doc and "io" in doc:  # a bundle.json
            doc = doc.get("preprocess" if kind is PreprocessSpec else "postprocess")
        return kind.model_validate(doc)
    except (ValueError, ValidationError) as e:
        raise UsageError(f"{path} holds no valid {kind.__name__}: {e}") from e
