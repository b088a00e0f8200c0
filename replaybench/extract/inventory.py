"""The inventory document: what ``replaybench scan`` found inside an app (typed, versioned, strict).

One document feeds the rich table and ``--json``; trace matching and conversion read ``model_blobs``
by these field names. Bump ``SCHEMA_VERSION`` on any incompatible change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.0"

BLOB_FORMATS = (
    "tflite",
    "onnx",
    "torchscript",
    "pytorch_lite",
    "savedmodel",
    "tf_graphdef",
    "ncnn_param",
    "ncnn_bin",
    "mnn",
    "caffe_prototxt",
    "caffemodel",
    "paddle_lite",
    "snpe_dlc",
    "coreml",
    "unknown_high_entropy",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BlobLocation(_Strict):
    """Where bytes live: the chain of containers (outer file first, then nested entry names), the entry
    path inside the innermost container, the offset inside that entry, and for blobs embedded in a native
    library the ELF section and virtual address."""

    container: list[str]
    entry: str
    offset: int = 0
    section: str | None = None
    vaddr: int | None = None

    def describe(self) -> str:
        """``app.apk!lib/arm64-v8a/libx.so@0x1234(.rodata)`` style, for tables and logs."""
        chain = "!".join([Path(self.container[0]).name, *self.container[1:]]) if self.container else ""
        text = f"{chain}!{self.entry}" if self.entry else chain
        if self.offset or self.section:
            text += f"@{self.offset:#x}"
        if self.section:
            text += f"({self.section})"
        return text


class ModelBlob(_Strict):
    """A candidate on-device model: its location, detected format, hashes and the evidence."""

    location: BlobLocation
    format: str
    size: int
    sha256: str
    entropy: float
    encrypted: bool = False
    evidence: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class RejectedCandidate(_Strict):
    """A file named like a model whose content is not that model (reported, not trusted)."""

    location: BlobLocation
    claimed_format: str
    size: int
    reason: str


class RuntimeMatch(_Strict):
    """An ML runtime fingerprinted in a native library."""

    runtime: str
    score: int
    evidence: list[str]


class NativeLibrary(_Strict):
    """One ``.so``: architecture, ML runtimes found, the generic inference-engine score."""

    location: BlobLocation
    abi: str | None
    machine: str | None
    size: int
    sha256: str
    runtimes: list[RuntimeMatch] = Field(default_factory=list)
    engine_score: float = 0.0
    engine_evidence: list[str] = Field(default_factory=list)
    likely_inference_engine: bool = False
    needed: list[str] = Field(default_factory=list)
    exported_symbols: int = 0
    imported_symbols: int = 0
    ml_symbols: list[str] = Field(default_factory=list)  # symbols matching a runtime fingerprint (<= 50)
    embedded_blobs: int = 0
    error: str | None = None


class CodeReference(_Strict):
    """A use of an ML API in DEX code (or a loaded library / model-like file name), with where."""

    kind: Literal["api", "load_library", "file_name", "preprocess_arg"]
    api: str
    class_name: str
    method: str
    dex: str
    value: str | None = None
    args: list[float | int | bool | str | None] = Field(default_factory=list)


class ContainerInfo(_Strict):
    """One container opened: an APK, a split, a bundle, an OBB or a zip nested in assets."""

    path: list[str]
    kind: Literal[
        "apk", "split_apk", "xapk", "apks", "apkm", "zip", "obb", "mediapipe_task", "folder", "file"
    ]
    size: int
    entries: int = 0
    sha256: str | None = None


class AppInfo(_Strict):
    package: str | None = None
    version_name: str | None = None
    version_code: int | None = None
    sha256: str | None = None
    containers: list[ContainerInfo] = Field(default_factory=list)


class Inventory(_Strict):
    """The whole scan result (DESIGN.md "Inventory")."""

    schema_version: str = SCHEMA_VERSION
    app: AppInfo
    native_libraries: list[NativeLibrary] = Field(default_factory=list)
    code_references: list[CodeReference] = Field(default_factory=list)
    model_blobs: list[ModelBlob] = Field(default_factory=list)
    rejected_candidates: list[RejectedCandidate] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    code_scanned: bool = True

    @property
    def runtimes(self) -> list[str]:
        """Every ML runtime fingerprinted in any native library, sorted."""
        return sorted({m.runtime for lib in self.native_libraries for m in lib.runtimes})

    @property
    def has_on_device_model(self) -> bool:
        return bool(self.model_blobs)


class ExtractedBlob(_Strict):
    """One blob written by ``extract_blobs``: the file (relative to the output folder) and the blob."""

    file: str
    blob: ModelBlob


class ExtractManifest(_Strict):
    """``manifest.json`` of an extraction folder."""

    schema_version: str = SCHEMA_VERSION
    app: AppInfo
    blobs: list[ExtractedBlob] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
