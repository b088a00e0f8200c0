"""A posts dataset may only name images inside its folder unless the user says ``--allow-outside``.

``distill label`` uploads every image a posts table names to the teacher endpoint: a table (CSV,
Parquet, JSON Lines) or a post JSON naming ``/home/me/private.jpg``, ``../../x.jpg`` or a symlink that
leads out of the dataset folder is refused up front, naming the offending rows, before any request.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from replaybench.cli import main
from replaybench.errors import UnsafeInputError
from replaybench.replay.posts import read_posts


@pytest.fixture()
def layout(tmp_path: Path) -> dict[str, Path]:
    """posts/ with one image inside, and a private/ folder beside it with an image and a symlink to it."""
    posts, private = tmp_path / "posts", tmp_path / "private"
    posts.mkdir()
    private.mkdir()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(posts / "in.jpg")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(private / "secret.jpg")
    (posts / "link.jpg").symlink_to(private / "secret.jpg")
    return {"posts": posts, "private": private}


def _rows(layout: dict[str, Path]) -> list[dict[str, str]]:
    return [
        {"post_id": "ok", "image": "in.jpg", "caption": "inside"},
        {"post_id": "dotdot", "image": "../private/secret.jpg", "caption": "climbs out"},
        {"post_id": "absolute", "image": str(layout["private"] / "secret.jpg"), "caption": "absolute"},
        {"post_id": "symlink", "image": "link.jpg", "caption": "a link that leads out"},
    ]


def _write_table(folder: Path, rows: list[dict[str, str]], suffix: str) -> Path:
    path = folder / f"posts{suffix}"
    if suffix == ".csv":
        pl.DataFrame(rows).write_csv(path)
    elif suffix == ".parquet":
        pl.DataFrame(rows).write_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_table_naming_images_outside_is_refused(layout: dict[str, Path], suffix: str) -> None:
    table = _write_table(layout["posts"], _rows(layout), suffix)
    with pytest.raises(UnsafeInputError) as e:
        read_posts(table)
    msg = e.value.message
    assert "row 2 (post dotdot): ../private/secret.jpg" in msg
    assert f"row 3 (post absolute): {layout['private'] / 'secret.jpg'}" in msg
    assert "row 4 (post symlink): link.jpg" in msg
    assert "row 1" not in msg and "--allow-outside" in (e.value.hint or "")
    with pytest.raises(UnsafeInputError):  # the folder holding the table is read the same way
        read_posts(layout["posts"])
    items = read_posts(table, allow_outside=True)
    assert [it.post_id for it in items] == ["ok", "dotdot", "absolute", "symlink"]
    assert all(it.path is not None and it.path.is_file() for it in items)


def test_table_inside_is_read(layout: dict[str, Path]) -> None:
    (layout["posts"] / "link.jpg").unlink()
    table = _write_table(layout["posts"], _rows(layout)[:1], ".csv")
    assert [(it.post_id, it.path) for it in read_posts(table)] == [("ok", layout["posts"] / "in.jpg")]


def test_post_json_with_a_symlinked_image_beside_it_is_refused(layout: dict[str, Path]) -> None:
    (layout["posts"] / "link.json").write_text(json.dumps({"shortcode": "p", "caption": "c"}))
    with pytest.raises(UnsafeInputError, match="link.jpg"):
        read_posts(layout["posts"])
    (item,) = [it for it in read_posts(layout["posts"], allow_outside=True) if it.post_id == "p"]
    assert item.path == layout["posts"] / "link.jpg"


def test_distill_label_refuses_before_any_upload(layout: dict[str, Path], tmp_path: Path, capsys) -> None:
    """Exit code 6 and nothing sent: the endpoint is a closed port, so a request would fail differently."""
    table = _write_table(layout["posts"], _rows(layout), ".csv")
    out = tmp_path / "labels.csv"
    argv = [
        "distill",
        "label",
        str(table),
        "--endpoint",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "-o",
        str(out),
    ]
    assert main(argv) == UnsafeInputError.exit_code
    assert "outside the dataset folder" in capsys.readouterr().err
    assert not out.exists()


def test_replay_reads_posts_with_allow_outside(layout: dict[str, Path]) -> None:
    from replaybench.replay.datasets import ReadOptions, read_dataset

    table = _write_table(layout["posts"], _rows(layout), ".csv")
    with pytest.raises(UnsafeInputError):
        read_dataset(table, "posts")
    _, items = read_dataset(table, "posts", ReadOptions(allow_outside=True))
    assert len(items) == 4


def test_distill_label_allow_outside_reaches_the_endpoint(layout: dict[str, Path], tmp_path: Path) -> None:
    """With --allow-outside the table is read and requests are made: the closed port answers none (13)."""
    from replaybench.errors import ExternalServiceError

    table = _write_table(layout["posts"], _rows(layout), ".csv")
    out = tmp_path / "labels.csv"
    argv = ["distill", "label", str(table), "--allow-outside", "--endpoint", "http://127.0.0.1:9/v1",
            "--model", "m", "--retries", "0", "-o", str(out)]  # fmt: skip
    assert main(argv) == ExternalServiceError.exit_code
    assert out.exists()  # error rows written for the four posts
