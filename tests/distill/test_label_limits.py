"""The teacher endpoint is not trusted with our memory: responses are read up to a byte cap.

A local ``http.server`` answers with a valid chat completion padded to 8 MiB, with and without a
Content-Length header (the second is only caught by reading at most cap + 1 bytes).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from replaybench.distill.label import ask_teacher, label_posts
from replaybench.errors import ExternalServiceError

BODY_SIZE = 8 << 20
CAP = 1 << 20


def _huge_answer() -> bytes:
    doc = {"choices": [{"message": {"content": '{"score": 7}'}}], "padding": "x" * BODY_SIZE}
    return json.dumps(doc).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # no Content-Length needed: the body ends when the connection closes
    payload = _huge_answer()
    sent: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path.startswith("/declared"):
            self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        n = 0
        try:
            for i in range(0, len(self.payload), 1 << 16):
                self.wfile.write(self.payload[i : i + (1 << 16)])
                n += 1 << 16
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: what we want
            pass
        type(self).sent.append(n)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("route", ["/streamed/chat/completions", "/declared/chat/completions"])
def test_oversize_teacher_response_is_refused(server: str, route: str) -> None:
    with pytest.raises(ExternalServiceError) as e:
        ask_teacher(server + route, {"model": "m"}, retries=3, backoff=0, max_response_bytes=CAP)
    assert "1,048,576-byte response cap" in e.value.message
    # Under a cap it fits, the same answer is read: the cap, not the content, refused it.
    assert ask_teacher(server + route, {"model": "m"}, retries=0, max_response_bytes=2 * BODY_SIZE) == (
        '{"score": 7}'
    )


def test_label_posts_records_the_oversize_answer_as_an_error(server: str, tmp_path: Path) -> None:
    posts = tmp_path / "posts"
    posts.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(posts / "p1.jpg")
    (posts / "p1.json").write_text(json.dumps({"shortcode": "p1", "caption": "hello"}))
    with pytest.raises(ExternalServiceError, match="answered none"):
        label_posts(
            posts, tmp_path / "labels.csv", endpoint=server + "/streamed", model="m", retries=0,
            max_response_bytes=CAP,
        )  # fmt: skip
    from replaybench.distill.label import read_label_table

    (row,) = read_label_table(tmp_path / "labels.csv")
    assert row["status"] == "error" and "response cap" in row["error"]
