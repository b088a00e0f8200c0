"""The trace format: typed events, a forgiving reader (garbage and truncated lines, missing dumps), and
matching traced models to APK blobs (sha256, name+size, decrypted-in-memory), version checks, tensors."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from replaybench.bundle import PreprocessSpec, ResizeSpec
from replaybench.errors import InputNotFoundError, TraceError
from replaybench.extract.preprocess import infer_preprocess
from replaybench.extract.trace import (
    TRACE_JSONL,
    BitmapEvent,
    FileOpenEvent,
    InvokeEvent,
    ModelLoadEvent,
    SessionEvent,
    TensorEvent,
    TraceWriter,
    read_trace,
)
from replaybench.extract.trace_match import (
    AppIdentity,
    InventoryBlob,
    match_trace,
    preprocessing_pairs,
    traced_invokes,
)
from replaybench.replay.preprocess import apply_preprocess

PLAIN = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 8  # a model stored as-is in the APK
DECRYPTED = b"\x1c\x00\x00\x00TFL3" + bytes(reversed(range(256))) * 12  # only ever in memory
CIPHERTEXT_SIZE = len(DECRYPTED) + 16  # AES IV/padding


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def blobs() -> list[InventoryBlob]:
    return [
        InventoryBlob(["base.apk"], "assets/age.tflite", 0, len(PLAIN), sha(PLAIN), 5.1, False, "tflite"),
        InventoryBlob(["base.apk"], "assets/face.enc", 0, CIPHERTEXT_SIZE, "e" * 64, 7.99, True, "unknown"),
        InventoryBlob(["base.apk"], "assets/other.enc", 0, 50_000, "f" * 64, 7.98, True, "unknown"),
        InventoryBlob(["base.apk"], "assets/unused.tflite", 0, 999, "a" * 64, 4.0, False, "tflite"),
    ]


def write_trace(folder: Path, *, package="com.example.app", version_name="1.2.3", version_code=123) -> Path:
    """A trace as an app with one plain and one encrypted model would leave it."""
    rng = np.random.default_rng(0)
    with TraceWriter(folder) as w:
        w.write(
            {
                "kind": "session",
                "package": package,
                "version_name": version_name,
                "version_code": version_code,
            }
        )
        w.write({"kind": "session", "agent_version": "1.0.0", "abi": "arm64", "pid": 42, "java": True})
        w.write(
            {
                "kind": "file_open",
                "t": 10,
                "path": "assets/age.tflite",
                "api": "AAssetManager_open",
                "asset": True,
            }
        )
        w.write(
            {
                "kind": "model_load",
                "t": 11,
                "runtime": "tflite",
                "api": "TfLiteModelCreate",
                "handle": "0x10",
                "source": "asset",
                "path": "assets/age.tflite",
                "size": len(PLAIN),
            },
            PLAIN,
        )
        w.write(
            {
                "kind": "file_open",
                "t": 20,
                "path": "assets/face.enc",
                "api": "AAssetManager_open",
                "asset": True,
            }
        )
        w.write(
            {
                "kind": "model_load",
                "t": 21,
                "runtime": "tflite",
                "api": "NativeInterpreterWrapper.createModelWithBuffer",
                "handle": "0x20",
                "source": "buffer",
                "size": len(DECRYPTED),
            },
            DECRYPTED,
        )
        spec = PreprocessSpec(
            resize=ResizeSpec(width=8, height=8, method="bilinear_android"), scale=[1 / 127.5], offset=[-1.0]
        )
        for seq in (1, 2):
            img = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
            img[..., 3] = 255
            w.write(
                {"kind": "bitmap", "width": 10, "height": 12, "format": "RGBA_8888", "invoke": seq},
                img.tobytes(),
            )
            x = apply_preprocess(img[..., :3], spec)[None]
            w.write(
                {
                    "kind": "tensor",
                    "interpreter": "0x99",
                    "model": "0x20",
                    "invoke": seq,
                    "io": "input",
                    "index": 0,
                    "name": "image",
                    "shape": [1, 8, 8, 3],
                    "dtype": "float32",
                    "type_code": 1,
                },
                x.tobytes(),
            )
            y = np.array([[0.25, 0.75]], np.float32) * seq
            w.write(
                {
                    "kind": "tensor",
                    "interpreter": "0x99",
                    "model": "0x20",
                    "invoke": seq,
                    "io": "output",
                    "index": 0,
                    "shape": [1, 2],
                    "dtype": "float32",
                },
                y.tobytes(),
            )
            w.write(
                {
                    "kind": "invoke",
                    "api": "NativeInterpreterWrapper.run",
                    "seq": seq,
                    "interpreter": "0x99",
                    "model": "0x20",
                }
            )
    return folder


def test_roundtrip_and_dumps_named_by_sha256(tmp_path: Path) -> None:
    trace = read_trace(write_trace(tmp_path / "t"))
    assert trace.summary.malformed_lines == 0
    assert trace.summary.models_loaded == 2 and trace.summary.invokes == 2
    loads = trace.of_kind(ModelLoadEvent)
    assert [m.sha256 for m in loads] == [sha(PLAIN), sha(DECRYPTED)]
    assert [(trace.dumps / m.sha256).read_bytes() for m in loads] == [PLAIN, DECRYPTED]
    s = trace.session()
    assert (s.package, s.version_code, s.abi, s.agent_version) == ("com.example.app", 123, "arm64", "1.0.0")
    # Every line comes back as its own typed event, in order.
    per_invoke = [BitmapEvent, TensorEvent, TensorEvent, InvokeEvent]
    expected = [SessionEvent, SessionEvent, FileOpenEvent, ModelLoadEvent, FileOpenEvent, ModelLoadEvent]
    assert [type(e) for e in trace.events] == expected + per_invoke * 2
    tensors = trace.of_kind(TensorEvent)
    assert [(t.invoke, t.io, t.shape) for t in tensors] == [
        (1, "input", [1, 8, 8, 3]),
        (1, "output", [1, 2]),
        (2, "input", [1, 8, 8, 3]),
        (2, "output", [1, 2]),
    ]


def test_garbage_and_truncated_lines_are_counted_and_skipped(tmp_path: Path, caplog) -> None:
    folder = write_trace(tmp_path / "t")
    path = folder / TRACE_JSONL
    lines = path.read_text().splitlines()
    lines.insert(2, "this is not json")
    lines.insert(4, json.dumps({"kind": "model_load", "v": 1}))  # misses runtime/api
    lines.insert(5, json.dumps([1, 2, 3]))
    lines.insert(6, json.dumps({"kind": "from_the_future", "v": 9}))
    lines.append(lines[3][: len(lines[3]) // 2])  # the capture was killed mid-line
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        trace = read_trace(folder)
    assert trace.summary.malformed_lines == 4
    assert trace.summary.unknown_kinds == {"from_the_future": 1}
    assert trace.summary.models_loaded == 2  # the good lines all survived
    assert "malformed" in caplog.text


def test_missing_dump_folder_is_reported(tmp_path: Path) -> None:
    folder = write_trace(tmp_path / "t")
    for p in (folder / "dumps").iterdir():
        p.unlink()
    (folder / "dumps").rmdir()
    trace = read_trace(folder)
    assert trace.summary.dump_folder_missing
    assert trace.summary.dumps_missing == trace.summary.dumps_referenced == 8
    assert any("dump folder" in w for w in trace.summary.warnings)
    m = match_trace(trace, blobs())
    assert m.models[0].blob.entry == "assets/age.tflite"  # the sha256 in the trace still matches
    assert not m.models[0].dump_available
    assert traced_invokes(trace) == {}


def test_no_usable_line_and_no_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        read_trace(tmp_path / "nowhere")
    (tmp_path / TRACE_JSONL).write_text("garbage\n{\n")
    with pytest.raises(TraceError, match="no usable trace event"):
        read_trace(tmp_path)


def test_match_by_sha256_and_decrypted_from_encrypted_entry(tmp_path: Path) -> None:
    trace = read_trace(write_trace(tmp_path / "t"))
    app = AppIdentity(package="com.example.app", version_name="1.2.3", version_code=123)
    m = match_trace(trace, blobs(), app)
    plain, mem = m.models
    assert (plain.how, plain.blob.entry, plain.confidence) == ("sha256", "assets/age.tflite", 1.0)
    assert mem.how == "decrypted-from" and mem.blob.entry == "assets/face.enc"
    assert mem.invokes == 2 and mem.dump_available
    assert mem.alternatives and mem.alternatives[0]["entry"] == "assets/other.enc"
    assert mem.alternatives[0]["score"] < mem.confidence
    assert {b.entry for b in m.blobs_ran} == {"assets/age.tflite", "assets/face.enc"}
    assert {b.entry for b in m.blobs_never_loaded} == {"assets/other.enc", "assets/unused.tflite"}
    assert m.memory_only == 1
    assert m.version.same_app is True and not m.version.reasons


@pytest.mark.parametrize(
    ("app", "reason"),
    [
        (AppIdentity(package="com.other.app"), "the trace is of com.example.app"),
        (AppIdentity(package="com.example.app", version_name="2.0.0"), "version name differs"),
        (AppIdentity(package="com.example.app", version_code=200), "version code differs"),
    ],
)
def test_mismatched_app_version_is_detected(tmp_path: Path, app: AppIdentity, reason: str) -> None:
    m = match_trace(read_trace(write_trace(tmp_path / "t")), blobs(), app)
    assert m.version.same_app is False
    assert any(reason in r for r in m.version.reasons)
    assert any("another app or version" in w for w in m.warnings)


def test_same_name_other_bytes_reveals_another_version(tmp_path: Path) -> None:
    # The APK's age.tflite differs from what the (older) app loaded under the same name and size.
    changed = [
        InventoryBlob(["base.apk"], "assets/age.tflite", 0, len(PLAIN), "b" * 64, 5.0, False, "tflite")
    ]
    m = match_trace(read_trace(write_trace(tmp_path / "t")), changed, AppIdentity(package="com.example.app"))
    assert m.models[0].how == "path" and m.models[0].blob.entry == "assets/age.tflite"
    assert m.version.same_app is False and "assets/age.tflite" in m.version.reasons[0]


def test_inventory_document_plugs_in() -> None:
    doc = {
        "blobs": [
            {
                "location": {
                    "container": ["x.xapk", "base.apk"],
                    "entry": "lib/arm64-v8a/libm.so",
                    "offset": 4096,
                    "section": ".rodata",
                    "vaddr": 8192,
                },
                "format": "tflite",
                "size": 10,
                "sha256": "c" * 64,
                "entropy": 6.0,
                "encrypted": False,
                "evidence": ["TFL3 magic"],
                "details": {},
            }
        ]
    }
    (b,) = InventoryBlob.from_inventory(doc)
    assert (b.container, b.entry, b.offset, b.size, b.format) == (
        ["x.xapk", "base.apk"],
        "lib/arm64-v8a/libm.so",
        4096,
        10,
        "tflite",
    )


def test_traced_tensors_and_pairs_feed_preprocessing_inference(tmp_path: Path) -> None:
    trace = read_trace(write_trace(tmp_path / "t"))
    invokes = traced_invokes(trace)[sha(DECRYPTED)]
    assert [i.seq for i in invokes] == [1, 2]
    np.testing.assert_array_equal(invokes[1].outputs[0].array, np.array([[0.5, 1.5]], np.float32))
    assert invokes[0].bitmap.shape == (12, 10, 3)
    pairs = preprocessing_pairs(trace, sha(DECRYPTED))
    assert len(pairs) == 2
    spec = infer_preprocess(pairs)
    assert (spec.resize.width, spec.resize.height, spec.resize.method) == (8, 8, "bilinear_android")
    np.testing.assert_allclose(spec.mean, [127.5] * 3, atol=1e-4)
