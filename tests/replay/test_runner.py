"""The runner end to end on tiny real ONNX bundles: correctness per item, batching, errors, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest
from PIL import Image

from replaybench.bundle import Decoder, PreprocessSpec, ResizeSpec, load_bundle
from replaybench.errors import UsageError
from replaybench.replay.decode import decode_image
from replaybench.replay.inference import inference_threads
from replaybench.replay.items import DatasetItem
from replaybench.replay.pool import DecodePool
from replaybench.replay.preprocess import apply_preprocess
from replaybench.replay.runner import ReplayOptions, replay
from replaybench.replay.sessions import open_model
from replaybench.replay.workers import DecodeConfig
from tests.replay.helpers import tiny_bundle, tiny_model, utk_images, write_bundle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dataset(tmp_path):
    ds = tmp_path / "ds"
    utk_images(ds, 40)
    (ds / "7_1_2_20170101000000001.jpg.chip.jpg").write_bytes(b"")  # zero-byte
    (ds / "8_0_1_20170101000000002.jpg.chip.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")  # corrupt
    return ds


def _direct(bundle: Path, path: Path) -> dict[str, np.ndarray]:
    """What a plain onnxruntime call on one preprocessed image gives (the reference)."""
    lb = load_bundle(bundle)
    assert lb.bundle.preprocess is not None
    x = apply_preprocess(decode_image(path), lb.bundle.preprocess)[None]
    sess = ort.InferenceSession(str(lb.model_path), providers=["CPUExecutionProvider"])
    return dict(zip(["probs", "age"], sess.run(["probs", "age"], {"image": x}), strict=True))


def test_predictions_equal_direct_onnxruntime_per_item(tmp_path, dataset):
    b = tiny_bundle(tmp_path / "b")
    res = replay([b], dataset, tmp_path / "p", ReplayOptions(workers=2, batch_size=8, part_rows=16))
    assert (res.items_ok, res.items_error, res.rows_written) == (40, 2, 42)
    assert res.parts_written == 3
    df = pl.read_parquet(tmp_path / "p" / "*.parquet")
    assert df.height == 42 and df["item_id"].n_unique() == 42
    assert set(df["route"]) == {"offline"}  # in-app replay writes "in_app" (tests/inapp)
    errors = dict(zip(*df.filter(pl.col("status") == "error").select("item_id", "error"), strict=True))
    assert errors["7_1_2_20170101000000001.jpg.chip.jpg"].startswith("empty")
    assert errors["8_0_1_20170101000000002.jpg.chip.jpg"].split(":")[0] in (
        "truncated",
        "corrupt",
        "not an image",
    )
    ok = df.filter(pl.col("status") == "ok")
    for row in ok.iter_rows(named=True):
        ref = _direct(b, Path(row["source_path"]))
        np.testing.assert_allclose(row["raw__probs"], ref["probs"][0], rtol=1e-5, atol=1e-6)
        assert row["p_female"] == pytest.approx(float(ref["probs"][0, 1]), rel=1e-5)
        assert row["gender_pred"] == ("female" if ref["probs"][0, 1] > ref["probs"][0, 0] else "male")
        assert row["age_pred"] == pytest.approx(float(ref["age"][0, 0]) * 116, rel=1e-5)
    # labels from the file names are carried into every row, error rows included
    r = df.filter(pl.col("item_id") == "7_1_2_20170101000000001.jpg.chip.jpg").row(0, named=True)
    assert (r["age"], r["gender"], r["race"], r["race_id"]) == (7, "female", "Asian", 2)


def test_fixed_batch_one_models_batched_or_looped(tmp_path, dataset):
    dynamic = tiny_bundle(tmp_path / "dyn", name="dyn")
    fixed = tiny_bundle(tmp_path / "fixed", name="fixed", batch=1)
    baked = tiny_bundle(tmp_path / "baked", name="baked", batch=1, bake_batch=True)
    assert open_model(fixed / "model.onnx").batch_mode == "made_dynamic"
    assert open_model(baked / "model.onnx").batch_mode == "loop"
    res = replay([dynamic, fixed, baked], dataset, tmp_path / "p", ReplayOptions(workers=0, batch_size=16))
    assert res.preprocess_groups == 1  # one decode + one preprocess for three bundles
    assert [b.batch_mode for b in res.bundles] == ["dynamic", "made_dynamic", "loop"]
    df = pl.read_parquet(tmp_path / "p" / "*.parquet").filter(pl.col("status") == "ok").sort("item_id")
    by = {name: df.filter(pl.col("bundle") == name) for name in ("dyn", "fixed", "baked")}
    assert by["dyn"].height == 40
    for name in ("fixed", "baked"):
        np.testing.assert_allclose(
            np.array(by[name]["raw__probs"].to_list()), np.array(by["dyn"]["raw__probs"].to_list()), rtol=1e-5
        )


def _grey_items(folder: Path, n: int) -> list[DatasetItem]:
    """``n`` flat grey images: image i has level 5 * i, so a tensor identifies its image."""
    folder.mkdir()
    items = []
    for i in range(n):
        Image.fromarray(np.full((20, 20, 3), 5 * i, np.uint8)).save(folder / f"{i:02d}.png")
        items.append(DatasetItem(item_id=str(i), path=folder / f"{i:02d}.png"))
    return items


def _run_pool(items: list[DatasetItem], infer, write) -> None:
    spec = PreprocessSpec(resize=ResizeSpec(width=8, height=8, method="area"), scale=[1.0], offset=[0.0])
    pool = DecodePool(DecodeConfig(specs=(spec,), resize_backend="numpy"), 2, 4, streams=2)
    try:
        pool.run(items, infer, write)
    finally:
        pool.close()


def test_streams_finish_out_of_order_but_chunks_are_written_in_order(tmp_path):
    """Two streams take whole chunks and finish in any order; writes stay in chunk order, and a chunk's
    shared-memory slot is not reused before it is written (each tensor still shows its own image)."""
    items = _grey_items(tmp_path / "imgs", 40)
    items.insert(7, DatasetItem(item_id="missing", path=None))
    delays = iter(np.random.default_rng(0).uniform(0, 0.05, size=64))

    def infer(chunk, res):
        time.sleep(next(delays))  # streams finish out of order
        return [] if res["tensors"][0] is None else [float(t.mean()) for t in res["tensors"][0]]

    written = []

    def write(chunk, res, means):
        ok = [it for it, st in zip(chunk, res["status"], strict=True) if st == "ok"]
        written.append(([it.item_id for it in chunk], [it.item_id for it in ok], means))

    _run_pool(items, infer, write)
    assert [i for ids, _, _ in written for i in ids] == [it.item_id for it in items]
    for _, ok_ids, means in written:
        assert means == pytest.approx([5.0 * int(i) for i in ok_ids])


def test_a_failing_stream_stops_the_run_after_the_chunks_before_it(tmp_path):
    items = _grey_items(tmp_path / "imgs", 40)

    def infer(chunk, res):
        if res["tensors"][0][0].mean() == 5.0 * 12:  # the fourth chunk (items 12-15)
            raise RuntimeError("model failed")
        return None

    written: list[str] = []
    with pytest.raises(RuntimeError, match="model failed"):
        _run_pool(items, infer, lambda chunk, res, _: written.extend(it.item_id for it in chunk))
    assert written == [str(i) for i in range(12)]  # whole chunks, in order, none after the failure


def test_inference_threads_choice(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert inference_threads(None, 4) == (1, 4)  # workers share the cores: a one-thread stream per core
    assert inference_threads(3, 4) == (3, 1)  # an explicit --threads is kept
    assert inference_threads(None, 0) == (None, 1)  # decode in the main process: ORT's own threads


def test_multi_bundle_groups_by_preprocess(tmp_path, dataset):
    a = tiny_bundle(tmp_path / "a", name="a", size=16)
    b = tiny_bundle(tmp_path / "b", name="b", size=24)
    c = tiny_bundle(tmp_path / "c", name="c", size=16, method="area")
    res = replay([a, b, c], dataset, tmp_path / "p", ReplayOptions(workers=0, limit=10))
    assert res.preprocess_groups == 3
    assert [x.preprocess_group for x in res.bundles] == [0, 1, 2]
    df = pl.read_parquet(tmp_path / "p" / "*.parquet").filter(pl.col("status") == "ok")
    row = df.filter(pl.col("bundle") == "b").row(0, named=True)
    ref = _direct(b, Path(row["source_path"]))
    np.testing.assert_allclose(row["raw__probs"], ref["probs"][0], rtol=1e-5, atol=1e-6)


def test_limit_shuffle_and_refusals(tmp_path, dataset):
    b = tiny_bundle(tmp_path / "b")
    res = replay([b], dataset, tmp_path / "p", ReplayOptions(workers=0, limit=5, shuffle=True, seed=3))
    assert res.items_total == 5
    ids1 = pl.read_parquet(tmp_path / "p" / "*.parquet")["item_id"].to_list()
    replay([b], dataset, tmp_path / "q", ReplayOptions(workers=0, limit=5, shuffle=True, seed=3))
    assert pl.read_parquet(tmp_path / "q" / "*.parquet")["item_id"].to_list() == ids1
    with pytest.raises(UsageError, match="already holds"):
        replay([b], dataset, tmp_path / "p", ReplayOptions(workers=0, limit=5, shuffle=True, seed=3))
    with pytest.raises(UsageError, match="different run"):
        replay([b], dataset, tmp_path / "p", ReplayOptions(workers=0, limit=6, resume=True))
    res = replay(
        [b], dataset, tmp_path / "p", ReplayOptions(workers=0, limit=5, shuffle=True, seed=3, resume=True)
    )
    assert (res.items_skipped_done, res.items_processed) == (5, 0)


def test_input_dataset_never_modified(tmp_path, dataset):
    before = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in dataset.iterdir())
    replay([tiny_bundle(tmp_path / "b")], dataset, tmp_path / "p", ReplayOptions(workers=0))
    assert sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in dataset.iterdir()) == before


@pytest.mark.parametrize("stop", ["kill -9", "ctrl-c"])
def test_resume_after_a_stopped_run_has_no_duplicates_or_losses(tmp_path, stop):
    ds = tmp_path / "ds"
    utk_images(ds, 300, size=200)
    b = tiny_bundle(tmp_path / "b", size=64, method="area")
    out = tmp_path / "p"
    cmd = [sys.executable, "-m", "replaybench", "replay", str(b), str(ds), "-o", str(out)]
    # ctrl-c reaches the whole process group, decode workers included, as in a terminal
    opts = ["--workers", "0" if stop == "kill -9" else "2", "--batch-size", "4", "--part-rows", "8", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd + opts,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL if stop == "kill -9" else signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if stop == "kill -9":
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    else:
        assert proc.returncode == 130, err
        assert "add --resume to continue" in err and "Traceback" not in err
    written = pl.read_parquet(out / "*.parquet")["item_id"].to_list()
    assert 0 < len(written) < 300
    done = subprocess.run(cmd + [*opts, "--resume"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    df = pl.read_parquet(out / "*.parquet")
    assert df.height == 300
    assert df["item_id"].n_unique() == 300
    assert set(df["item_id"]) == {p.name for p in ds.iterdir()}
    assert not list(out.glob(".*.tmp"))


def test_cli_replay_json(tmp_path, dataset):
    from typer.testing import CliRunner

    from replaybench.cli import app

    b = tiny_bundle(tmp_path / "b")
    r = CliRunner().invoke(
        app,
        [
            "replay",
            str(b),
            str(dataset),
            "-o",
            str(tmp_path / "p"),
            "--workers",
            "0",
            "--limit",
            "7",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["items_processed"] == 7 and doc["format"] == "utkface"


def test_broken_model_bundle_refused(tmp_path, dataset):
    from replaybench.errors import CorruptInputError

    b = tiny_bundle(tmp_path / "b")
    (b / "model.onnx").write_bytes(tiny_model()[:50])
    with pytest.raises(CorruptInputError):
        replay([b], dataset, tmp_path / "p", ReplayOptions(workers=0))


def test_grayscale_png_and_missing_manifest_rows(tmp_path):
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(tmp_path / "g.png")
    (tmp_path / "manifest.csv").write_text("path,group\ng.png,a\nmissing.jpg,b\n")
    res = replay(
        [tiny_bundle(tmp_path / "b")], tmp_path / "manifest.csv", tmp_path / "p", ReplayOptions(workers=0)
    )
    df = pl.read_parquet(tmp_path / "p" / "*.parquet").sort("item_id")
    assert df["status"].to_list() == ["ok", "error"]
    assert df["error"][1].startswith("missing")
    assert df["group"].to_list() == ["a", "b"]
    assert res.items_error == 1


def test_providers_and_optimisation_level(tmp_path):
    from replaybench.replay.sessions import resolve_providers

    b = tiny_bundle(tmp_path / "b")
    assert resolve_providers(["CPU"]) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UsageError, match="not available"):
            resolve_providers(["CUDA"])
    plain = open_model(b / "model.onnx")
    unfused = open_model(b / "model.onnx", optimization="disabled")
    x = np.random.default_rng(0).random((3, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(unfused.run(x)["probs"], plain.run(x)["probs"], rtol=1e-5)
    with pytest.raises(UsageError, match="optimisation level"):
        open_model(b / "model.onnx", optimization="turbo")


def test_posts_carry_caption_and_post_id(tmp_path):
    ds = tmp_path / "posts"
    ds.mkdir()
    for k in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * k, np.uint8)).save(ds / f"p{k}.jpg")
        doc = {"id": f"p{k}", "edge_media_to_caption": {"edges": [{"node": {"text": f"caption {k}"}}]}}
        (ds / f"p{k}.json").write_text(json.dumps(doc))
    res = replay([tiny_bundle(tmp_path / "b")], ds, tmp_path / "p", ReplayOptions(workers=0))
    assert res.format == "posts" and res.items_ok == 3
    df = pl.read_parquet(tmp_path / "p" / "*.parquet").sort("post_id")
    assert df["caption"].to_list() == ["caption 0", "caption 1", "caption 2"]
    assert df["post_id"].to_list() == ["p0", "p1", "p2"]


def test_label_columns_keep_their_kind_and_mixed_values_become_text(tmp_path):
    ds = tmp_path / "posts"
    ds.mkdir()
    likes = [5, "5k", None]  # scraped posts disagree on a field's type: the column is text, nothing lost
    views = [10, 2.5, 7]  # ints and floats: a float column
    for k in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * k, np.uint8)).save(ds / f"p{k}.jpg")
        doc = {"id": f"p{k}", "caption": f"c{k}", "likes": likes[k], "views": views[k], "is_video": k == 1}
        (ds / f"p{k}.json").write_text(json.dumps(doc))
    res = replay([tiny_bundle(tmp_path / "b")], ds, tmp_path / "p", ReplayOptions(workers=0))
    assert res.items_ok == 3
    df = pl.read_parquet(tmp_path / "p" / "*.parquet").sort("post_id")
    assert df.schema["likes"] == pl.String and df["likes"].to_list() == ["5", "5k", None]
    assert df.schema["views"] == pl.Float64 and df["views"].to_list() == [10.0, 2.5, 7.0]
    assert df.schema["is_video"] == pl.Boolean and df["is_video"].to_list() == [False, True, False]


def test_bundles_with_different_outputs_share_parts_with_nulls_where_they_differ(tmp_path, dataset):
    from replaybench.bundle import Decoder
    from tests.replay.helpers import write_bundle

    gender = tiny_bundle(tmp_path / "g", name="gender")
    age_only = write_bundle(
        tmp_path / "a",
        tiny_model(),
        "age_only",
        load_bundle(gender).bundle.preprocess,
        [Decoder(output="age", field="age_years", kind="scale", factor=100.0)],
    )
    res = replay(
        [gender, age_only], dataset, tmp_path / "p", ReplayOptions(workers=2, batch_size=8, part_rows=16)
    )
    assert res.rows_written == 2 * 42 and res.items_error == 2
    parts = sorted((tmp_path / "p").glob("part-*.parquet"))
    for part in parts:  # both bundles' rows of an item are in the same part
        counts = pl.read_parquet(part).group_by("item_id").len()
        assert set(counts["len"]) == {2}
    df = pl.read_parquet(parts)
    by = {name: df.filter(pl.col("bundle") == name).sort("item_id") for name in ("gender", "age_only")}
    assert by["gender"]["age_years"].null_count() == 42 and by["age_only"]["gender_pred"].null_count() == 42
    ok = by["age_only"].filter(pl.col("status") == "ok")
    np.testing.assert_allclose(ok["age_years"], ok["raw__age"].list.first() * 100.0, rtol=1e-6)
    assert by["age_only"]["item_id"].to_list() == by["gender"]["item_id"].to_list()
    errors = df.filter(pl.col("status") == "error")
    assert errors.height == 4 and errors["raw__probs"].null_count() == 4
    assert errors["age"].null_count() == 0  # labels are kept on error rows


def test_jpeg_draft_spec_decodes_at_reduced_scale_as_pillow_does(tmp_path):
    """A spec with jpeg_draft gets Pillow's reduced-scale JPEG decode (the pixels a student was trained
    on), a spec without it the full decode, in one run; the reference is Pillow + onnxruntime directly."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(5):  # smooth fields plus noise: the draft decode's pixels differ from the full one's
        low = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((256, 256))
        noisy = np.clip(np.asarray(low, np.int16) + rng.integers(-30, 30, (256, 256, 3)), 0, 255)
        paths.append(tmp_path / f"img{i}.jpg")
        Image.fromarray(noisy.astype(np.uint8)).save(paths[-1], quality=90)
    dataset = tmp_path / "manifest.csv"
    dataset.write_text("path\n" + "\n".join(str(p) for p in paths) + "\n")
    decoders = [Decoder(output="age", field="age_pred", kind="scale", index=0)]
    bundles = {}
    for draft in (True, False):
        spec = PreprocessSpec(jpeg_draft=draft, resize=ResizeSpec(width=16, height=16, method="bilinear_pil"))
        bundles[draft] = write_bundle(tmp_path / f"b{draft}", tiny_model(), f"draft-{draft}", spec, decoders)
    replay(list(bundles.values()), dataset, tmp_path / "preds", ReplayOptions(format="manifest", workers=1))
    preds = pl.read_parquet(tmp_path / "preds" / "*.parquet")
    sess = ort.InferenceSession(str(bundles[True] / "model.onnx"), providers=["CPUExecutionProvider"])
    got_diff = []
    for draft in (True, False):
        expected = []
        for p in paths:
            with Image.open(p) as im:
                if draft:
                    im.draft("RGB", (16, 16))
                x = (
                    np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR), np.float32)
                    / 255
                )
            expected.append(float(sess.run(["age"], {"image": x[None]})[0][0, 0]))
        rows = preds.filter(pl.col("bundle") == f"draft-{draft}").sort("source_path")
        assert rows["source_path"].to_list() == [str(p) for p in paths]
        np.testing.assert_allclose(rows["age_pred"].to_numpy(), expected, atol=1e-6)
        got_diff.append(rows["age_pred"].to_numpy())
    assert np.abs(got_diff[0] - got_diff[1]).max() > 1e-4  # the two decodes really differ
    with pytest.raises(UsageError, match="jpeg_draft"):  # a face crop needs the full-resolution image
        replay([bundles[True]], dataset, tmp_path / "p2", ReplayOptions(format="manifest", faces=tmp_path))


def test_a_variant_the_bundle_lacks_is_refused(tmp_path, dataset):
    bundle = tiny_bundle(tmp_path / "b")
    with pytest.raises(UsageError, match="has no int8 variant"):
        replay([bundle], dataset, tmp_path / "preds", ReplayOptions(format="utkface", variant="int8"))
    assert not (tmp_path / "preds").exists()  # refused before run.json: a re-run needs no --resume
