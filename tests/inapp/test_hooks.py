"""The hook manifest (validation, refusals) and the host's reading of agent results, without a device.

The Java kinds cannot run here (no Android): their manifests are validated and the results the agent
would send for them are parsed as any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replaybench.errors import CorruptInputError, InputNotFoundError
from replaybench.replay.hooks import InputSpec, JavaBitmapFeed, load_manifest, parse_manifest
from replaybench.replay.inapp import pack_image, parse_result

NATIVE = {
    "name": "effect",
    "app": {"package": "com.example", "version": "3.1"},
    "feed": {
        "kind": "native_offset",
        "module": "libeffect.so",
        "offset": "0xc6ed84",
        "signature": {"args": ["buffer", "width", "height", "format", "output"], "format_value": 2},
    },
    "read": {"kind": "output_tensor", "outputs": [{"name": "age"}, {"name": "gender", "count": 2}]},
    "postprocess": {
        "decoders": [
            {"output": "gender", "field": "gender_pred", "kind": "softmax_argmax", "labels": ["m", "f"]}
        ]
    },
}
JAVA = {
    "name": "clips-xray",
    "app": {
        "package": "com.instagram.android",
        "version": "300.0.0",
        "version_from": {"kind": "java_package"},
    },
    "input": {"pixel_format": "RGBA8888"},
    "feed": {"kind": "java_bitmap_method", "class_name": "X.7QR", "method": "A00", "instance": "choose"},
    "read": {"kind": "java_fields", "fields": {"scores": "A00"}, "counts": {"scores": 3}},
}
TIKTOK = {
    "name": "tiktok-age",
    "app": {"package": "com.zhiliaoapp.musically", "version": "26.1.3"},
    "input": {
        "pixel_format": "RGBA8888",
        "resize": {"width": 720, "height": 1280, "method": "bilinear_android"},
    },
    "feed": {
        "kind": "frame_substitution",
        "call_site": {"module": "libeffect.so", "offset": "0x9de33c"},
        "buffer_arg": 1,
    },
    "read": {
        "kind": "json_message",
        "hook": {"class_name": "com.bef.effectsdk.message.MessageCenter", "method": "postMessage"},
        "arg": 3,
        "fields": {"age": "base_infos.0.age", "boy_prob": "base_infos.0.boy_prob"},
        "skip_unless": {"face_count": 1},
        "wait_ms": 500,
    },
    "postprocess": {"decoders": [{"output": "age", "field": "age_pred", "kind": "scale"}]},
}


def _with(doc: dict, **changes: object) -> dict:
    out = json.loads(json.dumps(doc))
    for path, value in changes.items():
        node = out
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return out


def test_manifests_of_each_kind_validate() -> None:
    m = parse_manifest(NATIVE)
    assert m.feed.offset == 0xC6ED84  # written as in a disassembler
    assert m.output_sizes() == {"age": 1, "gender": 2}
    java = parse_manifest(JAVA)
    assert isinstance(java.feed, JavaBitmapFeed) and java.uses_java and java.output_sizes() == {"scores": 3}
    tiktok = parse_manifest(TIKTOK)
    assert tiktok.uses_java and tiktok.output_sizes() == {"age": 1, "boy_prob": 1}


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (_with(NATIVE, extra_key=1), "extra_key: Extra inputs are not permitted"),
        (_with(NATIVE, feed__signature__format_value=None), "needs format_value"),
        (_with(NATIVE, feed__signature__args=["width", "height"]), "needs a 'buffer' argument"),
        (_with(NATIVE, feed__offset="c6ed84z"), "is not a number"),
        (
            _with(NATIVE, feed__kind="native_bitmap"),
            "feed: Input tag 'native_bitmap' found using 'kind' does not match",
        ),
        (
            _with(NATIVE, read={"kind": "java_fields", "fields": {"a": "A00"}}),
            "needs feed 'java_bitmap_method'",
        ),
        (
            _with(
                NATIVE,
                feed__signature__args=["buffer", "width", "height"],
                feed__signature__format_value=None,
            ),
            "needs a native feed whose signature has an 'output'",
        ),
        (
            _with(NATIVE, postprocess__decoders=[{"output": "score", "field": "s", "kind": "scale"}]),
            "reads output 'score'",
        ),
        (_with(TIKTOK, input__resize=None), "input.resize must give it"),
        (_with(TIKTOK, read={"kind": "return_value"}), "with frame_substitution read a json_message"),
        (_with(TIKTOK, feed__call_site__symbol="onFrame"), "exactly one of symbol or offset"),
        (_with(JAVA, input__pixel_format="RGB888"), "ARGB_8888"),
    ],
)
def test_bad_manifests_are_refused_naming_the_problem(doc: dict, problem: str) -> None:
    with pytest.raises(CorruptInputError) as info:
        parse_manifest(doc)
    assert problem in info.value.message


def test_a_newer_schema_and_bad_json_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptInputError, match="schema_version 2; this replaybench reads up to 1"):
        parse_manifest(_with(NATIVE, schema_version=2))
    bad = tmp_path / "hooks.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(CorruptInputError, match="is not JSON"):
        load_manifest(bad)
    with pytest.raises(InputNotFoundError):
        load_manifest(tmp_path / "absent.json")


def test_output_tensor_results_are_split_by_the_manifest() -> None:
    m = parse_manifest(NATIVE)
    data = np.array([31.5, 0.25, -2.0], "<f4").tobytes()
    got = parse_result(m, {"type": "result", "id": 1}, data)
    assert got.status == "ok"
    assert got.outputs is not None and got.outputs["age"].tolist() == [31.5]
    assert got.outputs["gender"].tolist() == [0.25, -2.0]
    short = parse_result(m, {"type": "result", "id": 1}, data[:8])
    assert short.status == "error" and "8 bytes, the manifest says 12" in (short.error or "")
    assert short.raw == data[:8].hex()


def test_agent_errors_keep_the_raw_value() -> None:
    got = parse_result(
        parse_manifest(NATIVE), {"id": 3, "error": "the function returned -2 (ok is 0)", "raw": "-2"}, None
    )
    assert (got.status, got.error, got.raw) == ("error", "the function returned -2 (ok is 0)", "-2")


def test_json_messages_as_the_paper_read_them() -> None:
    """TikTok's postMessage payloads: kept only with one face, fields by path; the raw text is kept."""
    m = parse_manifest(TIKTOK)
    one = '{"face_count": 1, "base_infos": [{"age": 27.4, "boy_prob": 0.91}]}'
    got = parse_result(m, {"messages": ["{}", one]}, None)  # the last message of the item counts
    assert got.status == "ok" and got.outputs is not None
    assert got.outputs["age"].tolist() == [27.4] and got.outputs["boy_prob"].tolist() == [0.91]
    assert got.raw == one
    two = '{"face_count": 2, "base_infos": [{"age": 27.4, "boy_prob": 0.91}, {"age": 3, "boy_prob": 0.1}]}'
    skipped = parse_result(m, {"messages": [two]}, None)
    assert (skipped.status, skipped.error, skipped.raw) == ("skipped", "face_count is 2, not 1", two)
    garbled = parse_result(m, {"messages": ["face_count=1"]}, None)
    assert garbled.status == "error" and garbled.error.startswith("result does not parse: not JSON")
    assert garbled.raw == "face_count=1"
    missing = parse_result(m, {"messages": ['{"face_count": 1, "base_infos": []}']}, None)
    assert missing.status == "error" and "no 'base_infos.0.age' in the message" in (missing.error or "")
    text = parse_result(
        m, {"messages": ['{"face_count": 1, "base_infos": [{"age": "old", "boy_prob": 1}]}']}, None
    )
    assert text.status == "error" and "'base_infos.0.age' is \"old\", not a number" in (text.error or "")
    none = parse_result(m, {"messages": []}, None)
    assert none.status == "error" and none.error == "no message reached the hook while the item ran"


def test_java_fields_and_return_values() -> None:
    m = parse_manifest(JAVA)
    got = parse_result(m, {"fields": {"scores": [0.1, 0.2, 0.7]}}, None)
    assert (
        got.status == "ok" and got.outputs is not None and got.outputs["scores"].tolist() == [0.1, 0.2, 0.7]
    )
    wrong = parse_result(m, {"fields": {"scores": [0.1, 0.2]}}, None)
    assert (
        wrong.status == "error"
        and "not 3 numbers" in (wrong.error or "")
        and wrong.raw == '{"scores": [0.1, 0.2]}'
    )
    ret = parse_manifest(_with(JAVA, read={"kind": "return_value", "name": "score"}))
    assert parse_result(ret, {"value": 0.5}, None).outputs == {"score": np.array([0.5])}
    nan = parse_result(ret, {"value": None}, None)  # NaN crosses the channel as null
    assert nan.status == "error" and nan.raw == "null"


def test_pixels_are_packed_as_the_app_takes_them() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    data, w, h = pack_image(img, InputSpec(pixel_format="BGRA8888"))
    px = np.frombuffer(data, np.uint8).reshape(30, 40, 4)
    assert (w, h) == (40, 30)
    assert np.array_equal(px[..., :3], img[..., ::-1]) and np.all(px[..., 3] == 255)
    spec = InputSpec(pixel_format="RGB888", resize={"width": 16, "height": 12, "method": "bilinear_pil"})
    data, w, h = pack_image(img, spec)
    want = np.asarray(Image.fromarray(img).resize((16, 12), Image.Resampling.BILINEAR))
    assert (w, h) == (16, 12) and np.array_equal(np.frombuffer(data, np.uint8).reshape(12, 16, 3), want)
    gray, _, _ = pack_image(img, InputSpec(pixel_format="GRAY8"))
    want_gray = np.asarray(Image.fromarray(img).convert("L"))
    assert np.abs(np.frombuffer(gray, np.uint8).reshape(30, 40).astype(int) - want_gray).max() <= 1


@pytest.mark.parametrize("method", ["bilinear_pil", "area", "bicubic_pil", "bilinear_tf", "nearest"])
@pytest.mark.parametrize("crop", [None, (0.1, 0.0, 0.9, 0.8)])
def test_packed_pixels_equal_the_bundle_preprocessing(method: str, crop: tuple | None) -> None:
    """The host resize is the kernel bundles use: equal to replay's own preprocessing to the byte."""
    from replaybench.bundle import PreprocessSpec, ResizeSpec
    from replaybench.replay.preprocess import apply_preprocess

    img = np.random.default_rng(1).integers(0, 256, (57, 83, 3), dtype=np.uint8)
    resize = ResizeSpec(width=31, height=24, method=method, crop_box=crop)
    data, w, h = pack_image(img, InputSpec(pixel_format="RGB888", resize=resize))
    want = apply_preprocess(img, PreprocessSpec(resize=resize, dtype="uint8", scale=[1.0], offset=[0.0]))
    assert (w, h) == (31, 24) and np.array_equal(np.frombuffer(data, np.uint8).reshape(24, 31, 3), want)
