"""Export (ONNX fp32 + int8, parity vs torch, bundle.json) and bulk scoring through replay (the student is
replayed like any bundle: errors, resume after kill -9, scores equal to the bundle's graphs run directly)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from replaybench.bundle import load_bundle
from replaybench.errors import UsageError
from replaybench.replay.runner import ReplayOptions, replay
from replaybench.replay.text_models import TOKENS_PER_ROW, TextBatcher

ROOT = Path(__file__).resolve().parents[2]


def test_bundle_document_and_files(trained):
    loaded = load_bundle(trained / "bundle")
    b = loaded.bundle
    assert b.parity is not None and b.parity.passed and b.parity.outputs[0].max_abs_diff < 1e-3
    assert b.preprocess is not None and b.preprocess.dtype == "uint8" and b.preprocess.layout == "NCHW"
    assert b.text is not None and b.text.max_length == 128
    assert {p.role: (p.file, p.file_int8) for p in b.parts} == {
        "image_encoder": ("image.onnx", "image.int8.onnx"),
        "text_head": ("text_head.onnx", "text_head.int8.onnx"),
    }
    (variant,) = b.variants
    assert variant.name == "int8" and np.isfinite(variant.max_abs_diff)
    assert variant.mean_abs_diff < 1.0  # int8 stays close to fp32 on held-out posts
    assert variant.inputs_tried == 18  # the 9 test and 9 validation posts
    assert variant.notes[0].endswith("on 18 posts not used for calibration: held-out posts of the student's "
                                     "training (9 test, 9 validation); calibrated on training posts")  # fmt: skip
    assert variant.notes[1] == "calibrated on 32 other posts"
    assert (trained / "bundle" / "tokenizer" / "tokenizer.json").is_file()


def _pair_scores(bundle: Path, suffix: str, images: np.ndarray, captions: list[str]) -> np.ndarray:
    """image{suffix}.onnx -> text_head{suffix}.onnx run by onnxruntime directly, the captions as one batch
    padded with [PAD] by the tokenizers library (dynamic int8 ranges are per batch, as export ran them)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    tok.enable_truncation(128)
    enc = tok.encode_batch(captions)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    providers = ["CPUExecutionProvider"]
    emb = ort.InferenceSession(str(bundle / f"image{suffix}.onnx"), providers=providers).run(
        None, {"image": images}
    )
    text = ort.InferenceSession(str(bundle / f"text_head{suffix}.onnx"), providers=providers)
    return text.run(None, {"input_ids": ids, "attention_mask": mask, "image_embedding": emb[0]})[0]


def test_int8_error_is_measured_on_posts_not_used_for_calibration(trained):
    from PIL import Image

    split = json.loads((trained / "student" / "split.json").read_text())
    with np.load(trained / "student" / "calibration.npz", allow_pickle=False) as z:
        calibrated = [str(i) for i in z["post_ids"]]
        held_out = [str(i) for i in z["eval_post_ids"]]
        images = z["eval_images"]
    assert len(calibrated) == 32 and set(calibrated) <= set(split["train"])
    assert held_out == split["test"] + split["val"]  # test posts first
    assert not set(calibrated) & set(held_out)
    # The stored pixels are those posts' images (Pillow, independently: 64x64 JPEGs, bilinear to 224).
    for pid, arr in zip(held_out[:3], images[:3], strict=True):
        with Image.open(trained / "posts" / f"{pid}.jpg") as im:
            ref = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
        assert np.abs(arr.transpose(1, 2, 0).astype(int) - ref).max() <= 1, pid
    captions = [
        json.loads((trained / "posts" / f"{pid}.json").read_text())["edge_media_to_caption"]["edges"][0][
            "node"
        ]["text"]
        for pid in held_out
    ]
    diff = np.abs(
        _pair_scores(trained / "bundle", ".int8", images, captions)
        - _pair_scores(trained / "bundle", "", images, captions)
    )
    variant = json.loads((trained / "bundle" / "bundle.json").read_text())["variants"][0]
    assert variant["mean_abs_diff"] == pytest.approx(float(diff.mean()), abs=1e-5)
    assert variant["max_abs_diff"] == pytest.approx(float(diff.max()), abs=1e-5)


def test_export_calibration_posts_are_split_in_two(trained, tmp_path):
    from replaybench.distill.export import export_student
    from replaybench.errors import DatasetError, InputNotFoundError

    r = export_student(trained / "student", tmp_path / "b", calibration_posts=trained / "posts")
    ids = sorted(p.stem for p in (trained / "posts").glob("*.json"))
    assert r.calibration_posts == ids[:30] and r.int8_eval_posts == ids[30:]
    assert r.int8_eval_source == f"posts of {trained / 'posts'} not used for calibration"
    variant = json.loads((tmp_path / "b" / "bundle.json").read_text())["variants"][0]
    assert variant["inputs_tried"] == 30 and variant["notes"][1] == "calibrated on 30 other posts"
    # One readable post cannot both calibrate int8 and measure it.
    one = tmp_path / "one"
    one.mkdir()
    for f in ("p000.jpg", "p000.json"):
        shutil.copy(trained / "posts" / f, one / f)
    with pytest.raises(
        DatasetError, match="no posts left to measure int8 on: all 1 readable posts calibrate it"
    ):
        export_student(trained / "student", tmp_path / "b1", calibration_posts=one)
    # A student folder from before held-out samples were kept: say so rather than measure on calibration.
    old = tmp_path / "old-student"
    shutil.copytree(trained / "student", old)
    with np.load(old / "calibration.npz") as z:
        np.savez_compressed(old / "calibration.npz", images=z["images"], captions=z["captions"])
    with pytest.raises(InputNotFoundError, match="predates held-out evaluation posts"):
        export_student(old, tmp_path / "b2")


def test_onnx_matches_torch_and_int8_is_quantised(trained):
    import onnx
    import onnxruntime as ort
    import torch

    from replaybench.distill.student import load_student

    student, tok, _ = load_student(trained / "student")
    imgs = np.random.default_rng(0).integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
    enc = tok(["red dress", "", "gym car dog " * 20], padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    with torch.no_grad():
        expected = student(torch.from_numpy(imgs), torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    sess = ort.InferenceSession(str(trained / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": imgs, "input_ids": ids, "attention_mask": mask})[0]
    np.testing.assert_allclose(got, expected, atol=1e-3)
    ops = {n.op_type for n in onnx.load(str(trained / "bundle" / "image.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # static QDQ
    ops = {n.op_type for n in onnx.load(str(trained / "bundle" / "text_head.int8.onnx")).graph.node}
    assert "MatMulInteger" in ops  # dynamic int8


def test_text_batches_sorted_and_dynamically_padded(trained):
    tb = TextBatcher(trained / "bundle" / "tokenizer" / "tokenizer.json", max_length=128, pad_id=0)
    ids = tb.encode(["dog " * 300, "", "car beach", "sunset"])
    assert [len(x) for x in ids][0] == 128 and len(ids[1]) == 2
    batches = list(tb.batches(ids, batch_size=2))
    # Token-budget batches (2 x TOKENS_PER_ROW padded tokens): the three short captions share one batch
    # padded to the longest of them; the 128-token caption goes alone instead of padding a short one.
    short = max(len(x) for x in ids[1:])
    assert [b[1].shape for b in batches] == [(3, short), (1, 128)]
    assert [int(p) for p in batches[1][0]] == [0]
    assert sorted(int(p) for b in batches for p in b[0]) == [0, 1, 2, 3]
    for pos, input_ids, mask in batches:
        assert mask.sum(1).tolist() == [len(ids[int(p)]) for p in pos]
        assert input_ids.size <= 2 * TOKENS_PER_ROW or len(pos) == 1
        for r, p in enumerate(pos):
            assert input_ids[r, : len(ids[int(p)])].tolist() == ids[int(p)]
            assert (input_ids[r, len(ids[int(p)]) :] == 0).all()  # pad id


def _broken_posts(trained: Path, folder: Path) -> Path:
    shutil.copytree(trained / "posts", folder)
    (folder / "p000.jpg").unlink()  # missing
    (folder / "p001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    doc = json.loads((folder / "p002.json").read_text())
    doc["edge_media_to_caption"]["edges"][0]["node"]["text"] = ""  # empty caption: fine
    (folder / "p002.json").write_text(json.dumps(doc))
    return folder


def _preds(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(folder / "part-*.parquet")


def test_score_error_rows_and_summary(trained, tmp_path):
    from replaybench.distill.metrics import score_summary

    posts = _broken_posts(trained, tmp_path / "posts")
    opts = ReplayOptions(format="posts", workers=1, batch_size=8, part_rows=16)
    r = replay([trained / "bundle"], posts, tmp_path / "scores", opts)
    assert (r.items_ok, r.items_error, r.parts_written) == (58, 2, 4)
    df = _preds(tmp_path / "scores")
    assert df.height == 60 and df["item_id"].n_unique() == 60
    # the predictions contract: bundle, source path and the post's caption carried with every score
    assert set(df["bundle"]) == {"distill-student"} and df["source_path"].null_count() == 0
    assert df.filter(pl.col("item_id") == "p003")["caption"][0]
    errors = {d["item_id"]: d["error"] for d in df.filter(pl.col("status") == "error").to_dicts()}
    assert set(errors) == {"p000", "p001"}
    assert errors["p000"] == "missing: file not found"
    assert errors["p001"].startswith("truncated: ")  # the JPEG header is there, the data is not
    ok = df.filter(pl.col("status") == "ok")
    assert ok.filter(pl.col("item_id") == "p002")["score"][0] is not None  # empty caption: scored
    assert ok["score"].min() >= 0 and ok["score"].max() <= 10
    summary = score_summary(tmp_path / "scores")
    assert summary["errors"] == 2 and sum(v["count"] for v in summary["buckets"].values()) == 58
    # Scores agree with the teacher as well as training said they would (the model is real, not a stub).
    labels = pl.read_csv(trained / "labels.csv", schema_overrides={"post_id": pl.String})
    joined = ok.join(labels, left_on="post_id", right_on="post_id")
    assert float((joined["score"] - joined["score_right"]).abs().mean()) < 1.0
    with pytest.raises(UsageError, match="already holds") as e:
        replay([trained / "bundle"], posts, tmp_path / "scores", opts)
    assert "--resume" in (e.value.hint or "")


def _coco_subset(realdata: Path, folder: Path, n: int) -> Path:
    """The first ``n`` real COCO posts as a posts table (absolute image paths; nothing copied)."""
    coco = realdata / "coco_mini_captions_159"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in (coco / "posts_index.jsonl").read_text(encoding="utf-8").splitlines()[:n]:
        doc = json.loads(line)
        lines.append(json.dumps({"post_id": str(doc["coco_id"]), "image": str(coco / doc["image"]),
                                 "caption": doc["captions"][0]}))  # fmt: skip
    (folder / "posts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _reference_scores(bundle: Path, posts: Path, suffix: str = "") -> dict[str, float]:
    """Each post scored alone, outside replaybench: Pillow decodes the JPEG at reduced scale (draft to
    224x224, as the student was trained) and resizes bilinear to 224x224, the tokenizers library encodes
    the caption unpadded, and onnxruntime runs image{suffix}.onnx then text_head{suffix}.onnx."""
    import onnxruntime as ort
    from PIL import Image
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    tok.enable_truncation(128)
    cpu = ["CPUExecutionProvider"]
    image = ort.InferenceSession(str(bundle / f"image{suffix}.onnx"), providers=cpu)
    text = ort.InferenceSession(str(bundle / f"text_head{suffix}.onnx"), providers=cpu)
    out = {}
    for line in (posts / "posts.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        with Image.open(doc["image"]) as im:
            im.draft("RGB", (224, 224))
            arr = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
        (emb,) = image.run(None, {"image": arr.transpose(2, 0, 1)[None].copy()})
        ids = np.array([tok.encode(doc["caption"]).ids], np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "image_embedding": emb}
        out[doc["post_id"]] = float(text.run(None, feed)[0].reshape(-1)[0])
    return out


def test_student_replay_equals_its_graphs_run_directly_on_real_coco(trained, realdata, tmp_path):
    """Real 640px COCO JPEGs (so the reduced-scale decode matters) and real captions of many lengths:
    replay's batched, length-sorted, dynamically padded scores equal each post scored alone."""
    coco = _coco_subset(realdata, tmp_path / "coco", 24)
    opts = ReplayOptions(format="posts", workers=2, batch_size=8, allow_outside=True)
    replay([trained / "bundle"], coco, tmp_path / "fp32", opts)
    got = dict(_preds(tmp_path / "fp32").select("post_id", "score").iter_rows())
    expected = _reference_scores(trained / "bundle", coco)
    assert set(got) == set(expected)
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-4)


def test_score_int8_close_to_fp32_on_real_coco(trained, realdata, tmp_path):
    coco = _coco_subset(realdata, tmp_path / "coco", 48)
    # The table names the real images where they are (outside its folder): trusted, so allowed.
    opts = ReplayOptions(format="posts", workers=2, allow_outside=True)
    a = replay([trained / "bundle"], coco, tmp_path / "fp32", opts)
    b = replay([trained / "bundle"], coco, tmp_path / "int8", replace(opts, variant="int8"))
    assert a.items_ok == b.items_ok == 48
    fa = _preds(tmp_path / "fp32").sort("item_id")
    fb = _preds(tmp_path / "int8").sort("item_id")
    diff = np.abs(fa["score"].to_numpy() - fb["score"].to_numpy())
    assert 0 < diff.mean() < 1.0  # different graphs (int8 is not fp32 run twice), close scores
    run = json.loads((tmp_path / "int8" / "run.json").read_text())
    assert run["settings"]["variant"] == "int8"
    with pytest.raises(
        UsageError, match=r"--resume: .* \(settings differ\)"
    ):  # fp32 cannot resume an int8 run
        replay([trained / "bundle"], coco, tmp_path / "int8", replace(opts, resume=True))


def test_resume_after_kill_9(trained, realdata, tmp_path):
    coco = _coco_subset(realdata, tmp_path / "coco", 40)
    out = tmp_path / "scores"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # --allow-outside: the table names the real images where they are, outside its folder.
    cmd = [sys.executable, "-m", "replaybench", "distill", "score", str(trained / "bundle"), str(coco),
           "-o", str(out), "--batch-size", "4", "--part-rows", "4", "--workers", "1", "--json",
           "--allow-outside"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(out.glob("part-*.parquet")))
    assert 2 <= written < 10, "the run should have been killed part-way"
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["replay"]
    assert doc["items_skipped_done"] >= 8 and doc["items_skipped_done"] + doc["items_processed"] == 40
    df = _preds(out)
    assert df.height == 40 and df["item_id"].n_unique() == 40
    assert not list(out.glob(".*.tmp"))


def test_items_are_length_sorted_by_caption_within_windows():
    from replaybench.replay.items import DatasetItem
    from replaybench.replay.text_models import by_caption_length

    caps = ["a" * n for n in (5, 1, 9, 3, 7, 2, 8)] + [None]
    items = [DatasetItem(item_id=str(i), path=None, caption=c) for i, c in enumerate(caps)]
    got = [it.item_id for it in by_caption_length(items, window=4)]
    # each window of 4 sorted on its own (None counts as empty); nothing lost or duplicated
    assert got == ["1", "3", "0", "2", "7", "5", "4", "6"]


def test_an_unknown_variant_of_a_student_bundle_is_refused(trained, tmp_path):
    opts = ReplayOptions(format="posts", workers=0, variant="int4")
    with pytest.raises(UsageError, match="unknown model variant 'int4'"):
        replay([trained / "bundle"], trained / "posts", tmp_path / "scores", opts)
    assert not (tmp_path / "scores").exists()
