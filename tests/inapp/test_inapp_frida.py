"""In-app replay for real: spawn the stand-in app (tests/inapp/standin.c) under Frida, replay 40 UTKFace
faces through its own pipeline with each feed kind that runs on Linux, and check every prediction against
the stand-in's engine called directly (ctypes) on the same input, prepared here with Pillow.

Also: a crash on one item (error row, app respawned, run continues), a hang, a message that is not JSON
(error row keeping it), a killed run resumed (no duplicates, no losses), and manifests the app does not
fit (a missing export, a bad offset, another version), refused before any item is sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageOps

from replaybench.replay.datasets import read_dataset
from replaybench.replay.inapp import (
    AppVersionError,
    HookTargetError,
    InAppOptions,
    InAppTarget,
    replay_in_app,
)
from tests.inapp.manifests import AGE_FACTOR, AGE_OFFSET, manifest, write_manifest
from tests.inapp.standin import Standin, StandinEngine, build_standin, content_sum

pytestmark = pytest.mark.frida
N_ITEMS = 40
ROOT = Path(__file__).resolve().parents[2]


def _ptrace_denied() -> str | None:
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    if scope.is_file() and scope.read_text().strip() == "3":
        return "ptrace is disabled (kernel.yama.ptrace_scope = 3)"
    return None


@pytest.fixture(scope="module")
def standin() -> Standin:
    pytest.importorskip("frida", reason="frida is not installed (pip install 'replaybench[frida]')")
    reason = _ptrace_denied()
    if reason:
        pytest.skip(reason)
    return build_standin()


@pytest.fixture(scope="module")
def faces(realdata: Path) -> Path:
    folder = realdata / "utkface_300"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.fixture(scope="module")
def reference(standin: Standin, faces: Path) -> dict[str, tuple[np.ndarray, dict[str, object]]]:
    """source path -> (the engine's outputs, its message) for every face, computed without replaybench:
    Pillow decodes and resizes, the engine runs in this process."""
    engine = StandinEngine(standin)
    ref = {}
    for path in sorted((faces / "images").glob("*.jpg")):
        with Image.open(path) as im:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            small = rgb.resize((standin.width, standin.height), Image.Resampling.BILINEAR)
        out = engine.run(np.asarray(small))
        ref[str(path.absolute())] = (out, engine.message(out))
    return ref


def _target(standin: Standin, **env: str) -> InAppTarget:
    return InAppTarget(
        spawn=str(standin.program),
        spawn_args=[str(standin.weights)],
        env={"STANDIN_MAX_SECONDS": "120", **env},
    )


def _run(tmp_path: Path, standin: Standin, faces: Path, kind: str, env: dict[str, str] | None = None, **opts):
    hooks = write_manifest(tmp_path, manifest(standin, kind))
    out = tmp_path / "preds"
    options = InAppOptions(format="utkface", limit=N_ITEMS, **opts)
    result = replay_in_app(hooks, faces, out, _target(standin, **(env or {})), options)
    return result, pl.read_parquet(out / "*.parquet")


def _check_rows(df: pl.DataFrame, kind: str, reference: dict) -> None:
    for row in df.filter(pl.col("status") == "ok").iter_rows(named=True):
        out, message = reference[row["source_path"]]
        info = message["base_infos"][0]
        if kind in ("native_export", "native_offset"):
            assert row["raw__age"] == [out[0]] and row["raw__gender"] == list(out[1:3])
            assert row["age_pred"] == float(out[0]) * AGE_FACTOR + AGE_OFFSET
            e = np.exp(out[1:3].astype(np.float64) - out[1:3].max())
            assert row["p_male"] == e[0] / e.sum()
            assert row["gender_pred"] == ("male" if out[1] > out[2] else "female")
        elif kind == "return_value":
            assert row["raw__age"] == [out[0]]
            assert row["age_pred"] == float(out[0]) * AGE_FACTOR + AGE_OFFSET
        else:  # the app's JSON message
            assert row["age_pred"] == info["age"] and row["p_male_pred"] == info["boy_prob"]
            assert json.loads(row["raw_result"]) == message


@pytest.mark.parametrize(
    "kind", ["native_export", "native_offset", "frame_substitution", "message", "return_value"]
)
def test_in_app_predictions_equal_the_engine(
    tmp_path: Path, standin: Standin, faces: Path, reference, kind: str
) -> None:
    fed = tmp_path / "fed"
    result, df = _run(tmp_path, standin, faces, kind, {"STANDIN_FED_FILE": str(fed)})
    assert result.items_ok == N_ITEMS and result.items_error == 0 and result.restarts == 0, result
    # the run functions were called, except with frame substitution (the app's camera loop took the items)
    assert fed.exists() == (kind != "frame_substitution")
    assert result.app_version_reported == "1.4.2"
    assert df.height == N_ITEMS and df["item_id"].n_unique() == N_ITEMS
    assert set(df["route"]) == {"in_app"} and set(df["bundle"]) == {f"standin-{kind}"}
    _check_rows(df, kind, reference)


def _nth_item_sum(faces: Path, standin: Standin, n: int) -> tuple[str, str]:
    """(item id, content sum) of the dataset's nth item, its bytes made with Pillow as in ``reference``."""
    _, items = read_dataset(faces, "utkface")
    with Image.open(items[n].path) as im:
        small = (
            ImageOps.exif_transpose(im)
            .convert("RGB")
            .resize((standin.width, standin.height), Image.Resampling.BILINEAR)
        )
    return items[n].item_id, str(content_sum(np.asarray(small).tobytes()))


def test_a_crash_is_an_error_row_and_the_run_goes_on(
    tmp_path: Path, standin: Standin, faces: Path, reference
) -> None:
    """The app crashes on one image (every time it gets it): only that item is an error row, whatever the
    crash did to the results of the items before it, and the run goes on in a new app process."""
    culprit, crash_sum = _nth_item_sum(faces, standin, 4)
    result, df = _run(tmp_path, standin, faces, "native_export", {"STANDIN_CRASH_SUM": crash_sum})
    assert result.restarts >= 1 and len(set(result.pids)) == result.restarts + 1
    assert result.items_ok == N_ITEMS - 1 and result.items_error == 1, result
    assert df.height == N_ITEMS and df["item_id"].n_unique() == N_ITEMS
    bad = df.filter(pl.col("status") == "error")
    assert bad["item_id"].to_list() == [culprit]
    assert "the app died" in bad["error"][0] and "on this item; the app was restarted" in bad["error"][0]
    _check_rows(df, "native_export", reference)


def test_a_hang_times_out_and_the_run_goes_on(
    tmp_path: Path, standin: Standin, faces: Path, reference
) -> None:
    culprit, hang_sum = _nth_item_sum(faces, standin, 2)
    # 5 s: the hung item waits it out once, while an item that is only slow (the whole suite on 2 loaded
    # cores) still answers within it (with 2 s a second item timed out under load)
    env = {"STANDIN_HANG_SUM": hang_sum}
    result, df = _run(tmp_path, standin, faces, "native_offset", env, item_timeout=5.0)
    assert result.restarts >= 1 and result.items_ok == N_ITEMS - 1 and result.items_error == 1, result
    bad = df.filter(pl.col("status") == "error")
    assert bad["item_id"].to_list() == [culprit]
    assert "did not answer within 5 s (hung) on this item" in bad["error"][0]
    _check_rows(df, "native_offset", reference)


def test_a_message_that_does_not_parse_keeps_the_raw_text(
    tmp_path: Path, standin: Standin, faces: Path, reference
) -> None:
    result, df = _run(tmp_path, standin, faces, "message", {"STANDIN_GARBLE_AT": "7"})
    assert result.items_error == 1 and result.items_ok == N_ITEMS - 1 and result.restarts == 0
    bad = df.filter(pl.col("status") == "error")
    assert bad["item_id"].to_list() == [df["item_id"][6]]
    assert bad["error"][0].startswith("result does not parse: not JSON")
    assert bad["raw_result"][0] == "face_count=1; age=?"
    _check_rows(df, "message", reference)


def test_results_posted_later_from_another_thread(
    tmp_path: Path, standin: Standin, faces: Path, reference
) -> None:
    """An SDK that posts its result on its own thread after the call returned: read.wait_ms waits for it,
    and each message goes to the item that was waiting (no other item runs meanwhile)."""
    doc = manifest(standin, "message")
    doc["read"] = {**doc["read"], "wait_ms": 2000}
    hooks = write_manifest(tmp_path, doc)
    target = _target(standin, STANDIN_ASYNC_MS="15", STANDIN_CAMERA="0")
    result = replay_in_app(hooks, faces, tmp_path / "preds", target, InAppOptions(format="utkface", limit=12))
    assert result.items_ok == 12, result
    _check_rows(pl.read_parquet(tmp_path / "preds" / "*.parquet"), "message", reference)


def test_a_killed_run_resumes_without_duplicates_or_losses(
    tmp_path: Path, standin: Standin, faces: Path, reference
) -> None:
    hooks = write_manifest(tmp_path, manifest(standin, "native_export"))
    out = tmp_path / "preds"
    cmd = [
        sys.executable,
        "-m",
        "replaybench",
        "replay-app",
        str(hooks),
        str(faces),
        "-o",
        str(out),
        "--format",
        "utkface",
        "--limit",
        str(N_ITEMS),
        "--part-rows",
        "4",
        "--in-flight",
        "2",
        "--json",
        "--spawn",
        str(standin.program),
    ]
    program_args = ["--", str(standin.weights)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STANDIN_MAX_SECONDS": "120"}
    slow = subprocess.Popen(
        [*cmd, *program_args],
        env={**env, "STANDIN_CALL_US": "100000"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(list(out.glob("part-*.parquet"))) < 2 and time.monotonic() < deadline and slow.poll() is None:
        time.sleep(0.05)
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    first = pl.read_parquet(out / "*.parquet")
    assert 0 < first.height < N_ITEMS, "the run was not killed mid-way"
    done = subprocess.run(
        [*cmd, "--resume", *program_args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["items_skipped_done"] == first.height
    assert summary["items_processed"] == N_ITEMS - first.height
    df = pl.read_parquet(out / "*.parquet")
    assert df.height == N_ITEMS and df["item_id"].n_unique() == N_ITEMS
    assert set(df["status"]) == {"ok"}
    _check_rows(df, "native_export", reference)


@pytest.mark.parametrize(
    ("change", "error", "named"),
    [
        ({"symbol": "standin_nope"}, HookTargetError, "export standin!standin_nope does not exist"),
        (
            {"kind": "native_offset", "offset": "0x40000000"},
            HookTargetError,
            "offset standin+0x40000000 lies beyond the module",
        ),
        ({"module": "libbytenn.so"}, HookTargetError, "module libbytenn.so is not loaded"),
        (
            {},
            AppVersionError,
            "reports version '1.4.2' but the hook manifest 'standin-native_export' is for version '2.0.0'",
        ),
        ({"java": True}, HookTargetError, "the Java bridge is not available in this process or script"),
    ],
)
def test_a_manifest_the_app_does_not_fit_is_refused_before_any_item(
    tmp_path: Path, standin: Standin, faces: Path, change: dict, error: type, named: str
) -> None:
    doc = manifest(standin, "native_export")
    if change.get(
        "java"
    ):  # a Java feed in a process without Java (the agent's Java path, as far as it runs here)
        doc["feed"] = {"kind": "java_bitmap_method", "class_name": "com.example.Face", "method": "analyze"}
        doc["read"] = {"kind": "java_fields", "fields": {"age": "A00"}}
        doc["input"] = {"pixel_format": "RGBA8888"}
        doc["postprocess"] = {"decoders": []}
    elif change:
        feed = {**doc["feed"], **change}
        if change.get("kind") == "native_offset":
            del feed["symbol"]
        doc["feed"] = feed
    else:
        doc["app"] = {**doc["app"], "version": "2.0.0"}
    hooks = write_manifest(tmp_path, doc)
    out, fed = tmp_path / "preds", tmp_path / "fed"
    with pytest.raises(error) as info:
        replay_in_app(
            hooks,
            faces,
            out,
            _target(standin, STANDIN_FED_FILE=str(fed)),
            InAppOptions(format="utkface", limit=4),
        )
    assert named in info.value.message
    assert not fed.exists() and not list(out.glob("part-*.parquet"))  # nothing was fed
