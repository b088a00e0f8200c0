"""Images are paired with the invoke of the model they fed (by interpreter, then thread), camera frames
(NV21) are converted as libyuv does, and a crop the app passed is read from the trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replaybench.extract.preprocess import infer_from_invokes
from replaybench.extract.trace import TraceWriter, read_trace
from replaybench.extract.trace_match import traced_invokes
from replaybench.replay.preprocess import apply_preprocess


@pytest.fixture(scope="module")
def photos(realdata: Path) -> list[np.ndarray]:
    folder = realdata / "coco_mini_captions_159" / "val2017"
    paths = sorted(folder.glob("*.jpg"))[3:7]
    if len(paths) < 4:
        pytest.skip(f"fewer than 7 COCO photos in {folder}")
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        im.thumbnail((160, 160))
        # even sizes: a 4:2:0 frame of the photo needs no chroma padding
        out.append(np.asarray(im)[: im.height // 2 * 2, : im.width // 2 * 2])
    return out


def _rgba(img: np.ndarray) -> bytes:
    return np.concatenate([img, np.full((*img.shape[:2], 1), 255, np.uint8)], axis=2).tobytes()


def _stretch(img: np.ndarray, size: int) -> np.ndarray:
    im = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR), np.float32)
    return (im / 255.0)[None]


def _model(w: TraceWriter, handle: str, interp: str, tid: int, sha: str) -> None:
    w.write(
        {"kind": "model_load", "runtime": "tflite", "api": "x", "handle": handle, "sha256": sha, "tid": tid}
    )
    w.write({"kind": "interpreter", "runtime": "tflite", "api": "x", "interpreter": interp, "model": handle})


def _invoke(w: TraceWriter, seq: int, handle: str, interp: str, tid: int, x: np.ndarray) -> None:
    common = {"kind": "tensor", "interpreter": interp, "model": handle, "invoke": seq, "tid": tid}
    w.write({**common, "io": "input", "index": 0, "shape": list(x.shape), "dtype": str(x.dtype)}, x.tobytes())
    w.write({"kind": "invoke", "api": "run", "seq": seq, "interpreter": interp, "model": handle, "tid": tid})


def _bitmap(w: TraceWriter, img: np.ndarray, tid: int, tag: int, **extra: object) -> None:
    event = {"kind": "bitmap", "width": img.shape[1], "height": img.shape[0], "invoke": tag, "tid": tid}
    w.write(event | extra, _rgba(img))


def test_interleaved_models_on_two_threads_get_their_own_images(tmp_path, photos):
    a_imgs, b_imgs = photos[:2], photos[2:]
    with TraceWriter(tmp_path / "t") as w:
        _model(w, "0xa", "ia", 101, "a" * 64)
        _model(w, "0xb", "ib", 202, "b" * 64)
        seq = 0
        for a, b in zip(a_imgs, b_imgs, strict=True):
            # Both threads capture their image before either model runs; the agent's tag ("the next
            # invoke of the process") names the same invoke for both; model B runs first.
            _bitmap(w, b, 202, seq + 1)
            _bitmap(w, a, 101, seq + 1)
            _invoke(w, seq + 1, "0xb", "ib", 202, _stretch(b, 24))
            _invoke(w, seq + 2, "0xa", "ia", 101, _stretch(a, 16))
            seq += 2
    invokes = traced_invokes(read_trace(tmp_path / "t"))
    for key, imgs in (("a" * 64, a_imgs), ("b" * 64, b_imgs)):
        got = invokes[key]
        assert [inv.pairing for inv in got] == ["thread", "thread"]
        for inv, img in zip(got, imgs, strict=True):
            np.testing.assert_array_equal(inv.bitmap, img)
        spec = infer_from_invokes(got)
        assert not spec.unresolved and spec.resize.width == (16 if key[0] == "a" else 24)


def test_image_naming_its_interpreter_feeds_that_interpreter(tmp_path, photos):
    with TraceWriter(tmp_path / "t") as w:
        _model(w, "0xa", "ia", 1, "a" * 64)
        _model(w, "0xb", "ib", 1, "b" * 64)
        # One thread; the image for A is taken before B's invoke runs on the same thread.
        _bitmap(w, photos[0], 1, 1, interpreter="ia")
        _invoke(w, 1, "0xb", "ib", 1, _stretch(photos[1], 24))
        _invoke(w, 2, "0xa", "ia", 1, _stretch(photos[0], 16))
    invokes = traced_invokes(read_trace(tmp_path / "t"))
    (a,) = invokes["a" * 64]
    assert a.pairing == "interpreter"
    np.testing.assert_array_equal(a.bitmap, photos[0])
    assert invokes["b" * 64][0].bitmap is None


def test_trace_without_threads_falls_back_to_the_agent_tag(tmp_path, photos):
    with TraceWriter(tmp_path / "t") as w:
        _model(w, "0xa", "ia", 1, "a" * 64)
        w.write(
            {"kind": "bitmap", "width": photos[0].shape[1], "height": photos[0].shape[0], "invoke": 1},
            _rgba(photos[0]),
        )
        x = _stretch(photos[0], 16)
        w.write(
            {
                "kind": "tensor",
                "interpreter": "ia",
                "model": "0xa",
                "invoke": 1,
                "io": "input",
                "index": 0,
                "shape": list(x.shape),
                "dtype": "float32",
            },
            x.tobytes(),
        )
    (inv,) = traced_invokes(read_trace(tmp_path / "t"))["a" * 64]
    assert inv.pairing == "tag"
    np.testing.assert_array_equal(inv.bitmap, photos[0])


# ------------------------------------------------------------------------------------- camera frames


def rgb_to_nv21_float(img: np.ndarray) -> bytes:
    """BT.601 limited range from the textbook float formula (independent of libyuv's integers);
    chroma averaged over 2x2 blocks; Y plane then interleaved V, U."""
    p = img.astype(np.float64)
    r, g, b = p[..., 0], p[..., 1], p[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape
    u2 = u.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    v2 = v.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    q = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
    return q(y).tobytes() + np.stack([q(v2), q(u2)], axis=-1).tobytes()


def nv21_to_rgb_libyuv(frame: bytes, w: int, h: int) -> np.ndarray:
    """libyuv NV21ToARGB as written in its row_common.cc (YuvPixel, BT.601 constants), pixel by pixel
    in plain Python ints: the reference the app's conversion is checked against."""
    buf = np.frombuffer(frame, np.uint8)
    out = np.zeros((h, w, 3), np.uint8)
    clamp = lambda x: 0 if x < 0 else 255 if x > 255 else x  # noqa: E731
    for j in range(h):
        for i in range(w):
            y = int(buf[j * w + i])
            c = w * h + (j // 2) * w + (i // 2) * 2
            v, u = int(buf[c]), int(buf[c + 1])
            y1 = (y * 0x0101 * 18997) >> 16
            b = clamp((-(u * -128) + y1 + (-128 * 128 - 1160)) >> 6)
            g = clamp((-(v * 52 + u * 25) + y1 + (25 * 128 + 52 * 128 - 1160)) >> 6)
            r = clamp((-(v * -102) + y1 + (-102 * 128 - 1160)) >> 6)
            out[j, i] = (r, g, b)
    return out


def test_nv21_camera_frames(tmp_path, photos):
    frames = [p[:48, :64] for p in photos[:2]]  # small: the reference converts pixel by pixel
    with TraceWriter(tmp_path / "t") as w:
        _model(w, "0xa", "ia", 7, "a" * 64)
        for k, img in enumerate(frames):
            nv21 = rgb_to_nv21_float(img)
            rgb = nv21_to_rgb_libyuv(nv21, img.shape[1], img.shape[0])  # what the app feeds on
            w.write(
                {"kind": "bitmap", "width": 64, "height": 48, "format": "NV21", "tid": 7, "invoke": k + 1},
                nv21,
            )
            _invoke(w, k + 1, "0xa", "ia", 7, _stretch(rgb, 20))
    invokes = traced_invokes(read_trace(tmp_path / "t"))["a" * 64]
    for inv, img in zip(invokes, frames, strict=True):
        assert inv.source_format == "nv21"
        np.testing.assert_array_equal(inv.bitmap, nv21_to_rgb_libyuv(rgb_to_nv21_float(img), 64, 48))
    spec = infer_from_invokes(invokes)
    assert not spec.unresolved and spec.source_format == "nv21"
    # Replay gives an RGB photo the camera's 4:2:0 limited-range round trip; on an image that already
    # went through it, that changes little.
    for inv in invokes:
        x = apply_preprocess(inv.bitmap, spec)
        plain = apply_preprocess(inv.bitmap, spec.model_copy(update={"source_format": "rgb"}))
        assert x.shape == plain.shape and np.abs(x - plain).mean() < 0.02


def test_crop_passed_by_the_app_is_read_not_guessed(tmp_path, photos):
    with TraceWriter(tmp_path / "t") as w:
        _model(w, "0xa", "ia", 7, "a" * 64)
        for k, img in enumerate(photos[:2]):
            h, wd = img.shape[:2]
            x, y, cw, ch = wd // 4, h // 4, wd // 2, h // 2  # the same quarter-inset box of each frame
            _bitmap(w, img, 7, k + 1, crop=[x, y, cw, ch])
            _invoke(w, k + 1, "0xa", "ia", 7, _stretch(img[y : y + ch, x : x + cw], 20))
    invokes = traced_invokes(read_trace(tmp_path / "t"))["a" * 64]
    assert all(inv.crop is not None for inv in invokes)
    spec = infer_from_invokes(invokes)
    assert not spec.unresolved and spec.resize.crop_box is not None
    np.testing.assert_allclose(spec.resize.crop_box, [0.25, 0.25, 0.75, 0.75], atol=0.02)


def test_images_drawn_on_another_thread_than_every_invoke_use_the_tag(tmp_path, photos):
    with TraceWriter(tmp_path / "t") as w:
        _model(w, "0xa", "ia", 1, "a" * 64)
        for k, img in enumerate(photos[:2]):
            _bitmap(w, img, 1, k + 1)  # the UI thread draws; a worker thread runs the model
            _invoke(w, k + 1, "0xa", "ia", 2, _stretch(img, 16))
    invokes = traced_invokes(read_trace(tmp_path / "t"))["a" * 64]
    assert [inv.pairing for inv in invokes] == ["tag", "tag"]
    for inv, img in zip(invokes, photos[:2], strict=True):
        np.testing.assert_array_equal(inv.bitmap, img)
