"""Teacher labelling against a local OpenAI-compatible server: parsing, retries, failure rows, the cache."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from replaybench.distill.label import ask_teacher, import_labels, label_posts, parse_score, read_labels
from replaybench.errors import DatasetError, ExternalServiceError
from tests.distill.synthetic import make_posts


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"score": 7}', 7.0),
        ('```json\n{"score": 3.5}\n```', 3.5),
        ("Score: 8", 8.0),
        ("I would rate this 6/10.", 6.0),
        ("After looking at 25 people, 4 out of 10", 4.0),
        ("seven", 7.0),
        ("The answer is 2", 2.0),
        ("I cannot rate this image.", None),
        ('{"score": 42}', None),
        ("", None),
        (None, None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


class Teacher:
    """A threaded chat-completions server; ``behaviour(caption, n_call)`` -> (status, content)."""

    def __init__(self, behaviour):
        self.calls: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                assert self.path == "/v1/chat/completions"
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                parts = body["messages"][0]["content"]
                caption = parts[0]["text"].split("Caption: ", 1)[1]
                with teacher.lock:
                    teacher.calls[caption] += 1
                    teacher.bodies.append(body)
                    n = teacher.calls[caption]
                status, content = behaviour(caption, n)
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode() if status == 200 else b"overloaded")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def posts(tmp_path) -> Path:
    make_posts(tmp_path / "posts", n=6, size=16)
    return tmp_path / "posts"


def _captions(posts: Path) -> dict[str, str]:
    return {
        p.stem: json.loads(p.read_text())["edge_media_to_caption"]["edges"][0]["node"]["text"]
        for p in posts.glob("*.json")
    }


def test_labels_flaky_server_garbage_and_cache(posts, tmp_path):
    caps = _captions(posts)
    garbage = caps["p001"]

    def behaviour(caption, n):
        if n <= 2:  # every post fails twice before an answer: retries must cover it
            return 503, ""
        if caption == garbage:
            return 200, "I am not able to judge this."
        return 200, f'{{"score": {len(caption) % 11}}}'

    teacher = Teacher(behaviour)
    out = tmp_path / "labels.parquet"
    try:
        r = label_posts(posts, out, endpoint=teacher.url, model="qwen", concurrency=3, backoff=0.001)
        assert (r.posts, r.requested, r.ok, r.failed, r.errors, r.from_cache) == (6, 6, 5, 1, 0, 0)
        df = pl.read_parquet(out)
        row = df.filter(pl.col("post_id") == "p001").to_dicts()[0]
        assert row["status"] == "failed" and row["score"] is None and row["answer"].startswith("I am not")
        ok = df.filter(pl.col("status") == "ok")
        for rec in ok.to_dicts():
            assert rec["score"] == len(caps[rec["post_id"]]) % 11
        body = teacher.bodies[0]
        assert body["model"] == "qwen"
        assert body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        calls_before = sum(teacher.calls.values())
        # A re-run pays for nothing: every answer (the unparseable one too) comes from the cache.
        r2 = label_posts(posts, out, endpoint=teacher.url, model="qwen", backoff=0.001)
        assert (r2.requested, r2.from_cache) == (0, 6)
        assert sum(teacher.calls.values()) == calls_before
        # Another prompt version or model is another key.
        r3 = label_posts(posts, out, endpoint=teacher.url, model="other", backoff=0.001)
        assert r3.requested == 6
    finally:
        teacher.close()
    assert read_labels(out) == {k: float(v) for k, v in zip(ok["post_id"], ok["score"], strict=True)}


def test_transport_errors_are_not_cached_and_resume(posts, tmp_path):
    state = {"down": True}

    def behaviour(caption, n):
        return (500, "") if state["down"] else (200, "Score: 5")

    teacher = Teacher(behaviour)
    out = tmp_path / "labels.csv"
    try:
        with pytest.raises(ExternalServiceError, match="answered none"):
            label_posts(posts, out, endpoint=teacher.url, model="m", retries=1, backoff=0.001)
        assert pl.read_csv(out)["status"].to_list() == ["error"] * 6
        state["down"] = False
        r = label_posts(posts, out, endpoint=teacher.url, model="m", retries=1, backoff=0.001)
        assert (r.requested, r.ok) == (6, 6)
    finally:
        teacher.close()


def test_ask_teacher_backoff_grows():
    sleeps: list[float] = []
    with pytest.raises(ExternalServiceError, match="4 attempts"):
        ask_teacher("http://127.0.0.1:9/v1/chat/completions", {}, retries=3, backoff=1.0, sleep=sleeps.append)
    assert len(sleeps) == 3
    assert sleeps[0] < sleeps[2]  # 1x..., 4x... with jitter in [0.5, 1.5)


def test_import_labels(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"post_id": "a", "score": 3}\n{"post_id": "b", "score": 9.5}\n')
    r = import_labels(src, tmp_path / "labels.parquet")
    assert r.ok == 2
    assert read_labels(tmp_path / "labels.parquet") == {"a": 3.0, "b": 9.5}
    bad = tmp_path / "bad.csv"
    bad.write_text("post_id,score\na,11\n")
    with pytest.raises(DatasetError, match="outside 0-10"):
        import_labels(bad, tmp_path / "x.parquet")


def test_cli_label_import_and_usage_errors(tmp_path, capsys):
    from replaybench.cli import main

    src = tmp_path / "in.csv"
    src.write_text("post_id,score\na,1\n")
    assert (
        main(
            [
                "distill",
                "label",
                str(tmp_path),
                "--import",
                str(src),
                "-o",
                str(tmp_path / "l.jsonl"),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["ok"] == 1
    assert main(["distill", "label", str(tmp_path), "-o", str(tmp_path / "l.jsonl")]) == 2
