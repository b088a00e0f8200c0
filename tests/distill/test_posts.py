"""The posts reader on real COCO image+caption pairs and on scraped-style post folders and tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from replaybench.errors import DatasetError, InputNotFoundError, UnsafeInputError
from replaybench.replay.posts import read_posts


def _jpg(path: Path) -> None:
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def test_coco_mini_posts_index(realdata):
    folder = realdata / "coco_mini_captions_159"
    items = read_posts(folder)
    assert len(items) == 159
    first_line = json.loads((folder / "posts_index.jsonl").read_text(encoding="utf-8").splitlines()[0])
    first = items[0]
    assert first.post_id == first.item_id == str(first_line["coco_id"])
    assert first.caption == first_line["captions"][0]
    assert first.path == folder / first_line["image"] and first.path.is_file()
    assert first.labels["has_person"] == first_line["has_person"]
    assert all(it.path is not None and it.path.is_file() for it in items)
    assert len({it.item_id for it in items}) == 159


def test_graphql_json_with_carousel_and_single(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps(
            {"shortcode": "A1", "edge_media_to_caption": {"edges": [{"node": {"text": "hello #ootd"}}]}}
        )
    )
    _jpg(tmp_path / "a_2.jpg")
    _jpg(tmp_path / "a_1.jpg")
    _jpg(tmp_path / "a_10.jpg")
    (tmp_path / "b.json").write_text(json.dumps({"caption": "plain one"}))
    _jpg(tmp_path / "b.png")
    items = read_posts(tmp_path)
    assert [(it.item_id, it.post_id, it.path.name) for it in items] == [
        ("A1_1", "A1", "a_1.jpg"),
        ("A1_2", "A1", "a_2.jpg"),
        ("A1_3", "A1", "a_10.jpg"),
        ("b", "b", "b.png"),
    ]
    assert items[0].caption == "hello #ootd" and items[3].caption == "plain one"


def test_listed_images_and_missing_image_kept_as_item(tmp_path):
    (tmp_path / "p.json").write_text(
        json.dumps({"id": 7, "caption": "", "images": ["img/x.jpg", "img/gone.jpg"]})
    )
    (tmp_path / "img").mkdir()
    _jpg(tmp_path / "img" / "x.jpg")
    (tmp_path / "q.json").write_text(json.dumps({"caption": "no image anywhere"}))
    items = read_posts(tmp_path)
    assert [it.item_id for it in items] == ["7_1", "7_2", "q"]
    assert items[1].path == tmp_path / "img" / "gone.jpg" and not items[1].path.exists()
    assert items[2].path is not None and not items[2].path.exists()  # an error row downstream, not a drop
    assert items[0].caption == ""


def test_image_path_out_of_the_dataset_is_refused(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"caption": "x", "image": "../../etc/passwd"}))
    with pytest.raises(UnsafeInputError):
        read_posts(tmp_path)


def test_csv_table_with_carousel_rows(tmp_path):
    _jpg(tmp_path / "1.jpg")
    _jpg(tmp_path / "2.jpg")
    _jpg(tmp_path / "3.jpg")
    (tmp_path / "posts.csv").write_text(
        "post_id,image_path,caption,brand\nP,1.jpg,hi,x\nP,2.jpg,hi,x\nQ,3.jpg,,y\n"
    )
    items = read_posts(tmp_path / "posts.csv")
    assert [(it.item_id, it.post_id) for it in items] == [("P_1", "P"), ("P_2", "P"), ("Q", "Q")]
    assert items[0].labels == {"brand": "x"}
    assert items[2].caption in ("", None)


def test_parquet_table(tmp_path):
    import polars as pl

    _jpg(tmp_path / "1.jpg")
    pl.DataFrame({"post_id": ["z"], "image": ["1.jpg"], "caption": ["cap"]}).write_parquet(
        tmp_path / "t.parquet"
    )
    (item,) = read_posts(tmp_path)
    assert (item.item_id, item.caption, item.path) == ("z", "cap", tmp_path / "1.jpg")


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="no posts found"):
        read_posts(tmp_path)
    with pytest.raises(InputNotFoundError):
        read_posts(tmp_path / "nope")


def test_duplicate_post_ids_rejected(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"shortcode": "same", "caption": "x"}))
        _jpg(tmp_path / f"{name}.jpg")
    with pytest.raises(DatasetError, match="occurs twice"):
        read_posts(tmp_path)
