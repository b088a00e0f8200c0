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
from typing import Any, Literal, TypeVar

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
    # Solved from a trace but NOT accepted: the best candidate does not reproduce the captured tensors
    # within the acceptance rule (see ``replaybench.extract.preprocess.acceptance_tolerance``). Replay
    # refuses such a bundle unless told ``--accept-unresolved``.
    TRACE_UNRESOLVED = "trace_unresolved"


ResizeMethod = Literal[
    "nearest",  # nearest neighbour (Android createScaledBitmap filter=false)
    "bilinear_android",  # Android createScaledBitmap(filter=true) / Skia bilinear
    "bilinear_tf",  # tf.image.resize bilinear, half_pixel_centers (TFLite RESIZE_BILINEAR)
    "bilinear_tf_legacy",  # tf.compat.v1 resize_bilinear, align_corners=False, no half pixel
    "bilinear_pil",  # PIL Image.BILINEAR (antialiased when downscaling)
    "area",  # OpenCV INTER_AREA (area averaging down, bilinear up)
    "bicubic_pil",
]


class QuantParams(Strict):
    """Affine quantisation: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int


# 2: letterbox pad/placement, shorter side, rotation/mirror, source format; 3: jpeg_draft
PREPROCESS_SPEC_VERSION = 3


class ResizeSpec(Strict):
    """The geometry from the (oriented) source image to the tensor's width x height, in this order:

    1. ``crop_box`` (fractions of the source, before orientation) when set;
    2. one of: ``shorter_side`` S set: resize so the shorter side is S (the longer ``int(S * long /
       short)``, torchvision ``Resize(S)``), then centre-crop width x height (torchvision
       ``CenterCrop``); ``keep_aspect`` (letterbox): scale to fit inside, place the content at
       ``placement``, pad the rest with ``pad_value``; ``crop == "center"``: centre-crop the source to the
       target aspect, then resize; otherwise stretch to width x height.
    """

    width: int
    height: int
    method: ResizeMethod = "bilinear_tf"
    keep_aspect: bool = False  # letterbox: scale to fit inside width x height, pad the rest
    crop: Literal["none", "center"] = "none"  # centre-crop to the target aspect before resizing
    crop_box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) as fractions of the image
    # Letterbox only: where the content goes, how its size rounds (Java's (int) cast: floor; Python's
    # round(): half to even; Java's Math.round: half up), and the padding colour in 0..255 pixel units
    # per RGB channel (one value: all).
    # center: the odd pixel of padding after the content ((W - w) / 2 in integers); center_up: before it
    # (Math.round((W - w) / 2f)); top_left: all padding right and below.
    placement: Literal["center", "center_up", "top_left"] = "center"
    rounding: Literal["round", "floor", "half_up"] = "round"
    pad_value: list[float] = Field(default_factory=lambda: [0.0])
    shorter_side: int | None = None  # torchvision Resize(S) + CenterCrop(width, height)
    # The app crops a different region of every frame (a detected face) and only that crop reaches the
    # model: replay must be given such crops (a dataset of crops, or --faces); no fixed box reproduces it.
    roi: Literal["fixed", "per_image"] = "fixed"


class PreprocessSpec(Strict):
    """How an image becomes the model's input tensor.

    ``tensor = pixel * scale[c] + offset[c]`` per channel (pixel in 0..255 after colour conversion),
    then, when ``quantization`` is set, ``q = clip(round(tensor / q.scale + q.zero_point))`` in ``dtype``.
    Equivalent mean/std form: ``mean = -offset / scale``, ``std = 1 / scale``.
    """

    version: int = PREPROCESS_SPEC_VERSION
    # What the app's source image is: an ARGB Bitmap ("rgb") or a camera frame (NV21 / I420 planes,
    # BT.601 limited range) the app converts to RGB first. Replay of RGB photos through a "nv21"/"i420"
    # spec round-trips them through that YUV format (chroma subsampling and limited range included).
    source_format: Literal["rgb", "nv21", "i420"] = "rgb"
    # Orientation applied to the source (after crop_box, before resizing): rotate clockwise by
    # ``rotation`` degrees, then mirror left-right when ``mirror`` (front-camera frames).
    rotation: Literal[0, 90, 180, 270] = 0
    mirror: bool = False
    # The source JPEG is decoded at reduced scale inside libjpeg (the strongest DCT scaling that keeps it
    # at least the tensor's size: Pillow's ``draft``), as the model's own pipeline did (the student is
    # trained on such decodes). Part of the pixels, unlike ``replay --fast-decode``, an approximation.
    jpeg_draft: bool = False
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
    def unresolved(self) -> bool:
        """True when the trace did not determine this spec (see ``Provenance.TRACE_UNRESOLVED``)."""
        return Provenance.TRACE_UNRESOLVED in self.provenance.values()

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


RuntimeName = Literal["onnxruntime", "tflite", "ncnn", "mnn", "pytorch_lite"]


class RuntimeInfo(Strict):
    """What replay runs the model with: the converted ``model.onnx`` in onnxruntime, or the app's own
    engine on the original files (see ``replaybench.replay.runtimes``), and why."""

    name: RuntimeName = "onnxruntime"
    files: list[str] = Field(default_factory=lambda: [MODEL_ONNX])  # inside the bundle, in the engine's order
    version: str | None = None  # the engine's version on the host that wrote the bundle
    reason: str | None = None  # why not onnxruntime (no converter, parity failed, asked with --runtime)


class OutputFidelity(Strict):
    """One model output: replay's value against the app's own, over every checked invoke."""

    name: str  # the bundle's (ONNX) output name
    traced_name: str | None = None  # the app's tensor it was compared with
    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff / max |app output| (relative to the output's magnitude)
    max_quant_steps: float | None = None  # integer outputs: the largest difference in quantisation steps
    tolerance: float  # the largest max_abs_diff that passes (see FidelityReport.rtol / atol)
    passed: bool


class FieldAgreement(Strict):
    """One decoded field (a postprocess decoder's column): does replay decode what the app's outputs do."""

    field: str
    kind: Literal["label", "number", "other"]
    agreed: int  # invokes on which the two agree
    total: int
    max_abs_diff: float | None = None  # numeric fields
    tolerance: float | None = None
    passed: bool


class FidelityReport(Strict):
    """End-to-end fidelity on the traced invokes: replay's preprocessing + ``model.onnx`` run on the
    bitmaps the app fed its model, against the output tensors the app computed from them.

    ``verdict``: ``passed`` (every output within tolerance, every decoded field agrees on every invoke),
    ``failed`` (``reason`` says which), ``not_checked`` (``reason`` says why: no traced invoke with both a
    bitmap and outputs, no preprocess spec, a model replay cannot feed). Tolerance per output:
    ``atol + rtol * max |app output|``, or ``quant_steps`` steps for integer outputs.
    """

    verdict: Literal["passed", "failed", "not_checked"]
    reason: str | None = None
    invokes_traced: int = 0  # invokes of this model in the trace
    invokes_checked: int = 0  # of which had a source bitmap and output tensors
    rtol: float
    atol: float
    quant_steps: float
    output_match: Literal["name", "order"] | None = None  # how bundle outputs were paired with the app's
    # informational: max |replay's input tensor - the app's captured one| (in the tensor's own units)
    input_max_abs_diff: float | None = None
    resize_backend: str | None = None  # the resize kernel backend replay's workers use
    outputs: list[OutputFidelity] = Field(default_factory=list)
    fields: list[FieldAgreement] = Field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.verdict == "failed"


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
    runtime: RuntimeInfo = Field(default_factory=RuntimeInfo)
    parity: ParityReport | None = None
    fidelity: FidelityReport | None = None  # end-to-end check on traced invokes (extract --trace)
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
    def runtime_paths(self) -> list[Path]:
        """The files the bundle's runtime opens (``model.onnx``, or the original engine's files)."""
        return [self.folder / f for f in self.bundle.runtime.files]

    @property
    def labels(self) -> list[str] | None:
        p = self.folder / LABELS_TXT
        if p.is_file():
            return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        return self.bundle.postprocess.labels


def file_sha256(path: Path) -> str:
    """The sha256 of a bundle's file, read in blocks (run.json records the model's; Ray nodes check it)."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    try:  # bytes: invalid UTF-8 is a validation error, not a UnicodeDecodeError escaping as a crash
        bundle = Bundle.model_validate_json(doc.read_bytes())
    except (ValidationError, ValueError) as e:
        raise CorruptInputError(f"{doc} is not a valid bundle document: {e}") from e
    if bundle.schema_version > BUNDLE_SCHEMA_VERSION:
        raise CorruptInputError(
            f"{doc} has schema version {bundle.schema_version}; this replaybench reads up to "
            f"{BUNDLE_SCHEMA_VERSION}",
            hint="upgrade replaybench",
        )
    for name in bundle.runtime.files:
        # files come from a document that may have been edited: they must stay inside the bundle
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CorruptInputError(f"{doc}: runtime file {name!r} is outside the bundle")
        if not (folder / name).is_file():
            raise CorruptInputError(f"bundle {folder} has no {name} (its {bundle.runtime.name} model)")
    return LoadedBundle(folder=folder, bundle=bundle)


def _normalisation_form(doc: dict[str, object], where: str) -> dict[str, object]:
    """A hand-written preprocess spec may give ``mean``/``std`` (model-card style) with ``pixel_range``
    ("0-255": mean/std in pixel units, "0-1": on pixels / 255, as torchvision's ImageNet constants) instead
    of ``scale``/``offset``; turn it into scale/offset. Raises UsageError naming what is wrong."""
    from replaybench.errors import UsageError

    has_ms = "mean" in doc or "std" in doc
    if not has_ms:
        if "pixel_range" in doc:
            raise UsageError(f"{where}: pixel_range only goes with mean and std")
        return doc
    if "scale" in doc or "offset" in doc:
        raise UsageError(f"{where}: give either mean/std or scale/offset, not both")
    if "mean" not in doc or "std" not in doc:
        raise UsageError(f"{where}: mean and std go together (one value, or one per channel)")
    rng = doc.get("pixel_range")
    if rng not in ("0-255", "0-1"):
        raise UsageError(
            f'{where}: pixel_range must be "0-255" (mean/std in pixel units, e.g. 127.5) or "0-1" '
            f"(on pixel / 255, e.g. ImageNet 0.485/0.229), got {rng!r}"
        )

    def floats(key: str) -> list[float]:
        v = doc[key]
        vals = v if isinstance(v, list) else [v]
        if not vals or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vals):
            raise UsageError(f"{where}: {key} must be a number or a list of numbers, got {v!r}")
        return [float(x) for x in vals if isinstance(x, int | float)]

    mean, std = floats("mean"), floats("std")
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        raise UsageError(f"{where}: mean has {len(mean)} values and std {len(std)}")
    if any(x == 0 for x in std):
        raise UsageError(f"{where}: std must not be 0")
    unit = 255.0 if rng == "0-1" else 1.0
    n = max(len(mean), len(std))
    mean = [mean[i % len(mean)] * unit for i in range(n)]
    std = [std[i % len(std)] * unit for i in range(n)]
    out = {k: v for k, v in doc.items() if k not in ("mean", "std", "pixel_range")}
    out["scale"] = [1.0 / s for s in std]
    out["offset"] = [-m / s for m, s in zip(mean, std, strict=True)]
    return out


def _validation_message(e: Any, where: str) -> str:
    """One line per problem: the field's path, what is wrong, and the allowed values when it is a choice."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "(document)"
        kind = err.get("type", "")
        ctx = err.get("ctx") or {}
        if kind == "literal_error" and "expected" in ctx:
            lines.append(f"{loc}: {err.get('input')!r} is not allowed; allowed: {ctx['expected']}")
        elif kind == "extra_forbidden":
            lines.append(f"{loc}: unknown field")
        elif kind == "missing":
            lines.append(f"{loc}: required field missing")
        else:
            lines.append(f"{loc}: {err.get('msg')} (got {err.get('input')!r})")
    return f"{where}: " + "; ".join(lines)


def read_spec(path: Path, kind: type[_SpecT]) -> _SpecT:
    """A ``PreprocessSpec`` or ``PostprocessSpec`` from its own JSON file or from a bundle's bundle.json
    (its ``preprocess`` / ``postprocess`` block), so one bundle's recovered settings can seed another.

    A hand-written preprocess spec may state its normalisation as ``mean``/``std`` with ``pixel_range``
    ("0-255" or "0-1") instead of ``scale``/``offset``. Raises InputNotFoundError for a missing file and
    UsageError for one that holds no such spec, naming each bad field and its allowed values.
    """
    from pydantic import ValidationError

    from replaybench._json import loads_untrusted
    from replaybench.errors import UsageError

    path = Path(path)
    if path.is_dir():
        path = path / BUNDLE_JSON
    if not path.is_file():
        raise InputNotFoundError(f"spec file not found: {path}")
    try:
        doc = loads_untrusted(path.read_bytes())
    except ValueError as e:  # not JSON, invalid UTF-8, a giant integer, nesting past the recursion limit
        raise UsageError(f"{path} is not JSON: {e}") from e
    if isinstance(doc, dict) and "schema_version" in doc and "io" in doc:  # a bundle.json
        doc = doc.get("preprocess" if kind is PreprocessSpec else "postprocess")
    if not isinstance(doc, dict):
        raise UsageError(f"{path} holds no {kind.__name__} (expected a JSON object)")
    where = f"{path} ({kind.__name__})"
    if kind is PreprocessSpec:
        doc = _normalisation_form(doc, where)
        version = doc.get("version", PREPROCESS_SPEC_VERSION)
        if isinstance(version, int) and version > PREPROCESS_SPEC_VERSION:
            raise UsageError(
                f"{where}: version {version} is newer than this replaybench reads ({PREPROCESS_SPEC_VERSION})",
                hint="upgrade replaybench",
            )
    try:
        return kind.model_validate(doc)
    except ValidationError as e:
        raise UsageError(_validation_message(e, f"{path} holds no valid {kind.__name__}")) from e
