"""Fuzz the container walk end to end: APK, XAPK (nested APK + OBB), APKM, and generated zip trees.

Each input is written to a file and scanned (``scan_app``, DEX analysis on, so every parser behind the
walk runs: zip, nested zip, DEX, ELF, TFLite, manifest), then its blobs are extracted (``extract_blobs``).
The property: an Inventory and a manifest, or a replaybench typed error. Extracted files stay inside the
output folder.
"""

from __future__ import annotations

import struct
import tempfile
import zipfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from replaybench.errors import ReplaybenchError
from tests.fuzz import seeds
from tests.fuzz.harness import expect_typed, fuzz_settings, mutated, zip_hot_positions

APK = seeds.apk_bytes()
XAPK = seeds.xapk_bytes()
APKM = seeds.apkm_bytes()


def _scan_and_extract(data: bytes, name: str) -> object:
    from replaybench.extract.blobs import extract_blobs
    from replaybench.extract.scan import scan_app

    with tempfile.TemporaryDirectory() as d:
        app = Path(d) / name
        app.write_bytes(data)
        inv = scan_app([app], code=True)
        out = Path(d) / "out"
        manifest = extract_blobs(inv, out)
        for item in manifest.blobs:
            written = (out / item.file).resolve()
            assert written.parent == out.resolve() and written.is_file()
        return inv


def test_seed_apps_scan() -> None:
    """The seeds are found whole: without mutation every model in every container is inventoried."""
    for data, name, expected in ((APK, "app.apk", 2), (XAPK, "app.xapk", 3), (APKM, "app.apkm", 2)):
        inv = _scan_and_extract(data, name)
        assert not isinstance(inv, ReplaybenchError)
        formats = sorted(b.format for b in inv.model_blobs)  # type: ignore[attr-defined]
        assert formats == ["tflite"] * expected, (name, formats)


def _shifted_central_directory(data: bytes, by: int) -> bytes:
    """The end record claims the central directory starts ``by`` bytes later than it does: zipfile
    then puts every local header ``by`` bytes before its real place (negative for the first ones)."""
    out = bytearray(data)
    eocd = out.rfind(b"PK\x05\x06")
    (offset,) = struct.unpack_from("<I", out, eocd + 16)
    struct.pack_into("<I", out, eocd + 16, offset + by)
    return bytes(out)


def _zip_version(data: bytes, version: int) -> bytes:
    """Every central directory record claims it needs zip ``version`` (x10) to extract."""
    out = bytearray(data)
    i = out.find(b"PK\x01\x02")
    while i >= 0:
        out[i + 6] = version
        i = out.find(b"PK\x01\x02", i + 1)
    return bytes(out)


def _bad_local_name() -> bytes:
    """A zip whose local header spells the UTF-8-flagged name with invalid UTF-8 (the central
    directory's copy is valid, so the archive opens and the entry fails only when read)."""
    data = bytearray(seeds.make_zip([("\u00e9.bin", b"x", zipfile.ZIP_STORED)]))
    data[30:32] = b"\xc3\x28"
    return bytes(data)


@given(mutated(APK, hot=zip_hot_positions(APK), max_ops=5, protect=4))
@fuzz_settings(60)
@example(APK[: len(APK) // 2])
@example(seeds.make_zip([("", b"x", zipfile.ZIP_STORED)]))  # found: IndexError in ZipInfo.is_dir
@example(_shifted_central_directory(APK, 100))  # found: OSError (EINVAL) seeking to a negative offset
@example(  # found: ValueError (negative seek) opening an entry of a nested zip held in memory
    seeds.make_zip([("assets/a.zip", _shifted_central_directory(seeds.obb_bytes(), 1), zipfile.ZIP_DEFLATED)])
)
@example(_bad_local_name())  # found: UnicodeDecodeError opening the entry
@example(_zip_version(APK, 64))  # found: NotImplementedError "zip file version 6.4" opening the archive
def test_fuzz_apk(data: bytes) -> None:
    expect_typed(_scan_and_extract, data, "app.apk")


@given(mutated(XAPK, hot=zip_hot_positions(XAPK), max_ops=5, protect=4))
@fuzz_settings(60)
def test_fuzz_xapk_nested_apk_and_obb(data: bytes) -> None:
    expect_typed(_scan_and_extract, data, "app.xapk")


@given(mutated(APKM, hot=zip_hot_positions(APKM), max_ops=5, protect=4))
@fuzz_settings(40)
def test_fuzz_apkm_deflated_nested_apk(data: bytes) -> None:
    expect_typed(_scan_and_extract, data, "app.apkm")


ENTRY_NAMES = (
    "AndroidManifest.xml", "classes.dex", "assets/models/m.tflite", "lib/arm64-v8a/libm.so", "base.apk",
    "split_config.apk", "manifest.json", "info.json", "toc.pb", "Android/obb/p/main.1.p.obb", "assets/a.zip",
    "../../evil.tflite", "/abs/evil.tflite", "C:/evil.tflite", "a\\..\\..\\evil.tflite", "model.ptl",
    "res/raw/m.onnx", "assets/x.bin", "assets/x.param", "dir/",
)  # fmt: skip


@st.composite
def zip_tree(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A zip of seed payloads and nested zips (up to 4 deep), then mutated at its header fields."""
    entries = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(st.sampled_from(ENTRY_NAMES), st.text(min_size=1, max_size=20)))
        kind = draw(st.sampled_from(["tflite", "dex", "elf", "manifest", "zip", "bytes"]))
        if kind == "zip" and depth < 4:
            data = draw(zip_tree(depth + 1))
        elif kind == "tflite":
            data = seeds.tflite_model()
        elif kind == "dex":
            data = seeds.dex_file()
        elif kind == "elf":
            data = seeds.elf_library("x86_64")
        elif kind == "manifest":
            data = seeds.AXML_HEAD
        else:
            data = draw(st.binary(max_size=64))
        entries.append((name, data, draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))))
    try:
        raw = seeds.make_zip(entries)
    except (ValueError, UnicodeEncodeError):  # names zipfile itself cannot write (surrogates)
        raw = seeds.make_zip([])
    return draw(mutated(raw, hot=zip_hot_positions(raw), max_ops=3))


@given(zip_tree(), st.sampled_from(["app.apk", "app.xapk", "app.apks", "app.apkm", "main.obb", "app.zip"]))
@fuzz_settings(60)
def test_fuzz_generated_zip_trees(data: bytes, name: str) -> None:
    expect_typed(_scan_and_extract, data, name)
