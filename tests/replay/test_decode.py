"""Image decoding: every bad input is a DecodeFailure with its reason; odd modes and EXIF become upright RGB."""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import pytest
from PIL import Image

from replaybench.replay import decode as decode_mod
from replaybench.replay.decode import DecodeFailure, decode_image, draft_size

RNG = np.random.default_rng(1)
ARR = RNG.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)


def _reason(path) -> str:
    with pytest.raises(DecodeFailure) as e:
        decode_image(path)
    return e.value.reason


def test_bad_inputs_have_reasons(tmp_path):
    assert _reason(tmp_path / "missing.jpg").startswith("missing")
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert _reason(tmp_path / "zero.jpg").startswith("empty")
    (tmp_path / "text.jpg").write_bytes(b"this is not an image at all")
    assert _reason(tmp_path / "text.jpg").startswith("not an image")
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert _reason(tmp_path / "cut.jpg").startswith("truncated")
    png = io.BytesIO()
    Image.fromarray(ARR).save(png, "PNG")
    data = bytearray(png.getvalue())
    data[60:80] = b"\x00" * 20  # damage the IDAT chunk (bad CRC)
    (tmp_path / "bad.png").write_bytes(bytes(data))
    assert _reason(tmp_path / "bad.png").split(":")[0] in ("corrupt", "truncated")


def test_decompression_bomb_is_a_failure(tmp_path, monkeypatch):
    Image.fromarray(ARR).save(tmp_path / "big.png")
    monkeypatch.setattr(decode_mod, "MAX_IMAGE_PIXELS", 1000)  # 50x30 = 1500 px exceeds it
    assert _reason(tmp_path / "big.png").startswith("too large")


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP"])
def test_lossless_formats_roundtrip(tmp_path, fmt):
    p = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(ARR).save(p, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    np.testing.assert_array_equal(decode_image(p), ARR)


def test_modes_become_rgb(tmp_path):
    Image.fromarray(ARR[..., 0]).save(tmp_path / "g.png")
    g = decode_image(tmp_path / "g.png")
    assert g.shape == (30, 50, 3)
    np.testing.assert_array_equal(g[..., 1], ARR[..., 0])
    rgba = np.dstack([ARR, np.full(ARR.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "a.png"), ARR)  # alpha dropped, colours kept
    Image.fromarray(ARR).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    c = decode_image(tmp_path / "c.jpg")
    assert c.shape == (30, 50, 3) and np.abs(c.astype(int) - ARR).mean() < 12
    Image.fromarray(ARR[..., 0].astype(np.uint16) * 257).save(tmp_path / "i16.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "i16.png")[..., 0], ARR[..., 0])


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(ARR)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    out = decode_image(tmp_path / "o.jpg")
    assert out.shape == (50, 30, 3)
    ref = np.asarray(Image.open(tmp_path / "o.jpg").convert("RGB").transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(out, ref)


@pytest.mark.skipif(importlib.util.find_spec("pillow_heif") is None, reason="pillow-heif not installed")
def test_heic(tmp_path):
    import pillow_heif

    pillow_heif.register_heif_opener()
    smooth = np.asarray(Image.fromarray(ARR).resize((5, 3)).resize((50, 30), Image.Resampling.BILINEAR))
    Image.fromarray(smooth).save(tmp_path / "x.heic", quality=95)
    out = decode_image(tmp_path / "x.heic")
    assert out.shape == ARR.shape and np.abs(out.astype(int) - smooth).mean() < 8


def test_fast_decode_reduces_large_jpegs_but_not_below_the_target(tmp_path):
    big = np.asarray(Image.fromarray(ARR).resize((1000, 800)))
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    size = draft_size([(112, 80), (64, 96)])
    assert size == (112, 96)
    out = decode_image(tmp_path / "big.jpg", fast_size=size)
    assert out.shape == (100, 125, 3)  # 1/8 scale: the strongest DCT scaling still >= 112x96
    assert decode_image(tmp_path / "big.jpg", fast_size=(300, 300)).shape == (400, 500, 3)  # 1/2
    assert decode_image(tmp_path / "big.jpg").shape == (800, 1000, 3)


@pytest.mark.skipif(importlib.util.find_spec("simplejpeg") is None, reason="simplejpeg not installed")
def test_plain_jpeg_fast_path_gives_pillows_pixels(tmp_path, monkeypatch):
    big = np.asarray(Image.fromarray(ARR).resize((200, 120), Image.Resampling.BICUBIC))
    for i, (q, sub) in enumerate([(90, 2), (75, 0), (95, 1)]):
        p = tmp_path / f"p{i}.jpg"
        Image.fromarray(big).save(p, quality=q, subsampling=sub)
        assert decode_mod._decode_plain_jpeg(p) is not None  # really took the fast path
        np.testing.assert_array_equal(decode_image(p), np.asarray(Image.open(p).convert("RGB")))
    # EXIF orientation 1 is plain; any rotation, CMYK, truncation go through Pillow
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.fromarray(big).save(tmp_path / "o1.jpg", exif=exif)
    assert decode_mod._exif_orientation((tmp_path / "o1.jpg").read_bytes()) == 1
    assert decode_mod._decode_plain_jpeg(tmp_path / "o1.jpg") is not None
    exif[0x0112] = 8
    Image.fromarray(big).save(tmp_path / "o8.jpg", exif=exif)
    assert decode_mod._exif_orientation((tmp_path / "o8.jpg").read_bytes()) == 8
    assert decode_mod._decode_plain_jpeg(tmp_path / "o8.jpg") is None
    assert decode_image(tmp_path / "o8.jpg").shape == (200, 120, 3)
    Image.fromarray(big).convert("CMYK").save(tmp_path / "c.jpg")
    assert decode_mod._decode_plain_jpeg(tmp_path / "c.jpg") is None
    data = (tmp_path / "p0.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert decode_mod._decode_plain_jpeg(tmp_path / "cut.jpg") is None
    assert _reason(tmp_path / "cut.jpg").startswith("truncated")
    # the pixel cap holds on the fast path too
    monkeypatch.setattr(decode_mod, "MAX_IMAGE_PIXELS", 1000)
    assert _reason(tmp_path / "p0.jpg").startswith("too large")
