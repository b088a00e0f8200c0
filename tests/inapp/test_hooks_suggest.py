"""``hooks suggest TRACE``: a draft manifest from a trace. On a real Frida trace of the stand-in app the
confirmed draft replays faces to the values of its engine; on the sample app's trace (TFLite, no watched
functions) the draft says what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageOps

from replaybench.cli import main
from replaybench.demo.pipeline import SAMPLE
from replaybench.replay.hooks_suggest import numeric_paths, suggest_hooks
from tests.inapp.standin import VERSION, StandinEngine, build_standin


def test_numeric_fields_of_a_message_cut_short() -> None:
    text = '{"face_count":1,"base_infos":[{"age":12.4197445,"boy_prob":0.058'
    assert numeric_paths(text) == ["face_count", "base_infos.0.age"]  # the cut number is dropped
    assert numeric_paths('[{"a": [1, 2.5e-3, {"b": -4}]}, 7, "x"]') == ["0.a.0", "0.a.1", "0.a.2.b", "1"]


def test_a_trace_without_watched_functions_says_what_is_missing(capsys) -> None:
    s = suggest_hooks(SAMPLE / "trace")
    assert not s.valid
    assert any("no app function that took the images" in p for p in s.problems)
    kinds = {(c.role, c.kind, c.target) for c in s.candidates}
    assert ("feed", "java_bitmap_method", "createScaledBitmap") in kinds
    assert ("read", "output_tensor", "StatefulPartitionedCall_1:0") in kinds
    assert s.draft["app"] == {
        "package": "org.replaybench.sample",
        "version": "1.0",
        "version_from": {"kind": "java_package"},
    }
    assert any("offline replay covers it" in n for n in s.draft["notes"])
    assert main(["hooks", "suggest", str(SAMPLE / "trace"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is False


@pytest.mark.frida
def test_trace_suggest_confirm_replay(tmp_path: Path, realdata: Path) -> None:
    pytest.importorskip("frida", reason="frida is not installed (pip install 'replaybench[frida]')")
    from replaybench.extract.capture import AgentConfig, CaptureTarget, capture
    from replaybench.replay.inapp import InAppOptions, InAppTarget, replay_in_app

    faces = realdata / "utkface_300"
    if not faces.is_dir():
        pytest.skip(f"{faces} is absent")
    standin = build_standin()
    watch = ["standin!standin_on_frame", "standin!post_message"]
    capture(
        CaptureTarget(spawn=str(standin.program), spawn_args=[str(standin.weights)]),
        tmp_path / "trace",
        seconds=1.0,
        config=AgentConfig(watch=watch, max_events_per_second=100),
    )
    hooks = tmp_path / "draft.json"
    assert main(["hooks", "suggest", str(tmp_path / "trace"), "-o", str(hooks)]) == 0
    draft = json.loads(hooks.read_text(encoding="utf-8"))
    assert draft["feed"] == {
        "kind": "frame_substitution",
        "call_site": {"module": "standin", "symbol": "standin_on_frame"},
        "buffer_arg": 0,
        "width_arg": 1,
        "height_arg": 2,
    }
    assert (
        draft["input"]["resize"]["width"] == standin.width
        and draft["input"]["resize"]["height"] == standin.height
    )
    assert (
        draft["read"]["hook"] == {"module": "standin", "symbol": "post_message"} and draft["read"]["arg"] == 0
    )
    assert draft["read"]["fields"]["age"] == "base_infos.0.age"
    # the researcher confirms: the version, the pixel format, the resize kernel, the fields that are results
    draft["app"] = {
        **draft["app"],
        "version": VERSION,
        "version_from": {"kind": "native_export", "module": "standin", "symbol": "standin_version"},
    }
    draft["input"] = {
        "pixel_format": "RGB888",
        "resize": {**draft["input"]["resize"], "method": "bilinear_pil"},
    }
    draft["read"]["fields"] = {"age": "base_infos.0.age", "boy_prob": "base_infos.0.boy_prob"}
    draft["postprocess"] = {"decoders": [{"output": "age", "field": "age_pred", "kind": "scale"}]}
    hooks.write_text(json.dumps(draft), encoding="utf-8")
    target = InAppTarget(
        spawn=str(standin.program), spawn_args=[str(standin.weights)], env={"STANDIN_MAX_SECONDS": "60"}
    )
    result = replay_in_app(hooks, faces, tmp_path / "preds", target, InAppOptions(format="utkface", limit=12))
    assert result.items_ok == 12
    engine = StandinEngine(standin)
    for row in pl.read_parquet(tmp_path / "preds" / "*.parquet").iter_rows(named=True):
        with Image.open(row["source_path"]) as im:
            small = (
                ImageOps.exif_transpose(im)
                .convert("RGB")
                .resize((standin.width, standin.height), Image.Resampling.BILINEAR)
            )
        info = engine.message(engine.run(np.asarray(small)))["base_infos"][0]
        # decoded fields keep the message's numbers; raw__ columns are float32 by the predictions contract
        assert (row["age_pred"], row["raw__boy_prob"]) == (info["age"], [np.float32(info["boy_prob"])])
