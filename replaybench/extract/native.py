"""Native libraries (``.so``): ML runtime fingerprints, a generic inference-engine score, embedded blobs.

lief parses the ELF (sections, dynamic and static symbols, DT_NEEDED); string evidence comes from the
NUL-separated printable runs of the string-bearing sections. Fingerprints are a registry
(``FINGERPRINTS``): each runtime lists symbol patterns (mangled C++ names included), string tokens and
library-name patterns. Libraries no fingerprint knows are still flagged by their neural-network
vocabulary (``engine_score``). Embedded models are found by magic in ``.rodata``/``.data`` and cut
out byte-exact (TFLite: the flatbuffer's extent from its structure, or the covering symbol's size).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from replaybench.errors import CorruptInputError
from replaybench.extract.inventory import RuntimeMatch

STRING_SECTIONS = (".rodata", ".dynstr", ".data.rel.ro", ".data", ".strtab")
BLOB_SECTIONS = (".rodata", ".data", ".data.rel.ro", ".lrodata", ".ldata")
STRING_SCAN_CAP = 8 << 20  # per section: beyond this a section holds tables/weights, not strings
EMBED_SCAN_MAX = 64  # candidate offsets tried per magic per library
MAX_LISTED = 50  # ML-related symbols listed per library in the inventory
MAX_SCANNED_SECTIONS = 32  # string or blob sections searched per library (real ones have a handful)


class ElfFormatError(CorruptInputError, ValueError):
    """Bytes lief cannot parse as an ELF file (exit code 5; also a ``ValueError``)."""


@dataclass(frozen=True)
class Fingerprint:
    """Evidence that names one runtime: symbol regexes, string tokens, library-file regexes."""

    key: str
    name: str
    symbols: tuple[str, ...] = ()
    strings: tuple[bytes, ...] = ()
    libnames: tuple[str, ...] = ()


FINGERPRINTS: dict[str, Fingerprint] = {}


def fingerprint(fp: Fingerprint) -> None:
    """Register a runtime fingerprint (keys are unique)."""
    if fp.key in FINGERPRINTS:
        raise ValueError(f"duplicate runtime fingerprint {fp.key!r}")
    FINGERPRINTS[fp.key] = fp


for _fp in (
    Fingerprint("tflite", "TensorFlow Lite / LiteRT",
                (r"^TfLite[A-Z]\w+", r"^_ZN6tflite", r"^Java_org_tensorflow_lite_", r"^LiteRt[A-Z]"),
                (b"tflite::", b"TfLiteInterpreter", b"org/tensorflow/lite"),
                (r"libtensorflowlite", r"libtflite", r"liblitert")),
    Fingerprint("pytorch_mobile", "PyTorch Mobile",
                (r"^_ZN5torch3jit", r"^_ZN5torch6mobile", r"^Java_org_pytorch_", r"^_ZN3c1010TensorImpl"),
                (b"torch::jit", b"_save_for_mobile", b"bytecode.pkl", b"org/pytorch/"),
                (r"libpytorch_jni", r"libtorch", r"libc10")),
    Fingerprint("onnxruntime", "ONNX Runtime",
                (r"^OrtGetApiBase$", r"^_ZN11onnxruntime", r"^Java_ai_onnxruntime_"),
                (b"onnxruntime", b"ai/onnxruntime"),
                (r"libonnxruntime",)),
    Fingerprint("ncnn", "ncnn (Tencent)",
                (r"^_ZN4ncnn3Net", r"^_ZN4ncnn5Layer", r"^_ZN4ncnn9Extractor"),
                (b"ncnn::", b"param is too old, please regenerate"),
                (r"libncnn",)),
    Fingerprint("mnn", "MNN (Alibaba)",
                (r"^_ZN3MNN11Interpreter", r"^_ZN3MNN7Express", r"^_ZN3MNN"),
                (b"MNN::Interpreter", b"MNN_"),
                (r"libMNN",)),
    Fingerprint("paddle_lite", "Paddle Lite",
                (r"^_ZN6paddle4lite", r"^_ZN6paddle8lite_api"),
                (b"paddle::lite", b"paddle_lite"),
                (r"libpaddle_lite", r"libpaddle_light")),
    Fingerprint("snpe", "Qualcomm SNPE",
                (r"^_ZN3zdl", r"^Snpe_"),
                (b"zdl::DlSystem", b"SNPE"),
                (r"libSNPE", r"libsnpe")),
    Fingerprint("mace", "MACE (Xiaomi)", (r"^_ZN4mace",), (b"mace::MaceEngine",), (r"libmace",)),
    Fingerprint("tnn", "TNN (Tencent)", (r"^_ZN6TNN_NS", r"^_ZN3tnn"), (b"TNN_NS",), (r"libTNN",)),
    Fingerprint("tengine", "Tengine (OPEN AI LAB)",
                (r"^create_graph$", r"^prerun_graph", r"^_ZN7TEngine"),
                (b"tengine", b"TEngine"),
                (r"libtengine",)),
    Fingerprint("xnnpack", "XNNPACK", (r"^xnn_create_", r"^xnn_initialize$"), (b"xnnpack",), ()),
    Fingerprint("nnapi", "Android NNAPI", (r"^ANeuralNetworks",), (b"libneuralnetworks.so",),
                (r"libneuralnetworks",)),
    Fingerprint("opencv_dnn", "OpenCV dnn", (r"^_ZN2cv3dnn",), (b"cv::dnn",), (r"libopencv_dnn",)),
    Fingerprint("dlib", "dlib", (r"^_ZN4dlib",), (b"dlib::",), (r"libdlib",)),
    Fingerprint("mediapipe", "MediaPipe", (r"^_ZN9mediapipe", r"^Java_com_google_mediapipe_"),
                (b"mediapipe",), (r"libmediapipe",)),
):  # fmt: skip
    fingerprint(_fp)

# Generic vocabulary of inference engines. Operator names score most: they are what an engine must
# name to parse a model graph; an ordinary library rarely names more than one or two of them.
ENGINE_OPS = (
    b"convolution", b"conv2d", b"depthwise", b"deconvolution", b"maxpool", b"max_pool", b"avgpool",
    b"avg_pool", b"pooling", b"softmax", b"batchnorm", b"batch_norm", b"sigmoid", b"innerproduct",
    b"fully_connected", b"fullyconnected", b"eltwise", b"prelu", b"leakyrelu", b"upsample",
    b"resize_bilinear", b"instancenorm", b"layernorm", b"matmul", b"concat", b"relu6", b"hardswish",
)  # fmt: skip
ENGINE_VOCAB = (
    b"tensor", b"graph", b"session", b"inference", b"interpreter", b"forward", b"layer", b"weights",
    b"load_model", b"model_path", b"blob", b"kernel", b"operator",
)  # fmt: skip
ENGINE_QUANT = (b"quantiz", b"dequantiz", b"zero_point", b"int8", b"fp16", b"requant")


def section_strings(data: bytes | memoryview) -> bytes:
    """Printable NUL-terminated runs (5..512 bytes), lower-cased and newline-joined, for token search.

    Splitting on NUL and keeping ASCII runs is a C-speed pass; a per-byte regex is 10x slower.
    """
    parts = [p for p in bytes(data).split(b"\0") if 5 <= len(p) <= 512 and p.isascii()]
    return b"\n".join(parts)


def engine_score(strings_lower: bytes, symbols_lower: str) -> tuple[float, list[str]]:
    """0..1 score of how much a library talks like a neural-network inference engine, with evidence."""
    sym = symbols_lower.encode()
    ops = [t.decode() for t in ENGINE_OPS if t in strings_lower or t in sym]
    vocab = [t.decode() for t in ENGINE_VOCAB if t in strings_lower or t in sym]
    quant = [t.decode() for t in ENGINE_QUANT if t in strings_lower or t in sym]
    score = 0.6 * min(len(ops) / 8, 1) + 0.25 * min(len(vocab) / 6, 1) + 0.15 * min(len(quant) / 3, 1)
    evidence = []
    if ops:
        evidence.append(f"operator names: {', '.join(ops)}")
    if vocab:
        evidence.append(f"engine vocabulary: {', '.join(vocab)}")
    if quant:
        evidence.append(f"quantisation terms: {', '.join(quant)}")
    return round(score, 3), evidence


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def match_runtimes(
    lib_name: str, needed: list[str], symbols: list[str], strings_text: bytes
) -> list[RuntimeMatch]:
    """Every fingerprint with evidence in this library: symbols weigh 2, strings and names 1."""
    out: list[RuntimeMatch] = []
    for fp in FINGERPRINTS.values():
        evidence: list[str] = []
        score = 0
        for pat in fp.symbols:
            rx = _compiled(pat)
            hits = [s for s in symbols if rx.search(s)]
            if hits:
                score += 2
                evidence.append(f"symbol {hits[0]}" + (f" (+{len(hits) - 1} more)" if len(hits) > 1 else ""))
        for tok in fp.strings:
            if tok in strings_text:
                score += 1
                evidence.append(f"string {tok.decode()!r}")
        for pat in fp.libnames:
            if re.search(pat, lib_name):
                score += 2
                evidence.append(f"library name {lib_name}")
            for n in needed:
                if re.search(pat, n):
                    score += 2
                    evidence.append(f"links {n}")
        # One string alone (e.g. 'SNPE' in a log message) is not enough to claim a runtime.
        if score >= 2:
            out.append(RuntimeMatch(runtime=fp.key, score=score, evidence=evidence))
    return out


@dataclass
class Embedded:
    """A model blob found inside a library section."""

    format: str
    section: str
    file_offset: int
    vaddr: int
    size: int
    evidence: list[str]


@dataclass(frozen=True)
class Haystack:
    """Where to ``find`` magic bytes: ``obj`` (bytes or an mmap of the whole APK) with the library at
    ``base``, so a stored library is searched in place without copying it out of the APK."""

    obj: Any
    base: int = 0

    def find(self, needle: bytes, start: int, end: int) -> int:
        i = int(self.obj.find(needle, self.base + start, self.base + end))
        return i - self.base if i >= 0 else -1


class _MemReader(io.RawIOBase):
    """A zero-copy, seekable file over a buffer, for lief (parsing from bytes is 3x slower)."""

    def __init__(self, view: memoryview) -> None:
        self._v, self._p = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._p

    def seek(self, pos: int, whence: int = 0) -> int:
        self._p = max(0, {0: 0, 1: self._p, 2: len(self._v)}[whence] + pos)
        return self._p

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), len(self._v) - self._p))
        b[:n] = self._v[self._p : self._p + n]
        self._p += n
        return n


def analyze_elf(
    data: bytes | bytearray | memoryview, lib_name: str, *, haystack: Haystack | None = None
) -> dict[str, Any]:
    """Parse one ELF image: machine, needed libs, symbols, runtimes, engine score, embedded blobs.

    ``haystack`` lets the caller search the bytes in place (an mmap of the APK); by default ``data``.
    Raises ``ElfFormatError`` (a ``CorruptInputError``, also a ``ValueError``) when lief cannot parse it.
    """
    with warnings.catch_warnings():  # lief warns for every enum value a hostile header invents
        warnings.simplefilter("ignore", RuntimeWarning)
        return _analyze_elf(data, lib_name, haystack)


def _analyze_elf(
    data: bytes | bytearray | memoryview, lib_name: str, haystack: Haystack | None
) -> dict[str, Any]:
    import lief

    lief.logging.disable()
    config = lief.ELF.ParserConfig()
    config.parse_relocations = False
    config.parse_symbol_versions = False
    config.parse_notes = False
    config.parse_overlay = False
    view = memoryview(data)
    binary = lief.ELF.parse(_MemReader(view), config)
    if binary is None:
        raise ElfFormatError(f"lief could not parse {lib_name} as an ELF file")
    if haystack is None:
        haystack = Haystack(data if isinstance(data, bytes | bytearray) else bytes(data))
    sections = [
        (str(s.name), int(s.offset), int(s.size), int(s.virtual_address), int(s.type) == 8)  # 8: SHT_NOBITS
        for s in binary.sections
    ]
    symbols = sorted(
        {str(s.name) for s in binary.dynamic_symbols if s.name}
        | {str(s.name) for s in binary.symtab_symbols if s.name}
    )
    exported = [s for s in binary.dynamic_symbols if s.name and s.exported]
    needed = [str(n) for n in binary.libraries]
    chunks = []
    for _name, off, size, _, nobits in _distinct(sections, STRING_SECTIONS, len(data)):
        if not nobits:
            chunks.append(section_strings(view[off : off + min(size, STRING_SCAN_CAP)]))
    strings_text = b"\n".join(chunks)
    runtimes = match_runtimes(lib_name, needed, symbols, strings_text)
    ml_rx = [_compiled(p) for fp in FINGERPRINTS.values() for p in fp.symbols]
    ml_symbols = [s for s in symbols if any(rx.search(s) for rx in ml_rx)][:MAX_LISTED]
    imported = sum(1 for s in binary.dynamic_symbols if s.name and s.imported)
    score, evidence = engine_score(strings_text.lower(), "\n".join(symbols).lower())
    object_syms = {
        int(s.value): (str(s.name), int(s.size))
        for s in (*binary.dynamic_symbols, *binary.symtab_symbols)
        if s.name and int(s.size) > 0 and int(s.type) == 1  # STT_OBJECT
    }
    embedded = find_embedded(view, sections, object_syms, haystack)
    return {
        "machine": str(binary.header.machine_type).split(".")[-1],
        "needed": needed,
        "exported_symbols": len(exported),
        "imported_symbols": imported,
        "ml_symbols": ml_symbols,
        "runtimes": runtimes,
        "engine_score": score,
        "engine_evidence": evidence,
        "embedded": embedded,
    }


def _distinct(
    sections: list[tuple[str, int, int, int, bool]], names: tuple[str, ...], file_size: int
) -> list[tuple[str, int, int, int, bool]]:
    """The sections named in ``names`` that lie inside the file, each byte range once and at most
    MAX_SCANNED_SECTIONS of them: a hostile header may declare 65535 sections called .rodata that all
    cover the whole file, which would scan it 65535 times."""
    seen: set[tuple[int, int]] = set()
    out = []
    for sec in sections:
        name, off, size = sec[0], sec[1], sec[2]
        if name in names and off + size <= file_size and (off, size) not in seen:
            seen.add((off, size))
            out.append(sec)
            if len(out) >= MAX_SCANNED_SECTIONS:
                break
    return out


def _find_all(hay: Haystack, needle: bytes, start: int, end: int) -> list[int]:
    out: list[int] = []
    i = hay.find(needle, start, end)
    while i >= 0 and len(out) < EMBED_SCAN_MAX:
        out.append(i)
        i = hay.find(needle, i + 1, end)
    return out


def find_embedded(
    view: memoryview,
    sections: list[tuple[str, int, int, int, bool]],
    object_syms: dict[int, tuple[str, int]],
    hay: Haystack,
) -> list[Embedded]:
    """Model blobs inside data sections, found by magic and sized from their own structure."""
    from replaybench.extract.formats import protobuf_fields, torch_kind, zip_names
    from replaybench.extract.tflite import flatbuffer_extent, is_tflite

    found: list[Embedded] = []
    for name, off, size, vaddr, nobits in _distinct(sections, BLOB_SECTIONS, len(view)):
        if nobits:
            continue
        end = off + size
        for pos in _find_all(hay, b"TFL3", off + 4, end):
            start = pos - 4
            if not is_tflite(bytes(view[start : start + 8])):
                continue
            sym = object_syms.get(vaddr + (start - off))
            try:
                extent = flatbuffer_extent(view[start:end])
            except ValueError:
                continue
            evidence = [f"'TFL3' flatbuffer at file offset {start:#x} in {name}"]
            if sym is not None and extent <= sym[1] <= end - start:  # a symbol may not run past its section
                extent = sym[1]
                evidence.append(f"size {extent} from symbol {sym[0]}")
            else:
                evidence.append(f"size {extent} from the flatbuffer structure")
            found.append(Embedded("tflite", name, start, vaddr + (start - off), extent, evidence))
        covered = -1  # the local headers inside a zip already found are not new archives
        for pos in _find_all(hay, b"PK\x03\x04", off, end):
            if pos < covered:
                continue
            eocd = hay.find(b"PK\x05\x06", pos, end)
            if eocd < 0:
                continue
            zend = eocd + 22
            try:
                kind = torch_kind(zip_names(view[pos:zend]))
            except Exception:  # not a complete archive at this offset
                continue
            if kind is not None:
                covered = zend
                found.append(Embedded(kind[0], name, pos, vaddr + (pos - off), zend - pos, kind[1]))
        for pos in _find_all(hay, b"7767517\n", off, end):
            stop = hay.find(b"\0", pos, end)
            n = stop - pos if stop > 0 else end - pos
            found.append(
                Embedded("ncnn_param", name, pos, vaddr + (pos - off), n, ["ncnn param text magic 7767517"])
            )
        # ONNX: ir_version then producer_name ("pytorch", "tf2onnx", ...); sized by the covering symbol.
        for m in re.finditer(
            rb"\x08[\x03-\x28]\x12[\x04-\x20](pytorch|tf2onnx|onnx|keras2onnx|skl2onnx)", view[off:end]
        ):  # type: ignore[call-overload]
            pos = off + m.start()
            sym = object_syms.get(vaddr + (pos - off))
            if sym is None or pos + sym[1] > end:  # no size, or a size running past the section
                continue
            try:
                protobuf_fields(bytes(view[pos : pos + min(sym[1], 1 << 16)]), 3)
            except ValueError:
                continue
            found.append(
                Embedded("onnx", name, pos, vaddr + (pos - off), sym[1],
                         [f"ONNX ModelProto header (producer {m.group(1).decode()})", f"size from symbol {sym[0]}"])
            )  # fmt: skip
    # Overlapping sections (a hostile header, or .data.rel.ro inside .data) find one blob twice: keep one.
    unique: dict[tuple[str, int], Embedded] = {}
    for emb in found:
        unique.setdefault((emb.format, emb.file_offset), emb)
    return list(unique.values())
