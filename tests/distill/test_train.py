"""Training converges on a learnable synthetic task; the reported figures come from a held-out test split;
report, curve, embedding cache and split files are honoured; fine-tuning leaves frozen blocks untouched."""

from __future__ import annotations

import json
import random
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest

from replaybench.distill.metrics import agreement, bucket_of
from replaybench.distill.train import split_posts, train_student
from replaybench.errors import DatasetError
from tests.distill.synthetic import make_posts, write_labels_csv


def _labels(trained: Path) -> dict[str, float]:
    lines = (trained / "labels.csv").read_text().splitlines()[1:]
    return {k: float(v) for k, v in (line.split(",") for line in lines)}


def _reference_scores(bundle: Path, posts: Path, ids: list[str]) -> np.ndarray:
    """The exported fp32 model run by onnxruntime directly, on pixels decoded by Pillow and captions
    tokenized by the tokenizers library: no replaybench code between the files and the engine."""
    import onnxruntime as ort
    from PIL import Image
    from tokenizers import Tokenizer

    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    out = []
    for pid in ids:
        with Image.open(posts / f"{pid}.jpg") as im:  # 64x64: no reduced-scale decode applies
            pixels = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
        doc = json.loads((posts / f"{pid}.json").read_text())
        ids_ = tok.encode(doc["edge_media_to_caption"]["edges"][0]["node"]["text"]).ids
        feeds = {
            "image": pixels.transpose(2, 0, 1)[None].copy(),
            "input_ids": np.array([ids_], np.int64),
            "attention_mask": np.ones((1, len(ids_)), np.int64),
        }
        out.append(float(sess.run(None, feeds)[0][0]))
    return np.array(out)


def test_trained_student_reports_held_out_test_figures(trained):
    report = json.loads((trained / "student" / "training_report.json").read_text())
    split = json.loads((trained / "student" / "split.json").read_text())
    assert (report["train_posts"], report["val_posts"], report["test_posts"]) == (42, 9, 9)
    assert [len(split[k]) for k in ("train", "val", "test")] == [42, 9, 9]
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == set(_labels(trained))
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    assert not set(split["train"]) & set(split["val"])
    # The headline figures are the test split's, and they are what the exported model computes there.
    labels = _labels(trained)
    teacher = np.array([labels[i] for i in split["test"]])
    student = _reference_scores(trained / "bundle", trained / "posts", split["test"])
    assert report["test"]["n"] == 9
    assert report["test"]["mae"] == pytest.approx(float(np.abs(student - teacher).mean()), abs=2e-3)
    train_mean = np.mean([labels[i] for i in split["train"]])
    assert report["baseline_test_mae"] == pytest.approx(float(np.abs(teacher - train_mean).mean()), abs=1e-4)
    assert report["test"]["mae"] < 0.5 * report["baseline_test_mae"]
    assert report["test"]["pearson"] > 0.8
    assert sum(map(sum, report["test"]["confusion"])) == 9
    # Validation (which chose the epoch) is still reported, as its own block.
    assert report["validation"]["n"] == 9 and report["baseline_val_mae"] > 0
    assert report["warnings"] == ["the test figures rest on only 9 posts: treat them as rough"]
    assert (trained / "student" / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    for f in ("student.json", "head.pt", "image_encoder.pt", "calibration.npz", "text_encoder/config.json"):
        assert (trained / "student" / f).is_file(), f


def test_embedding_cache_given_split_and_no_test_caption_in_the_vocabulary(tmp_path):
    scores = make_posts(tmp_path / "posts", n=12, size=16)
    labels = write_labels_csv(scores, tmp_path / "labels.csv")
    ids = sorted(scores)
    # A word only a test post uses: the random-init tokenizer is learned from training captions only.
    doc = json.loads((tmp_path / "posts" / f"{ids[-1]}.json").read_text())
    doc["edge_media_to_caption"]["edges"][0]["node"]["text"] = "zanzibarquokka " * 3
    (tmp_path / "posts" / f"{ids[-1]}.json").write_text(json.dumps(doc))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ids[:8], "val": ids[8:10], "test": ids[10:]}))
    kw = dict(random_init=True, epochs=3, patience=3, split=split, cache_dir=tmp_path / "cache")
    r1 = train_student(tmp_path / "posts", labels, tmp_path / "s1", **kw)
    assert (r1.embeddings_computed, r1.embeddings_cached) == (12, 0)
    assert (r1.train_posts, r1.val_posts, r1.test_posts) == (8, 2, 2) and r1.split == str(split)
    assert r1.test["n"] == 2 and r1.validation["n"] == 2 and r1.train["n"] == 8
    vocab = json.loads((tmp_path / "s1" / "text_encoder" / "tokenizer.json").read_text())["model"]["vocab"]
    train_words = {
        w
        for i in ids[:8]
        for w in json.loads((tmp_path / "posts" / f"{i}.json").read_text())["edge_media_to_caption"]["edges"][
            0
        ]["node"]["text"].split()
    }
    assert train_words and train_words <= set(vocab)  # the training captions' words are learned ...
    assert "zanzibarquokka" not in vocab  # ... the test post's word is not
    r2 = train_student(tmp_path / "posts", labels, tmp_path / "s2", **kw)
    assert (r2.embeddings_computed, r2.embeddings_cached) == (0, 12)
    assert r2.test["mae"] == pytest.approx(r1.test["mae"], abs=1e-5)  # seeded: same run


def test_split_file_must_hold_out_test_posts_and_never_share_one(tmp_path):
    ids = [f"p{i:03d}" for i in range(10)]
    no_test = tmp_path / "no_test.json"
    no_test.write_text(json.dumps({"train": ids[:8], "val": ids[8:]}))
    with pytest.raises(DatasetError, match=r"leaves 8 train, 2 validation and 0 test posts") as e:
        split_posts(ids, seed=0, split_file=no_test)
    assert '"test"' in (e.value.hint or "")
    shared = tmp_path / "shared.csv"
    rows = [f"{i},{'test' if n >= 8 else 'train'}" for n, i in enumerate(ids)] + [f"{ids[0]},val"]
    shared.write_text("post_id,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"puts 1 post\(s\) in both train and val \(e.g. 'p000'\)"):
        split_posts(ids, seed=0, split_file=shared)
    good = tmp_path / "good.csv"
    kinds = ["train"] * 7 + ["validation"] + ["test"] * 2  # "validation" spelled out is accepted too
    good.write_text("post_id,split\n" + "\n".join(f"{i},{k}" for i, k in zip(ids, kinds, strict=True)) + "\n")
    s = split_posts(ids, seed=0, split_file=good)
    assert (s.train, s.val, s.test) == (ids[:7], [ids[7]], ids[8:])


def test_seeded_split_is_reproducible_disjoint_and_order_independent():
    ids = [f"p{i}" for i in range(50)]
    a = split_posts(ids, seed=3, split_file=None)
    assert (len(a.train), len(a.val), len(a.test)) == (34, 8, 8)
    assert a == split_posts(ids, seed=3, split_file=None)
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    b = split_posts(shuffled, seed=3, split_file=None)
    assert (set(b.train), set(b.val), set(b.test)) == (set(a.train), set(a.val), set(a.test))
    c = split_posts(ids, seed=4, split_file=None)
    assert set(c.test) != set(a.test)
    assert set(a.train) | set(a.val) | set(a.test) == set(ids)
    assert not set(a.train) & set(a.val) and not set(a.train) & set(a.test) and not set(a.val) & set(a.test)


def test_small_datasets_split_or_say_why_not(tmp_path):
    s = split_posts(["a", "b", "c", "d", "e"], seed=0, split_file=None)
    assert (len(s.train), len(s.val), len(s.test)) == (3, 1, 1)
    with pytest.raises(DatasetError, match="4 usable posts are too few .* need at least 3 to train on"):
        split_posts(["a", "b", "c", "d"], seed=0, split_file=None)
    make_posts(tmp_path / "posts", n=4, size=16)
    labels = write_labels_csv({f"p{i:03d}": float(i) for i in range(4)}, tmp_path / "labels.csv")
    with pytest.raises(DatasetError, match=r"only 4 posts .* need at least 5 \(3 to train on"):
        train_student(tmp_path / "posts", labels, tmp_path / "s", random_init=True)


def test_finetune_keeps_frozen_blocks_and_their_batchnorm_statistics_fixed(tmp_path):
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    from replaybench.distill.student import build_wordpiece_tokenizer, modules

    scores = make_posts(tmp_path / "posts", n=8, size=16)
    labels = write_labels_csv(scores, tmp_path / "labels.csv")
    # Known starting weights: a ResNet18 state dict with non-trivial BatchNorm statistics, and a tiny
    # DistilBERT folder, so that every tensor after training can be compared with where it started.
    torch.manual_seed(0)
    resnet = modules()["ResNet18"]()
    for m in resnet.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    before_img = {k: v.clone() for k, v in resnet.state_dict().items()}
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    text_dir = tmp_path / "text"
    tok = build_wordpiece_tokenizer(["red dress gym car dog beach"] * 4, text_dir, vocab_size=200)
    text = DistilBertModel(
        DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    )
    text.save_pretrained(text_dir)
    before_txt = {k: v.clone() for k, v in text.state_dict().items()}

    r = train_student(tmp_path / "posts", labels, tmp_path / "s", image_weights=tmp_path / "resnet18.pth",
                      text_encoder=str(text_dir), epochs=2, patience=2, finetune_last_blocks=1,
                      batch_size=4)  # fmt: skip
    assert r.finetune_last_blocks == 1 and r.epochs_run == 2 and r.embedding_cache is None
    assert r.test["n"] == 1 and r.val_posts == 1 and r.train_posts == 6

    after_img = torch.load(tmp_path / "s" / "image_encoder.pt", weights_only=True)
    assert set(after_img) == set(before_img)
    frozen = [k for k in before_img if not k.startswith("layer4.")]
    moved = [k for k in frozen if not torch.equal(after_img[k], before_img[k])]
    assert moved == []  # weights, running_mean/var and num_batches_tracked of the frozen stages
    stats = [k for k in before_img if k.startswith("layer4.") and k.endswith("running_mean")]
    assert stats and all(not torch.equal(after_img[k], before_img[k]) for k in stats)
    assert all(
        int(after_img[k]) > int(before_img[k])
        for k in before_img
        if k.startswith("layer4.") and "tracked" in k
    )
    assert not torch.equal(after_img["layer4.0.conv1.weight"], before_img["layer4.0.conv1.weight"])

    after_txt = DistilBertModel.from_pretrained(tmp_path / "s" / "text_encoder").state_dict()
    last = "transformer.layer.1."
    assert [
        k for k in before_txt if not k.startswith(last) and not torch.equal(after_txt[k], before_txt[k])
    ] == []
    assert any(not torch.equal(after_txt[k], before_txt[k]) for k in before_txt if k.startswith(last))


def _bucket(score: float) -> int:
    """Independent bucket rule: round half up (Decimal), then 0-3, 4-6, 7-10."""
    r = int(Decimal(str(score)).quantize(Decimal("1"), rounding=ROUND_HALF_UP))
    return 0 if r <= 3 else 1 if r <= 6 else 2


def test_agreement_metrics_by_hand():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import confusion_matrix

    teacher, student = [0, 5, 10, 3.4, 6.5], [1.5, 5, 8.9, 3.6, 6.49]
    m = agreement(teacher, student)
    assert m["n"] == 5
    assert m["mae"] == pytest.approx((1.5 + 0 + 1.1 + 0.2 + 0.01) / 5)
    assert m["within_1"] == 0.6 and m["within_2"] == 1.0
    assert m["pearson"] == pytest.approx(pearsonr(teacher, student).statistic)
    assert m["spearman"] == pytest.approx(spearmanr(teacher, student).statistic)
    expected = confusion_matrix(
        [_bucket(x) for x in teacher], [_bucket(x) for x in student], labels=[0, 1, 2]
    )
    assert m["confusion"] == expected.tolist()
    # by hand: 3.6 rounds to 4 (0-3 teacher, 4-6 student) and 6.5 rounds up to 7 while 6.49 stays 6
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 1, 1]]
    assert [bucket_of(x) for x in (3.49, 3.5, 6.49, 6.5, 10)] == ["0-3", "4-6", "4-6", "7-10", "7-10"]


def test_cli_train_flag_checks(tmp_path):
    from replaybench.cli import main

    args = ["distill", "train", str(tmp_path), str(tmp_path / "l.csv"), "-o", str(tmp_path / "s")]
    assert main([*args, "--image-encoder", "vit"]) == 2
    assert main([*args, "--text-arch", "gpt"]) == 2
    assert main([*args, "--random-init"]) == 3  # the labels file does not exist


def test_cli_train_reports_test_figures_first(tmp_path, capsys):
    from replaybench.cli import main

    scores = make_posts(tmp_path / "posts", n=10, size=16)
    labels = write_labels_csv(scores, tmp_path / "labels.csv")
    argv = ["distill", "train", str(tmp_path / "posts"), str(labels), "-o", str(tmp_path / "s"),
            "--random-init", "--epochs", "2", "--patience", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "s" / "training_report.json").read_text())
    rows = [line for line in out.splitlines() if "MAE" in line]
    assert len(rows) == 2
    assert (
        "test MAE" in rows[0] and f"{report['test']['mae']:.3f}" in rows[0] and "2 held-out posts" in rows[0]
    )
    assert "validation MAE (early stopping, optimistic)" in rows[1]
    assert f"{report['validation']['mae']:.3f}" in rows[1]
    assert "6 train, 2 validation, 2 test" in out
