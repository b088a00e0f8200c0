"""replay --ray on a real Ray cluster (``ray start --head``, 2 CPUs, started here and stopped after the
module): the same predictions as the local engine, item by item; resume after a killed driver; refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from replaybench.errors import MissingDependencyError, UsageError
from replaybench.replay.runner import ReplayOptions, replay
from tests.distill.synthetic import build_student_and_bundle
from tests.fixtures.cache import cached_build
from tests.replay.helpers import tiny_bundle, utk_images

pytestmark = pytest.mark.xdist_group("ray")  # one cluster: every test of the module on one worker

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A one-node Ray cluster with 2 CPUs, reachable on 127.0.0.1 only (so without token authentication),
    with this checkout on its workers' path; this process joins it (replay reuses the connection). Yields
    the address and the environment a driver subprocess needs."""
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # read when ray is imported
    import ray

    port = _free_port()
    # short: Ray's socket paths under it must fit in 107 bytes
    temp = Path(tempfile.mkdtemp(prefix="rb-ray-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    head = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--num-gpus",
            "0",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--temp-dir",
            str(temp),
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the teardown stops the whole cluster
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                break
            except ConnectionError:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(0.5)
        yield address, env
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved
        # the whole cluster is this process group (GCS, raylet, workers); 'ray start --block' takes
        # over 30 s to stop it on SIGTERM, and nothing of it needs to be kept
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> tuple[list[Path], Path]:
    """Two face bundles of different preprocessing (16 px bilinear_tf, 24 px area), and 40 faces plus a
    zero-byte and a corrupt JPEG."""
    root = tmp_path_factory.mktemp("faces")
    bundles = [
        tiny_bundle(root / "b16", name="tiny16"),
        tiny_bundle(root / "b24", name="tiny24", size=24, method="area"),
    ]
    ds = root / "ds"
    utk_images(ds, 40)
    (ds / "7_1_2_20170101000000001.jpg.chip.jpg").write_bytes(b"")
    (ds / "8_0_1_20170101000000002.jpg.chip.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    return bundles, ds


def _same_predictions(local: Path, distributed: Path) -> pl.DataFrame:
    """Assert both predictions folders hold the same rows (per item and bundle: every column equal,
    floats within 1e-5) and the same schema and part metadata; returns the rows."""
    a = pl.read_parquet(local / "*.parquet").sort("item_id", "bundle")
    b = pl.read_parquet(distributed / "*.parquet").sort("item_id", "bundle")
    assert a.schema == b.schema
    assert a.height == b.height and a["item_id"].to_list() == b["item_id"].to_list()
    for col in a.columns:
        if a[col].dtype.is_float():
            x, y = a[col].to_numpy(), b[col].to_numpy()
            assert np.array_equal(np.isnan(x), np.isnan(y)), col
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-5, equal_nan=True, err_msg=col)
        else:
            assert a[col].to_list() == b[col].to_list(), col
    meta = [pl.read_parquet_metadata(next(f.glob("part-*.parquet"))) for f in (local, distributed)]
    assert {k: v for k, v in meta[0].items() if k.startswith("replaybench.")} == {
        k: v for k, v in meta[1].items() if k.startswith("replaybench.")
    }
    assert json.loads((local / "run.json").read_text()) == json.loads((distributed / "run.json").read_text())
    return b


def _whole_items_per_part(folder: Path, n_bundles: int) -> None:
    seen: set[str] = set()
    for part in sorted(folder.glob("part-*.parquet")):
        df = pl.read_parquet(part)
        counts = df.group_by("item_id").len()
        assert set(counts["len"]) == {n_bundles}, part.name  # every bundle's row of an item, in one part
        ids = set(df["item_id"])
        assert not ids & seen, part.name
        seen |= ids


def test_ray_writes_the_local_engines_predictions_for_two_face_bundles(cluster, faces, tmp_path):
    address, _ = cluster
    bundles, ds = faces
    common = {"batch_size": 8, "part_rows": 16}
    local = replay(bundles, ds, tmp_path / "local", ReplayOptions(workers=2, **common))
    dist = replay(bundles, ds, tmp_path / "ray", ReplayOptions(ray=address, **common))
    assert (dist.items_ok, dist.items_error, dist.rows_written) == (40, 2, 84)
    assert (local.items_ok, local.items_error) == (dist.items_ok, dist.items_error)
    assert dist.preprocess_groups == 2
    df = _same_predictions(tmp_path / "local", tmp_path / "ray")
    _whole_items_per_part(tmp_path / "ray", 2)
    assert all(p.name.startswith("part-") for p in (tmp_path / "ray").glob("*.parquet"))
    errors = dict(zip(*df.filter(pl.col("status") == "error").select("item_id", "error"), strict=True))
    assert errors["7_1_2_20170101000000001.jpg.chip.jpg"].startswith("empty")
    assert errors["8_0_1_20170101000000002.jpg.chip.jpg"].split(":")[0] in ("truncated", "corrupt")
    assert df.filter(pl.col("status") == "error")["gender_pred"].null_count() == 4  # 2 items x 2 bundles


def test_ray_writes_the_local_engines_scores_for_the_student(cluster, tmp_path):
    address, _ = cluster
    trained = cached_build("distill-student", build_student_and_bundle)
    bundle, posts = trained / "bundle", trained / "posts"
    opts = {"format": "posts", "batch_size": 16, "variant": "int8"}
    local = replay([bundle], posts, tmp_path / "local", ReplayOptions(workers=2, **opts))
    dist = replay([bundle], posts, tmp_path / "ray", ReplayOptions(ray=address, **opts))
    assert dist.items_ok == local.items_ok == 60
    df = _same_predictions(tmp_path / "local", tmp_path / "ray")
    assert df["caption"].null_count() == 0 and df["post_id"].n_unique() == 60


def test_killed_ray_driver_resumes_with_no_duplicates_or_losses(cluster, tmp_path):
    address, env = cluster
    ds = tmp_path / "ds"
    utk_images(ds, 240, size=120)
    b = tiny_bundle(tmp_path / "b", size=48, method="area")
    out = tmp_path / "p"
    cmd = [sys.executable, "-m", "replaybench", "replay", str(b), str(ds), "-o", str(out)]
    opts = ["--ray", address, "--batch-size", "4", "--part-rows", "8", "--json"]
    proc = subprocess.Popen(cmd + opts, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not list(out.glob("part-*.parquet")) and proc.poll() is None:
        time.sleep(0.005)
    proc.kill()  # the driver, kill -9: Ray ends its job's tasks and actors
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err}"
    written = pl.read_parquet(out / "*.parquet")["item_id"].to_list()
    assert 0 < len(written) < 240
    assert len(written) == len(set(written))
    resumed = replay([b], ds, out, ReplayOptions(ray=address, resume=True, batch_size=4, part_rows=8))
    assert resumed.items_skipped_done == len(written)
    assert resumed.items_processed == 240 - len(written)
    assert not list(out.glob(".*.tmp"))
    replay([b], ds, tmp_path / "clean", ReplayOptions(workers=0, batch_size=4, part_rows=8))
    _same_predictions(tmp_path / "clean", out)  # every item once, the values of an uninterrupted run


def test_without_ray_installed_the_error_names_the_extra_and_writes_nothing(faces, tmp_path, monkeypatch):
    bundles, ds = faces
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    with pytest.raises(MissingDependencyError) as e:
        replay(bundles, ds, tmp_path / "p", ReplayOptions(ray="auto"))
    assert e.value.hint is not None and "pip install 'replaybench[cluster]'" in e.value.hint
    assert not (tmp_path / "p").exists()


def test_addresses_that_cannot_work_are_refused_before_run_json(faces, tmp_path):
    bundles, ds = faces
    for address in (f"127.0.0.1:{_free_port()}", "not-an-address"):
        with pytest.raises(UsageError, match="--ray"):
            replay(bundles, ds, tmp_path / "p", ReplayOptions(ray=address))
    # Ray Data does not run through Ray Client (it fails deep inside Ray Data): refused with what works
    with pytest.raises(UsageError, match="Ray Client") as e:
        replay(bundles, ds, tmp_path / "p", ReplayOptions(ray="ray://127.0.0.1:10001"))
    assert e.value.hint is not None and "ray job submit" in e.value.hint
    assert not (tmp_path / "p").exists()


def test_a_node_holding_another_model_at_the_bundle_path_stops_the_run_with_that_error(cluster, faces):
    """What a node says when the shared storage is not shared: the actors check the model file against
    the driver's sha256 (and raise the typed error the driver re-raises)."""
    from dataclasses import replace

    from replaybench.bundle import load_bundle
    from replaybench.replay import ray_engine
    from replaybench.replay.datasets import ReadOptions, read_dataset
    from replaybench.replay.inference import ModelStage
    from replaybench.replay.rows import RowBuilder
    from replaybench.replay.workers import DecodeConfig

    address, _ = cluster
    bundles, ds = faces
    lb = load_bundle(bundles[0])
    assert lb.bundle.preprocess is not None
    _, items = read_dataset(ds, "utkface", ReadOptions())
    models = ModelStage([lb], [lb.bundle.preprocess], [0])
    rows = RowBuilder([lb.bundle.name], items, models.columns)
    model = ray_engine.ModelConfig.of([lb], [0])
    assert model.model_sha256[0] != "0" * 64
    added: list[object] = []
    with pytest.raises(UsageError, match="holds another model.onnx than the driver's") as e:
        ray_engine.run(
            address,
            items[:8],
            dataset=ds,
            decode=DecodeConfig(specs=(lb.bundle.preprocess,)),
            model=replace(model, model_sha256=("0" * 64,)),
            rows=rows,
            batch_size=4,
            add=lambda frame, status: added.append(frame),
        )
    assert "same path" in str(e.value) and not added


def test_cli_without_ray_exits_9_with_the_install_command(faces, tmp_path, monkeypatch, capsys):
    from replaybench.cli import main

    bundles, ds = faces
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["replay", str(bundles[0]), str(ds), "-o", str(tmp_path / "p"), "--ray", "auto"]) == 9
    err = capsys.readouterr().err
    assert "pip install 'replaybench[cluster]'" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_gpu_layout_decode_tasks_hand_the_actors_process_chunks_result_exactly(faces):
    """With GPUs, decode tasks feed the actors through Ray's object store (no GPU here to run that layout
    on the cluster): what an actor rebuilds from a decode task's row is ``process_chunk``'s own result,
    tensors bit for bit, for two preprocess specs, a corrupt and an empty image."""
    from replaybench.bundle import load_bundle
    from replaybench.replay import ray_engine
    from replaybench.replay.datasets import ReadOptions, read_dataset
    from replaybench.replay.inference import ModelStage
    from replaybench.replay.rows import RowBuilder
    from replaybench.replay.workers import DecodeConfig, init_worker, process_chunk

    bundles, ds = faces
    lbs = [load_bundle(b) for b in bundles]
    specs = tuple(lb.bundle.preprocess for lb in lbs if lb.bundle.preprocess is not None)
    _, items = read_dataset(ds, "utkface", ReadOptions())
    chunk = [it for it in items if it.item_id.startswith(("7_1_2", "8_0_1"))] + items[:6]
    rows = RowBuilder([lb.bundle.name for lb in lbs], items, ModelStage(lbs, specs, [0, 1]).columns)
    config = DecodeConfig(specs=specs)
    row = {"items": ray_engine.encode_items(chunk, rows)}
    got = ray_engine._decoded(ray_engine.decode_chunk(row, run_id="t", config=config, dataset=str(ds)))
    init_worker(config)
    want = process_chunk([(i, str(it.path)) for i, it in enumerate(chunk)])
    assert got["status"] == want["status"] == ["error", "error", *["ok"] * 6]
    assert got["error"] == want["error"] and got["faces"] == want["faces"]
    for g, w in zip(got["tensors"], want["tensors"], strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape == (6, *w.shape[1:])
        np.testing.assert_array_equal(g, w)
    assert [it.labels for it in ray_engine.decode_items(row["items"])] == [it.labels for it in chunk]


def test_layouts_leave_decoding_cpus():
    from replaybench.replay import ray_engine

    assert ray_engine.layout(2, 0, None) == (2, {"num_cpus": 1.0})  # an actor per CPU, decoding itself
    assert ray_engine.layout(16, 0, 4) == (4, {"num_cpus": 4.0})
    n, res = ray_engine.layout(8, 8, None)  # a GPU per actor, never all the CPUs: decode tasks need some
    assert n == 8 and res["num_gpus"] == 1 and res["num_cpus"] * n <= 8 / 2
    n, res = ray_engine.layout(64, 4, 8)
    assert n == 8 and res == {"num_gpus": 0.5, "num_cpus": 1.0}
