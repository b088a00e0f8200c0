"""The hook manifest: how in-app replay feeds an item to an app's own pipeline and reads its result.

One manifest per app version (versioned JSON, pydantic with extra fields forbidden)::

    {
      "schema_version": 1,
      "name": "effect-age",                       # the predictions' "bundle" column
      "app": {"package": "com.example", "version": "1.4.2",
              "version_from": {"kind": "native_export", "module": "libeffect.so", "symbol": "sdk_version"}},
      "input": {"pixel_format": "RGBA8888",       # the bytes the app's function takes
                "resize": {"width": 128, "height": 128, "method": "bilinear_android"}},
      "feed": {"kind": "native_export", "module": "libeffect.so", "symbol": "run",
               "signature": {"args": ["buffer", "width", "height", "format", "output"], "returns": "int",
                             "format_value": 2}},
      "read": {"kind": "output_tensor", "outputs": [{"name": "age", "count": 1}, {"name": "gender", "count": 2}]},
      "postprocess": {"labels": null, "decoders": [{"output": "age", "field": "age_pred", "kind": "scale"}]}
    }

Feed kinds: ``native_export`` / ``native_offset`` (call a function with a signature), ``frame_substitution``
(overwrite the frame an app's own loop hands to a call site), ``java_bitmap_method`` (build a Bitmap and
call a Java method with it). Read kinds: ``return_value``, ``output_tensor`` (an output argument of the
signature), ``json_message`` (a JSON text handed to a hooked function or Java method) and ``java_fields``
(fields of the Java object a method returned). The read names its outputs; ``postprocess.decoders`` turns
them into prediction columns with the same decoders as bundles (``replay/decoders.py``).

The Java kinds are written from ../shared/ANDROID_HOOKS.md and cannot run without an Android device: their
validation and the host's handling of their messages are tested, the agent code is not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from replaybench.bundle import Decoder, ResizeSpec
from replaybench.errors import CorruptInputError, InputNotFoundError

HOOKS_SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _offset(value: object) -> object:
    """Offsets are written as in a disassembler: ``"0x1e90"``, or as a plain number."""
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            raise ValueError(f"offset {value!r} is not a number (write 0x1e90 or 7824)") from None
    return value


# ------------------------------------------------------------------------------------------------ app


class NativeVersionSource(_Strict):
    """The running app's version from a native function returning a C string (``const char *f(void)``)."""

    kind: Literal["native_export"]
    module: str
    symbol: str


class JavaVersionSource(_Strict):
    """The running app's ``versionName`` from its PackageManager (Android only)."""

    kind: Literal["java_package"]


VersionSource = Annotated[NativeVersionSource | JavaVersionSource, Field(discriminator="kind")]


class AppSpec(_Strict):
    package: str
    version: str  # the version this manifest was written (and its offsets found) for
    version_from: VersionSource | None = None  # how the agent reads the running app's version


# ---------------------------------------------------------------------------------------------- input

PixelFormat = Literal["RGB888", "BGR888", "RGBA8888", "BGRA8888", "GRAY8"]
BYTES_PER_PIXEL: dict[str, int] = {"RGB888": 3, "BGR888": 3, "RGBA8888": 4, "BGRA8888": 4, "GRAY8": 1}


class InputSpec(_Strict):
    """The bytes the app's function takes. ``resize``: resized on the host to the app's input size (the
    same kernels as bundles); None sends every image at its decoded size."""

    pixel_format: PixelFormat = "RGBA8888"
    resize: ResizeSpec | None = None


# ----------------------------------------------------------------------------------------------- feed

NativeArg = Literal["buffer", "width", "height", "stride", "format", "length", "output", "output_count"]
NativeType = Literal["void", "int", "uint", "int64", "float", "double", "pointer"]


class NativeSignature(_Strict):
    """The C signature of a native entry point, argument by argument.

    ``buffer`` the pixels, ``width``/``height``/``stride`` (bytes per row)/``length`` (bytes), ``format``
    (``format_value``), ``output`` a buffer the agent allocates (read by ``output_tensor``; 64 KiB of scratch otherwise),
    ``output_count`` its element count; an integer is passed as that constant."""

    args: list[NativeArg | int]
    returns: NativeType = "int"
    format_value: int | None = None
    ok_return: int | None = 0  # int returns: anything else is an error row (None: not checked)

    @model_validator(mode="after")
    def _check(self) -> NativeSignature:
        if "buffer" not in self.args:
            raise ValueError("the signature needs a 'buffer' argument (the pixels)")
        if "format" in self.args and self.format_value is None:
            raise ValueError("a 'format' argument needs format_value (the app's code for the pixel format)")
        return self


class NativeExportFeed(_Strict):
    """Call an exported native function: ``Module.getExportByName(symbol)`` in ``module``."""

    kind: Literal["native_export"]
    module: str
    symbol: str
    signature: NativeSignature


class NativeOffsetFeed(_Strict):
    """Call an unexported native function at ``module`` base + ``offset`` (relative to the ELF load base)."""

    kind: Literal["native_offset"]
    module: str
    offset: int = Field(ge=0)
    signature: NativeSignature

    _parse_offset = field_validator("offset", mode="before")(_offset)


class CallSite(_Strict):
    """A native function the app calls itself: by export ``symbol`` or by ``offset``."""

    module: str
    symbol: str | None = None
    offset: int | None = Field(default=None, ge=0)

    _parse_offset = field_validator("offset", mode="before")(_offset)

    @model_validator(mode="after")
    def _one(self) -> CallSite:
        if (self.symbol is None) == (self.offset is None):
            raise ValueError("name the call site by exactly one of symbol or offset")
        return self

    @property
    def label(self) -> str:
        return f"{self.module}!{self.symbol}" if self.symbol else f"{self.module}+{self.offset:#x}"


class FrameSubstitutionFeed(_Strict):
    """Overwrite the frame the app's own loop passes to ``call_site`` (argument ``buffer_arg``) with the
    item's pixels, at the call's entry; the app then runs its pipeline on it. ``width_arg``/``height_arg``
    (when given) are checked against the item's size."""

    kind: Literal["frame_substitution"]
    call_site: CallSite
    buffer_arg: int = Field(ge=0)
    width_arg: int | None = Field(default=None, ge=0)
    height_arg: int | None = Field(default=None, ge=0)


class JavaBitmapFeed(_Strict):
    """Android only (cannot run here): build an ARGB_8888 Bitmap from the item and call
    ``class_name.method`` with it as argument ``bitmap_arg`` (other arguments null). ``instance``: a
    static method, a new object (no-argument constructor), or the first live object ``Java.choose`` finds."""

    kind: Literal["java_bitmap_method"]
    class_name: str
    method: str
    overload: list[str] | None = None  # Java argument types, e.g. ["android.graphics.Bitmap"]
    bitmap_arg: int = Field(default=0, ge=0)
    instance: Literal["static", "new", "choose"] = "static"


Feed = Annotated[
    NativeExportFeed | NativeOffsetFeed | FrameSubstitutionFeed | JavaBitmapFeed, Field(discriminator="kind")
]

# ----------------------------------------------------------------------------------------------- read


class OutputField(_Strict):
    name: str
    count: int = Field(default=1, ge=1)
    dtype: Literal["float32", "float64", "int32", "uint8", "int8"] = "float32"


class ReturnValueRead(_Strict):
    """The number the fed function (or Java method) returns is the output ``name``."""

    kind: Literal["return_value"]
    name: str = "value"


class OutputTensorRead(_Strict):
    """The signature's ``output`` argument after the call: ``outputs`` laid end to end in it."""

    kind: Literal["output_tensor"]
    outputs: list[OutputField] = Field(min_length=1)


class JavaMethodHook(_Strict):
    """Android only: a Java method whose argument ``arg`` is a String (TikTok's MessageCenter.postMessage)."""

    class_name: str
    method: str
    overload: list[str] | None = None


class JsonMessageRead(_Strict):
    """A JSON text the app hands to a hooked function while it processes the item (argument ``arg``: a C
    string for a native hook, a String for a Java one). ``fields`` maps an output name to a path in the
    message (``base_infos.0.age``); ``skip_unless`` marks the item ``skipped`` when a path does not hold
    the value (the paper kept only messages with ``face_count == 1``). ``wait_ms``: how long after the
    call (or frame) returns a message may still come; while waiting, a message from any thread counts for
    the waiting item (no other item runs meanwhile), so the app must post nothing else then."""

    kind: Literal["json_message"]
    hook: CallSite | JavaMethodHook
    arg: int = Field(default=0, ge=0)
    fields: dict[str, str] = Field(min_length=1)
    counts: dict[str, int] = Field(default_factory=dict)  # output name -> length, for list fields (default 1)
    skip_unless: dict[str, str | int | float | bool] = Field(default_factory=dict)
    pick: Literal["first", "last"] = "last"
    wait_ms: int = Field(default=0, ge=0)


class JavaFieldsRead(_Strict):
    """Android only: fields of the Java object the fed method returned; ``fields`` maps an output name to
    a dotted field path (``A00`` or ``scores``); a field holding a number or a list of numbers."""

    kind: Literal["java_fields"]
    fields: dict[str, str] = Field(min_length=1)
    counts: dict[str, int] = Field(default_factory=dict)  # output name -> length, for list fields (default 1)


Read = Annotated[
    ReturnValueRead | OutputTensorRead | JsonMessageRead | JavaFieldsRead, Field(discriminator="kind")
]


class HookPostprocess(_Strict):
    labels: list[str] | None = None
    decoders: list[Decoder] = Field(default_factory=list)


# ------------------------------------------------------------------------------------------ manifest


class HookManifest(_Strict):
    """A hook manifest (see the module doc)."""

    schema_version: int = HOOKS_SCHEMA_VERSION
    name: str = Field(min_length=1)
    app: AppSpec
    input: InputSpec = Field(default_factory=InputSpec)
    feed: Feed
    read: Read
    postprocess: HookPostprocess = Field(default_factory=HookPostprocess)
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _coherent(self) -> HookManifest:
        feed, read = self.feed, self.read
        java_feed = isinstance(feed, JavaBitmapFeed)
        signature = getattr(feed, "signature", None)
        if isinstance(read, JavaFieldsRead) and not java_feed:
            raise ValueError(
                "read 'java_fields' reads the object a Java method returns: it needs feed 'java_bitmap_method'"
            )
        if isinstance(read, OutputTensorRead) and (signature is None or "output" not in signature.args):
            raise ValueError(
                "read 'output_tensor' needs a native feed whose signature has an 'output' argument"
            )
        if isinstance(read, ReturnValueRead):
            if isinstance(feed, FrameSubstitutionFeed):
                raise ValueError(
                    "read 'return_value' needs a feed that calls a function; with frame_substitution read a json_message"
                )
            if signature is not None and signature.returns in ("void", "pointer"):
                raise ValueError(
                    f"read 'return_value' needs a numeric return type, not {signature.returns!r}"
                )
        mixed = isinstance(read, JsonMessageRead) and isinstance(read.hook, JavaMethodHook) != java_feed
        if mixed and not isinstance(feed, FrameSubstitutionFeed):  # a native camera loop may post to Java
            raise ValueError(
                "a json_message hook on a Java method goes with a Java feed, a native hook with a native feed"
            )
        if java_feed and self.input.pixel_format != "RGBA8888":
            raise ValueError(
                "a Java Bitmap is ARGB_8888, whose bytes are R,G,B,A: input.pixel_format must be RGBA8888"
            )
        if isinstance(feed, FrameSubstitutionFeed) and self.input.resize is None:
            raise ValueError("frame_substitution overwrites a frame of fixed size: input.resize must give it")
        sizes = self.output_sizes()
        for dec in self.postprocess.decoders:
            if dec.output and dec.output not in sizes:
                raise ValueError(
                    f"decoder {dec.field!r} reads output {dec.output!r}; the read makes {sorted(sizes)}"
                )
            if not dec.output and len(sizes) != 1:
                raise ValueError(f"decoder {dec.field!r} names no output, but the read makes {len(sizes)}")
        return self

    def output_sizes(self) -> dict[str, int]:
        """Output name -> element count, as the read makes them."""
        read = self.read
        if isinstance(read, ReturnValueRead):
            return {read.name: 1}
        if isinstance(read, OutputTensorRead):
            return {o.name: o.count for o in read.outputs}
        return {name: read.counts.get(name, 1) for name in read.fields}

    def bound_decoders(self, sizes: dict[str, int] | None = None) -> list[Decoder]:
        """The decoders with an empty output bound to the only output (as bundles bind it when written)."""
        names = list(sizes or self.output_sizes())
        return [
            d if d.output else d.model_copy(update={"output": names[0]}) for d in self.postprocess.decoders
        ]

    @property
    def uses_java(self) -> bool:
        return (
            isinstance(self.feed, JavaBitmapFeed)
            or isinstance(self.read, JavaFieldsRead)
            or (isinstance(self.read, JsonMessageRead) and isinstance(self.read.hook, JavaMethodHook))
            or isinstance(self.app.version_from, JavaVersionSource)
        )


def load_manifest(path: Path) -> tuple[HookManifest, str]:
    """Read and validate a hook manifest. Returns (manifest, sha256 of the file).

    Raises ``InputNotFoundError`` for a missing file, ``CorruptInputError`` for bad JSON, a newer schema
    or a manifest that does not validate (the message names every problem and where it is).
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"hook manifest not found: {path}")
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptInputError(f"hook manifest {path} is not JSON: {e}") from e
    return parse_manifest(doc, str(path)), hashlib.sha256(raw).hexdigest()


def parse_manifest(doc: Any, where: str = "hook manifest") -> HookManifest:
    """Validate a manifest document (see ``load_manifest``)."""
    if isinstance(doc, dict):
        version = doc.get("schema_version", HOOKS_SCHEMA_VERSION)
        if isinstance(version, int) and version > HOOKS_SCHEMA_VERSION:
            raise CorruptInputError(
                f"{where} has schema_version {version}; this replaybench reads up to {HOOKS_SCHEMA_VERSION}",
                hint="upgrade replaybench",
            )
    try:
        return HookManifest.model_validate(doc)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()
        )
        raise CorruptInputError(f"{where} does not validate: {problems}") from e
