"""Training converges on a learnable synthetic task; report, curve, embedding cache and split are honoured."""

from __future__ import annotations

import json

import pytest

from replaybench.distill.metrics import agreement, bucket_of
from replaybench.distill.train import split_posts, train_student
from replaybench.errors import DatasetError
from tests.distill.synthetic import make_posts, write_labels_csv


def test_trained_student_beats_the_mean(trained):
    report = json.loads((trained / "student" / "training_report.json").read_text())
    assert report["validation"]["mae"] < 0.5 * report["baseline_val_mae"]
    assert report["validation"]["within_2"] >= 0.9
    assert report["validation"]["pearson"] > 0.8
    assert report["train_posts"] == 48 and report["val_posts"] == 12
    assert sum(map(sum, report["validation"]["confusion"])) == 12
    assert (trained / "student" / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    for f in ("student.json", "head.pt", "image_encoder.pt", "calibration.npz", "text_encoder/config.json"):
        assert (trained / "student" / f).is_file(), f


def test_embedding_cache_and_given_split(tmp_path):
    scores = make_posts(tmp_path / "posts", n=12, size=16)
    labels = write_labels_csv(scores, tmp_path / "labels.csv")
    ids = sorted(scores)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ids[:9], "val": ids[9:]}))
    kw = dict(random_init=True, epochs=3, patience=3, split=split, cache_dir=tmp_path / "cache")
    r1 = train_student(tmp_path / "posts", labels, tmp_path / "s1", **kw)
    assert (r1.embeddings_computed, r1.embeddings_cached) == (12, 0)
    assert (r1.train_posts, r1.val_posts) == (9, 3)
    r2 = train_student(tmp_path / "posts", labels, tmp_path / "s2", **kw)
    assert (r2.embeddings_computed, r2.embeddings_cached) == (0, 12)
    assert r2.validation["mae"] == pytest.approx(r1.validation["mae"], abs=1e-5)  # seeded: same run


def test_finetune_last_block_runs_end_to_end(tmp_path):
    scores = make_posts(tmp_path / "posts", n=6, size=16)
    labels = write_labels_csv(scores, tmp_path / "labels.csv")
    r = train_student(tmp_path / "posts", labels, tmp_path / "s", random_init=True, epochs=1, patience=1,
                      finetune_last_blocks=1, batch_size=8)  # fmt: skip
    assert r.finetune_last_blocks == 1 and r.epochs_run == 1 and r.embedding_cache is None
    assert (tmp_path / "s" / "head.pt").is_file()


def test_unmatched_labels_are_a_dataset_error(tmp_path):
    make_posts(tmp_path / "posts", n=6, size=16)
    labels = write_labels_csv({"other1": 1.0, "other2": 2.0}, tmp_path / "labels.csv")
    with pytest.raises(DatasetError, match="have a teacher label"):
        train_student(tmp_path / "posts", labels, tmp_path / "s", random_init=True)


def test_seeded_split_is_reproducible_and_80_20():
    ids = [f"p{i}" for i in range(50)]
    a = split_posts(ids, seed=3, split_file=None)
    assert a == split_posts(ids, seed=3, split_file=None)
    assert a != split_posts(ids, seed=4, split_file=None)
    assert (len(a[0]), len(a[1])) == (40, 10) and not set(a[0]) & set(a[1])


def test_agreement_metrics_by_hand():
    m = agreement([0, 5, 10, 3.4], [1.5, 5, 8.9, 3.6])
    assert m["mae"] == pytest.approx((1.5 + 0 + 1.1 + 0.2) / 4)
    assert m["within_1"] == 0.5 and m["within_2"] == 1.0
    assert m["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]] or m["confusion"][0][1] == 1
    assert [bucket_of(x) for x in (3.49, 3.5, 6.49, 6.5, 10)] == ["0-3", "4-6", "4-6", "7-10", "7-10"]
