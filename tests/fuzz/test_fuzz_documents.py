"""Fuzz the readers of JSON documents a researcher is handed: trace JSON Lines, bundle.json, posts.

Structure-aware: valid documents (every trace event kind, a complete bundle, scraped GraphQL posts and
tables) are mutated at the JSON level (a value replaced by any JSON, a key dropped or added) and at the
byte level, and mixed with raw lines (deep nesting, huge integers, invalid UTF-8).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from replaybench.errors import ReplaybenchError
from tests.fuzz.harness import expect_typed, fuzz_settings, mutated

SHA = "ab" * 32

# -------------------------------------------------------------------------------------------- JSON

KEYS = (
    "kind", "v", "t", "name", "path", "dump", "sha256", "shape", "dtype", "quantization", "scale",
    "zero_point", "node", "caption", "edge_media_to_caption", "edges", "text", "images", "image", "post_id",
    "shortcode", "id", "schema_version", "io", "preprocess", "postprocess", "resize", "width", "height",
)  # fmt: skip
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20),
    st.sampled_from(["", "..", "../../etc/passwd", "/etc/passwd", "a\x00b", SHA, "session", "tensor"]),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)
RAW_LINES = (
    b"9" * 5000,  # an integer longer than Python's int-string limit
    b'{"kind": "tensor", "io": "input", "index": ' + b"9" * 5000 + b"}",
    b"[" * 200_000,  # nesting deeper than the recursion limit
    b'{"kind": "session", "app": ' + b"[" * 200_000,
    b"\xff\xfe not utf-8",
    b'{"kind": "session"',  # truncated
)


@st.composite
def json_mutated(draw: st.DrawFn, doc: Any, max_ops: int = 3) -> Any:
    """``doc`` with values replaced by any JSON value, keys dropped or added (at random depths)."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(0, max_ops))):
        node = doc
        for _ in range(draw(st.integers(0, 4))):  # walk down a random path
            kids = (
                list(node.items())
                if isinstance(node, dict)
                else list(enumerate(node))
                if isinstance(node, list)
                else []
            )
            kids = [(k, v) for k, v in kids if isinstance(v, dict | list)]
            if not kids:
                break
            node = draw(st.sampled_from(kids))[1]
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            op = draw(st.sampled_from(["replace", "drop", "add"]))
            if op == "replace":
                node[key] = draw(json_values)
            elif op == "drop":
                del node[key]
            else:
                node[draw(st.sampled_from(KEYS))] = draw(json_values)
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    return doc


def as_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@st.composite
def document_bytes(draw: st.DrawFn, doc: Any) -> bytes:
    """A document mutated as JSON, as bytes, or replaced by a raw hostile line."""
    kind = draw(st.sampled_from(["json", "json", "bytes", "raw"]))
    if kind == "raw":
        return draw(st.sampled_from(RAW_LINES))
    raw = as_bytes(draw(json_mutated(doc)))
    return draw(mutated(raw, max_ops=4)) if kind == "bytes" else raw


# -------------------------------------------------------------------------------------------- trace

EVENTS: list[dict[str, Any]] = [
    {"kind": "session", "app": "demo", "package": "org.example", "pid": 42, "java": True, "apk_sha256": [SHA]},
    {"kind": "library_load", "name": "libtflite.so", "path": "/data/app/lib/libtflite.so", "size": 1024},
    {"kind": "file_open", "path": "/data/app/base.apk", "api": "openat", "fd": 7, "offset": 0, "length": 10},
    {"kind": "model_load", "runtime": "tflite", "api": "TfLiteModelCreate", "handle": "0x1", "size": 8,
     "sha256": SHA, "dump": SHA},
    {"kind": "interpreter", "runtime": "tflite", "api": "TfLiteInterpreterCreate", "interpreter": "0x2",
     "model": "0x1"},
    {"kind": "tensor", "io": "input", "index": 0, "shape": [1, 2, 2, 3], "dtype": "float32", "type_code": 1,
     "quantization": {"scale": 0.5, "zero_point": 3}, "bytes": 48, "dump": SHA, "invoke": 1},
    {"kind": "bitmap", "width": 2, "height": 2, "format": "RGBA_8888", "dump": SHA, "invoke": 1},
    {"kind": "invoke", "api": "TfLiteInterpreterInvoke", "seq": 1, "interpreter": "0x2", "duration_ms": 1.5},
    {"kind": "watch", "target": "f", "phase": "leave", "args": [{"x": 1}], "retval": "0"},
    {"kind": "stats", "dropped": 3, "capped": 1, "errors": ["hook failed"]},
]  # fmt: skip


def _read_trace(lines: list[bytes]) -> object:
    from replaybench.extract.trace import read_trace

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "dumps").mkdir()
        (folder / "dumps" / SHA).write_bytes(b"\0" * 48)
        (folder / "trace.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        trace = read_trace(folder)
        trace.session()
        for e in trace.events:
            dump = getattr(e, "dump", None)
            path = trace.dump_path(dump if isinstance(dump, str) else None)
            assert path is None or path.parent == folder / "dumps"
        return trace.summary


@given(st.lists(st.one_of(*(document_bytes(e) for e in EVENTS)), min_size=1, max_size=12))
@fuzz_settings(100)
@example([b"9" * 5000, as_bytes(EVENTS[0])])  # found: int-string limit escaped as a bare ValueError
@example([b"[" * 200_000, as_bytes(EVENTS[0])])  # found: RecursionError from json.loads
def test_fuzz_trace_jsonl(lines: list[bytes]) -> None:
    expect_typed(_read_trace, lines)


# -------------------------------------------------------------------------------------------- bundle


def _bundle_doc() -> dict[str, Any]:
    from replaybench.bundle import (
        Bundle,
        ConversionInfo,
        Decoder,
        GraphPart,
        IOSpec,
        OutputParity,
        ParityReport,
        PostprocessSpec,
        PreprocessSpec,
        QuantParams,
        ResizeSpec,
        SourceInfo,
        TensorSpec,
        TextPreprocessSpec,
        VariantReport,
    )

    q = QuantParams(scale=0.5, zero_point=3)
    bundle = Bundle(
        name="fuzz",
        source=SourceInfo(app="org.example", container=["app.apk"], entry="a.tflite", format="tflite", sha256=SHA),
        io=IOSpec(
            inputs=[TensorSpec(name="x", shape=[1, 32, 32, 3], dtype="uint8", layout="NHWC", quantization=q)],
            outputs=[TensorSpec(name="y", shape=[1, "n", None], dtype="float32")],
        ),
        preprocess=PreprocessSpec(resize=ResizeSpec(width=32, height=32, crop_box=(0, 0, 1, 1)),
                                  scale=[1 / 127.5] * 3, offset=[-1.0] * 3, quantization=q,
                                  provenance={"scale": "trace"}, residual={"scale": 0.1}),
        postprocess=PostprocessSpec(task="classification", labels=["a", "b"],
                                    decoders=[Decoder(field="gender", kind="softmax_argmax", labels=["a", "b"])]),
        parity=ParityReport(reference_runtime="tflite", inputs_tried=2, passed=True,
                            outputs=[OutputParity(name="y", shape_match=True, dtype_match=True, max_abs_diff=0,
                                                  max_rel_diff=0, tolerance=1e-5, passed=True)]),
        conversion=ConversionInfo(converter="tf2onnx", opset=13),
        text=TextPreprocessSpec(),
        parts=[GraphPart(role="image_encoder", file="image.onnx", inputs=["x"], outputs=["y"])],
        variants=[VariantReport(name="int8", output="y", inputs_tried=2, max_abs_diff=0.1, mean_abs_diff=0.01)],
    )  # fmt: skip
    return json.loads(bundle.model_dump_json())


BUNDLE = _bundle_doc()


def _read_bundle(doc: bytes) -> object:
    from replaybench.bundle import PostprocessSpec, PreprocessSpec, load_bundle, read_spec

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "bundle.json").write_bytes(doc)
        (folder / "model.onnx").write_bytes(b"")
        results: list[object] = []
        for call in (
            lambda: load_bundle(folder),
            lambda: read_spec(folder, PreprocessSpec),
            lambda: read_spec(folder / "bundle.json", PostprocessSpec),
        ):
            try:
                results.append(call())
            except ReplaybenchError as e:
                results.append(e)
        return results


@given(document_bytes(BUNDLE))
@fuzz_settings(100)
@example(b"\xff")  # found: invalid UTF-8 escaped as UnicodeDecodeError
@example(b"[" * 200_000)  # found: RecursionError from json.loads in read_spec
def test_fuzz_bundle_json(doc: bytes) -> None:
    expect_typed(_read_bundle, doc)


# -------------------------------------------------------------------------------------------- posts

POST = {
    "node": {
        "shortcode": "p1",
        "edge_media_to_caption": {"edges": [{"node": {"text": "a caption #tag"}}]},
        "images": ["p1.jpg"],
        "likes": 3,
    }
}
ROW = {"post_id": "p2", "image": "p2.jpg", "caption": "another caption", "likes": "4"}


def _table_bytes(rows: list[dict[str, Any]], suffix: str) -> bytes:
    if suffix == ".jsonl":
        return b"".join(as_bytes(r) + b"\n" for r in rows)
    if suffix == ".parquet":
        import polars as pl

        buf = io.BytesIO()
        pl.DataFrame([{k: str(v) for k, v in r.items()} for r in rows if isinstance(r, dict)]).write_parquet(
            buf
        )
        return buf.getvalue()
    out = io.StringIO()
    keys = sorted({str(k) for r in rows if isinstance(r, dict) for k in r})
    w = csv.DictWriter(out, fieldnames=keys)
    w.writeheader()
    for r in rows:
        if isinstance(r, dict):
            w.writerow({str(k): json.dumps(v) if isinstance(v, dict | list) else v for k, v in r.items()})
    return out.getvalue().encode("utf-8", "surrogatepass")


@st.composite
def posts_folder(draw: st.DrawFn) -> dict[str, bytes]:
    """File name -> bytes: post JSONs (scraped shape, mutated) or one table (CSV/JSONL/Parquet)."""
    files: dict[str, bytes] = {"p1.jpg": b"\xff\xd8\xff", "p2.jpg": b"\xff\xd8\xff"}
    if draw(st.booleans()):
        for i in range(draw(st.integers(1, 3))):
            files[f"post{i}.json"] = draw(document_bytes(POST))
    else:
        suffix = draw(st.sampled_from([".csv", ".jsonl", ".parquet"]))
        rows = [draw(json_mutated(ROW)) for _ in range(draw(st.integers(1, 3)))]
        raw = _table_bytes(rows, suffix)
        files["posts" + suffix] = draw(mutated(raw, max_ops=3)) if draw(st.booleans()) else raw
    return files


def _read_posts(files: dict[str, bytes]) -> object:
    from replaybench.replay.posts import read_posts

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "posts"
        root.mkdir()
        for name, data in files.items():
            (root / name).write_bytes(data)
        items = read_posts(root)
        for it in items:  # no item may name an image outside the dataset folder
            assert it.path is None or it.path.resolve().is_relative_to(root.resolve()), it.path
        return items


@given(posts_folder())
@fuzz_settings(100)
@example({"post0.json": b'{"edge_media_to_caption": [1]}'})  # found: AttributeError on a list
@example({"post0.json": b'{"edge_media_to_caption": {"edges": ["x"]}}'})  # found: AttributeError on a str
@example({"post0.json": b'{"images": ["a\\u0000b.jpg"]}'})  # found: ValueError (NUL) from Path.resolve
@example({"post0.json": b"9" * 5000})  # found: int-string limit escaped as a bare ValueError
@example({"posts.csv": b"post_id,image\np,../outside.jpg\n"})  # a table naming an image outside
def test_fuzz_posts(files: dict[str, bytes]) -> None:
    expect_typed(_read_posts, files)


# -------------------------------------------------------------------------------------------- teacher

ANSWER = {"choices": [{"message": {"role": "assistant", "content": '{"score": 7}'}}]}


def _teacher_answer(doc: Any) -> float | None:
    from replaybench.distill.label import _answer_text, parse_score

    text = _answer_text(doc) if isinstance(doc, dict) else None
    score = parse_score(text)
    assert score is None or 0.0 <= score <= 10.0
    return score


@given(st.one_of(json_mutated(ANSWER, max_ops=4), json_values))
@fuzz_settings(150)
@example({"choices": [{"message": {"content": '{"score": ' + "9" * 400 + "}"}}]})  # found: OverflowError
@example({"choices": [{"message": {"content": '{"score": [' + "[" * 100_000 + "}"}}]})  # RecursionError
def test_fuzz_teacher_answer(doc: Any) -> None:
    """The teacher's answer is untrusted text: a score in 0-10 or None, never an exception."""
    expect_typed(_teacher_answer, doc)
