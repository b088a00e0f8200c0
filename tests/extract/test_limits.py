"""Size caps on what the scan and extraction hold: nested archives (OBB), DEX files, the manifest.

A hostile app can declare or inflate any size; the walk refuses past ``Limits`` with an
``UnsafeInputError`` that names the entry and the cap, and a nested OBB is streamed, never read whole.
"""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from replaybench.errors import UnsafeInputError
from replaybench.extract.blobs import extract_blobs
from replaybench.extract.containers import Limits, read_capped, spill_capped
from replaybench.extract.scan import scan_app
from tests.fuzz import seeds

MIB = 1 << 20
OBB_NAME = "Android/obb/org.example.fuzz/main.1.org.example.fuzz.obb"


def _xapk(path: Path, obb: bytes) -> Path:
    path.write_bytes(
        seeds.make_zip(
            [
                ("manifest.json", b'{"package_name": "org.example.fuzz"}', zipfile.ZIP_DEFLATED),
                (
                    "base.apk",
                    seeds.make_zip([("AndroidManifest.xml", seeds.AXML_HEAD, 0)]),
                    zipfile.ZIP_STORED,
                ),
                (OBB_NAME, obb, zipfile.ZIP_DEFLATED),
            ]
        )
    )
    return path


def _obb(padding: int) -> bytes:
    """An OBB of ``padding`` + a few KiB bytes: the seed model and ``padding`` zero bytes stored (the OBB
    itself is deflated inside the XAPK, so the app stays small while the OBB declares its full size)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("models/gender.tflite", seeds.tflite_model())
        z.writestr("assets/padding.bin", bytes(padding))
    return buf.getvalue()


def test_nested_obb_over_the_cap_is_refused_by_the_scan(tmp_path: Path) -> None:
    app = _xapk(tmp_path / "app.xapk", _obb(2 * MIB))
    with pytest.raises(UnsafeInputError) as e:
        scan_app([app], code=False, limits=Limits(max_nested_size=1 * MIB))
    assert OBB_NAME in e.value.message and "1,048,576" in e.value.message
    # The same app under the default cap is scanned, the model in the OBB found.
    inv = scan_app([app], code=False)
    assert [b.location.container[-1] for b in inv.model_blobs] == [OBB_NAME]


def test_nested_obb_over_the_cap_is_refused_by_extraction(tmp_path: Path) -> None:
    app = _xapk(tmp_path / "app.xapk", _obb(2 * MIB))
    inv = scan_app([app], code=False)
    with pytest.raises(UnsafeInputError, match="1,048,576"):
        extract_blobs(inv, tmp_path / "out", limits=Limits(max_nested_size=1 * MIB))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_nested_obb_is_streamed_not_read_whole(tmp_path: Path) -> None:
    """Extracting a model from a 24 MiB OBB holds far less than the OBB in memory (it used to be read
    whole with ``f.read()``)."""
    obb_size = 24 * MIB
    app = _xapk(tmp_path / "app.xapk", _obb(obb_size))
    inv = scan_app([app], code=False)
    tracemalloc.start()
    try:
        manifest = extract_blobs(inv, tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [b.blob.format for b in manifest.blobs] == ["tflite"]
    assert (tmp_path / "out" / manifest.blobs[0].file).read_bytes() == seeds.tflite_model()
    assert peak < obb_size // 3, f"peak {peak:,} bytes while extracting from a {obb_size:,}-byte OBB"


def test_dex_over_the_cap_is_refused(tmp_path: Path) -> None:
    dex = seeds.dex_file()
    app = tmp_path / "app.apk"
    app.write_bytes(
        seeds.make_zip(
            [("AndroidManifest.xml", seeds.AXML_HEAD, 0), ("classes.dex", dex, zipfile.ZIP_DEFLATED)]
        )
    )
    with pytest.raises(UnsafeInputError) as e:
        scan_app([app], code=True, limits=Limits(max_dex_size=len(dex) - 1))
    assert "classes.dex" in e.value.message and f"{len(dex) - 1:,}" in e.value.message
    inv = scan_app([app], code=True, limits=Limits(max_dex_size=len(dex)))  # exactly at the cap: read
    assert any(r.kind == "api" for r in inv.code_references)


def test_manifest_over_the_cap_is_refused(tmp_path: Path) -> None:
    app = tmp_path / "app.apk"
    app.write_bytes(seeds.make_zip([("AndroidManifest.xml", seeds.AXML_HEAD + bytes(60), 0)]))
    with pytest.raises(UnsafeInputError, match="AndroidManifest.xml"):
        scan_app([app], code=False, limits=Limits(max_manifest_size=32))


def test_streams_that_inflate_past_the_cap_are_refused(tmp_path: Path) -> None:
    """The streaming guard itself, for a stream longer than its declared size: no more than the cap
    plus one chunk is held, and a partial spill file is removed."""
    assert read_capped(io.BytesIO(b"x" * 4096), 4096, "a!b", "DEX file", head=b"") == b"x" * 4096
    with pytest.raises(UnsafeInputError, match=r"a!b: DEX file inflates past the cap of 4,096 bytes"):
        read_capped(io.BytesIO(b"x" * 4000), 4096, "a!b", "DEX file", head=b"y" * 97)
    dest = tmp_path / "spill.zip"
    with pytest.raises(UnsafeInputError, match="4,096"):
        spill_capped(io.BytesIO(bytes(10_000)), dest, 4096, "a!b", "nested archive")
    assert not dest.exists()
    assert spill_capped(io.BytesIO(bytes(4096)), dest, 4096, "a!b", "nested archive") == 4096
