"""Teacher labels: score posts with a vision-language model behind an OpenAI-compatible endpoint.

vLLM, Ollama, llama.cpp server and hosted APIs all speak ``POST {endpoint}/chat/completions``. Each post is
sent once per (post id, prompt version, model): answers live in a SQLite cache beside the labels file, so a
re-run resumes where a killed one stopped and never pays twice. An answer that does not parse is recorded
as a ``failed`` row (and cached: the teacher gave its answer, asking again costs the same). Transport
errors (refused, 429, 5xx, timeouts) are retried with exponential backoff and, when retries run out, written
as ``error`` rows that are NOT cached, so the next run asks again.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from replaybench._console import NullProgress, Progress
from replaybench._json import loads_untrusted
from replaybench.errors import (
    CorruptInputError,
    DatasetError,
    ExternalServiceError,
    InputNotFoundError,
    UnsupportedFormatError,
)
from replaybench.replay.items import DatasetItem

# The prompt is versioned: changing its text must change the version, which keys the cache.
PROMPTS: dict[str, str] = {
    "v1": (
        "You are rating social-media posts for an audit of gender targeting. Look at the image(s) and read "
        "the caption. On a scale from 0 to 10, how strongly is this post oriented towards a female "
        "audience or does it depict female-coded content (0 = strongly male-oriented, 5 = neutral, "
        '10 = strongly female-oriented)? Answer with JSON only: {"score": <number 0-10>}.'
    ),
}
DEFAULT_PROMPT_VERSION = "v1"
LABEL_COLUMNS = ("post_id", "score", "status", "model", "prompt_version", "answer", "error")
MAX_IMAGES_PER_POST = 4
MAX_IMAGE_SIDE = 768  # re-encode larger images: the teacher sees ~768 px anyway, the request stays small
# A chat completion with max_tokens=32 is a few KiB; a larger answer is a misbehaving or hostile endpoint,
# and is refused after this many bytes instead of being read into memory.
MAX_RESPONSE_BYTES = 1 << 20

_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_NUMBER = r"[-+]?\d+(?:\.\d+)?"


class LabelResult(BaseModel):
    """What ``label_posts`` / ``import_labels`` did."""

    model_config = ConfigDict(extra="forbid")

    output: str
    posts: int
    from_cache: int = 0
    requested: int = 0
    ok: int = 0
    failed: int = 0  # the teacher answered, the answer did not parse
    errors: int = 0  # transport errors after all retries (not cached: a re-run asks again)
    model: str | None = None
    prompt_version: str | None = None
    cache: str | None = None


@dataclass(frozen=True)
class TeacherAnswer:
    post_id: str
    score: float | None
    status: str  # ok | failed | error
    answer: str | None
    error: str | None


# ------------------------------------------------------------------------------------------ parsing


def parse_score(text: str | None) -> float | None:
    """Read a 0-10 score out of a model's answer, or None when there is none.

    Accepts JSON (``{"score": 7}``, also inside code fences), ``score: 7``, ``7/10``, a bare number
    anywhere in the text, and number words ("seven"). Numbers outside 0-10 are not scores.
    """
    if not text:
        return None
    m = re.search(r"\{[^{}]*\}", text, re.S)
    if m:
        try:
            doc = loads_untrusted(m.group(0))
            if isinstance(doc, dict):
                for key in ("score", "rating", "value"):
                    v = doc.get(key)
                    if isinstance(v, int | float | str) and not isinstance(v, bool):
                        f = _as_score(v)
                        if f is not None:
                            return f
        except ValueError:  # not JSON, a giant integer, nesting past the recursion limit
            pass
    for pattern in (
        rf"(?:score|rating)\W{{0,5}}({_NUMBER})",
        rf"({_NUMBER})\s*(?:/|out of)\s*10\b",
    ):
        m = re.search(pattern, text, re.I)
        if m and (f := _as_score(m.group(1))) is not None:
            return f
    for m in re.finditer(_NUMBER, text):
        if (f := _as_score(m.group(0))) is not None:
            return f
    for m in re.finditer(r"[A-Za-z]+", text):
        if m.group(0).lower() in _WORDS:
            return float(_WORDS[m.group(0).lower()])
    return None


def _as_score(v: object) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float range
        return None
    return f if 0.0 <= f <= 10.0 else None


# ------------------------------------------------------------------------------------------ requests


def image_data_url(path: Path) -> str:
    """The image as a base64 JPEG data URL, EXIF-rotated and capped at MAX_IMAGE_SIDE pixels."""
    from PIL import Image, ImageOps

    with Image.open(path) as src:
        src.draft("RGB", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
        im = ImageOps.exif_transpose(src).convert("RGB")
        im.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def build_request(model: str, prompt: str, caption: str | None, images: Sequence[Path]) -> dict[str, Any]:
    """The chat-completions request body for one post."""
    content: list[dict[str, Any]] = [
        {"type": "text", "text": f"{prompt}\n\nCaption: {caption or '(no caption)'}"}
    ]
    content += [{"type": "image_url", "image_url": {"url": image_data_url(p)}} for p in images]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 32,
    }


class _Retryable(Exception):
    pass


def _post_json(
    url: str, body: dict[str, Any], api_key: str | None, timeout: float, max_bytes: int = MAX_RESPONSE_BYTES
) -> dict[str, Any]:
    data = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            declared = resp.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise _oversize(url, max_bytes, f"declares {int(declared):,} bytes")
            payload = resp.read(max_bytes + 1)  # never more than the cap (+1 to tell that it was over)
            if len(payload) > max_bytes:
                raise _oversize(url, max_bytes, "sent more")
    except urllib.error.HTTPError as e:
        if e.code == 429 or e.code >= 500:
            raise _Retryable(f"HTTP {e.code}") from e
        raise ExternalServiceError(f"teacher endpoint refused the request: HTTP {e.code}") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise _Retryable(f"{type(e).__name__}: {e}") from e
    try:
        doc = loads_untrusted(payload)
    except ValueError as e:  # not JSON, invalid UTF-8, a giant integer, nesting past the recursion limit
        raise _Retryable(f"response is not JSON: {payload[:80]!r}") from e
    if not isinstance(doc, dict):
        raise _Retryable("response is not a JSON object")
    return doc


def _oversize(url: str, cap: int, what: str) -> ExternalServiceError:
    return ExternalServiceError(
        f"teacher endpoint {url} answered with more than the {cap:,}-byte response cap ({what}); refused",
        hint="check --endpoint: a chat completion answer is a few KiB",
    )


def _answer_text(doc: dict[str, Any]) -> str | None:
    try:
        content = doc["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(content, list):  # some servers answer with content parts
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else None


def ask_teacher(
    url: str,
    body: dict[str, Any],
    *,
    api_key: str | None = None,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
) -> str | None:
    """POST one request, retrying transport errors with exponential backoff and jitter.

    Returns the answer text (None when the response has no message). Raises ExternalServiceError when
    every attempt failed, or at once when a response is over ``max_response_bytes`` (not retried: the
    endpoint would answer the same).
    """
    last = ""
    for attempt in range(retries + 1):
        try:
            return _answer_text(_post_json(url, body, api_key, timeout, max_response_bytes))
        except _Retryable as e:
            last = str(e)
            if attempt < retries:
                sleep(backoff * (2**attempt) * (0.5 + random.random()))
    raise ExternalServiceError(f"teacher endpoint failed after {retries + 1} attempts: {last}")


# ------------------------------------------------------------------------------------------ cache


class LabelCache:
    """SQLite cache of teacher answers keyed by (post id, prompt version, model)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (post_id TEXT, prompt_version TEXT, model TEXT, "
            "score REAL, status TEXT, answer TEXT, error TEXT, at REAL, "
            "PRIMARY KEY (post_id, prompt_version, model))"
        )
        self._db.commit()

    def get(self, post_id: str, prompt_version: str, model: str) -> TeacherAnswer | None:
        row = self._db.execute(
            "SELECT score, status, answer, error FROM answers WHERE post_id=? AND prompt_version=? AND model=?",
            (post_id, prompt_version, model),
        ).fetchone()
        return TeacherAnswer(post_id, row[0], row[1], row[2], row[3]) if row else None

    def put(self, a: TeacherAnswer, prompt_version: str, model: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?,?)",
            (a.post_id, prompt_version, model, a.score, a.status, a.answer, a.error, time.time()),
        )
        self._db.commit()  # commit per answer: a kill -9 loses at most the requests in flight

    def close(self) -> None:
        self._db.close()


# ------------------------------------------------------------------------------------------ labelling


def group_posts(items: Sequence[DatasetItem]) -> dict[str, list[DatasetItem]]:
    """Items grouped by post id, in dataset order."""
    posts: dict[str, list[DatasetItem]] = {}
    for it in items:
        posts.setdefault(it.post_id or it.item_id, []).append(it)
    return posts


def label_posts(
    posts_path: Path,
    output: Path,
    *,
    endpoint: str,
    model: str,
    prompt_version: str = DEFAULT_PROMPT_VERSION,
    concurrency: int = 4,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 120.0,
    api_key: str | None = None,
    cache_path: Path | None = None,
    progress: Progress | None = None,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
    allow_outside: bool = False,
) -> LabelResult:
    """Label every post of a posts dataset with the teacher; write LABELS (.parquet/.csv/.jsonl).

    Example: ``label_posts(Path("posts"), Path("labels.parquet"), endpoint="http://localhost:8000/v1",
    model="qwen2.5-vl")``.

    Every image is uploaded to the endpoint: a posts table naming images outside its folder is refused
    (``UnsafeInputError``) unless ``allow_outside``. A response over ``max_response_bytes`` is an error row.
    """
    from replaybench.replay.posts import read_posts

    if prompt_version not in PROMPTS:
        raise UnsupportedFormatError(
            f"unknown prompt version {prompt_version!r}; known: {', '.join(sorted(PROMPTS))}"
        )
    _check_output_suffix(output)
    prompt = PROMPTS[prompt_version]
    posts = group_posts(read_posts(posts_path, allow_outside=allow_outside))
    url = endpoint.rstrip("/")
    if not url.endswith("/chat/completions"):
        url += "/chat/completions"
    output.parent.mkdir(parents=True, exist_ok=True)
    cache = LabelCache(cache_path or output.with_name(output.name + ".cache.sqlite"))
    progress = progress or NullProgress()
    result = LabelResult(
        output=str(output),
        posts=len(posts),
        model=model,
        prompt_version=prompt_version,
        cache=str(cache.path),
    )
    answers: dict[str, TeacherAnswer] = {}
    todo: list[str] = []
    for pid in posts:
        hit = cache.get(pid, prompt_version, model)
        if hit is not None:
            answers[pid] = hit
            result.from_cache += 1
        else:
            todo.append(pid)

    def one(pid: str) -> TeacherAnswer:
        items = posts[pid]
        images = [it.path for it in items if it.path is not None and it.path.is_file()]
        if not images:
            return TeacherAnswer(pid, None, "error", None, "image missing")
        try:
            body = build_request(model, prompt, items[0].caption, images[:MAX_IMAGES_PER_POST])
        except OSError as e:
            return TeacherAnswer(pid, None, "error", None, f"image unreadable: {e}")
        try:
            text = ask_teacher(
                url, body, api_key=api_key, retries=retries, backoff=backoff, timeout=timeout,
                max_response_bytes=max_response_bytes,
            )  # fmt: skip
        except ExternalServiceError as e:
            return TeacherAnswer(pid, None, "error", None, str(e))
        score = parse_score(text)
        if score is None:
            return TeacherAnswer(pid, None, "failed", text, "answer has no 0-10 score")
        return TeacherAnswer(pid, score, "ok", text, None)

    progress.start(len(todo), "teacher labels")
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = [pool.submit(one, pid) for pid in todo]
            for fut in as_completed(futures):
                a = fut.result()
                answers[a.post_id] = a
                result.requested += 1
                if a.status != "error":
                    cache.put(a, prompt_version, model)
                progress.advance()
    finally:
        progress.close()
        cache.close()
    rows = [
        {
            "post_id": pid,
            "score": answers[pid].score,
            "status": answers[pid].status,
            "model": model,
            "prompt_version": prompt_version,
            "answer": answers[pid].answer,
            "error": answers[pid].error,
        }
        for pid in posts
    ]
    result.ok = sum(r["status"] == "ok" for r in rows)
    result.failed = sum(r["status"] == "failed" for r in rows)
    result.errors = sum(r["status"] == "error" for r in rows)
    write_labels(rows, output)
    transport = sum(
        1 for a in answers.values() if a.status == "error" and (a.error or "").startswith("teacher")
    )
    if result.requested and transport == result.requested:
        raise ExternalServiceError(
            f"the teacher at {url} answered none of {result.requested} requests (labels file written with "
            f"error rows: {output})",
            hint="check --endpoint and that the server is up; a re-run asks only for the missing posts",
        )
    return result


# ------------------------------------------------------------------------------------------ files


def _check_output_suffix(path: Path) -> None:
    if path.suffix.lower() not in (".parquet", ".csv", ".jsonl"):
        raise UnsupportedFormatError(f"labels file must end in .parquet, .csv or .jsonl: {path}")


def write_labels(rows: list[dict[str, Any]], output: Path) -> None:
    """Write label rows (LABEL_COLUMNS) to .parquet/.csv/.jsonl, atomically."""
    import polars as pl

    _check_output_suffix(output)
    schema = {
        "post_id": pl.String,
        "score": pl.Float64,
        "status": pl.String,
        "model": pl.String,
        "prompt_version": pl.String,
        "answer": pl.String,
        "error": pl.String,
    }
    df = pl.DataFrame(rows, schema=schema)
    tmp = output.with_name(output.name + ".tmp")
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        df.write_parquet(tmp)
    elif suffix == ".csv":
        df.write_csv(tmp)
    else:
        df.write_ndjson(tmp)
    tmp.replace(output)


def read_label_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV/JSONL/Parquet table."""
    import polars as pl

    if not path.is_file():
        raise InputNotFoundError(f"labels file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pl.read_parquet(path)
        elif suffix == ".csv":
            df = pl.read_csv(path, infer_schema_length=0)
        elif suffix in (".jsonl", ".ndjson"):
            df = pl.read_ndjson(path)
        else:
            raise UnsupportedFormatError(f"labels must be .parquet, .csv or .jsonl: {path}")
    except UnsupportedFormatError:
        raise
    except Exception as e:
        raise CorruptInputError(f"{path} is not a readable labels table: {e}") from e
    return df.to_dicts()


def read_labels(path: Path) -> dict[str, float]:
    """post id -> teacher score, for rows whose status is ok (or that carry no status)."""
    rows = read_label_table(path)
    if not rows:
        raise DatasetError(f"labels file {path} is empty")
    id_key = next((k for k in ("post_id", "id", "shortcode") if k in rows[0]), None)
    score_key = next((k for k in ("score", "label", "teacher_score", "bias_score") if k in rows[0]), None)
    if id_key is None or score_key is None:
        raise DatasetError(f"labels file {path} needs a post_id and a score column; has {sorted(rows[0])}")
    out: dict[str, float] = {}
    for n, r in enumerate(rows):
        if r.get("status") not in (None, "ok") or r.get(score_key) in (None, ""):
            continue
        try:
            s = float(r[score_key])
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{path} row {n + 1}: score {r[score_key]!r} is not a number") from e
        if not 0.0 <= s <= 10.0:
            raise DatasetError(f"{path} row {n + 1}: score {s} is outside 0-10")
        out[str(r[id_key])] = s
    if not out:
        raise DatasetError(f"labels file {path} has no usable (status ok) scores")
    return out


def import_labels(source: Path, output: Path, *, model: str | None = None) -> LabelResult:
    """Import labels made elsewhere (CSV/JSONL/Parquet with post_id + score) into the labels format."""
    _check_output_suffix(output)
    labels = read_labels(source)
    rows = [
        {
            "post_id": pid,
            "score": s,
            "status": "ok",
            "model": model or "imported",
            "prompt_version": None,
            "answer": None,
            "error": None,
        }
        for pid, s in labels.items()
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    write_labels(rows, output)
    return LabelResult(output=str(output), posts=len(rows), ok=len(rows), model=model or "imported")
