"""The replay rate is honest: ``items_per_second`` is items over the same ``seconds`` the result reports
(set-up included), and the rate after set-up is reported beside it under its own name."""

from __future__ import annotations

import re
import time

import pytest

from replaybench.cli import main
from replaybench.replay.runner import ReplayOptions, replay
from tests.replay.helpers import tiny_bundle, utk_images


def test_items_per_second_counts_the_set_up_time_that_seconds_includes(tmp_path):
    ds = tmp_path / "ds"
    utk_images(ds, 24)
    b = tiny_bundle(tmp_path / "b")
    t = time.perf_counter()
    res = replay([b], ds, tmp_path / "p", ReplayOptions(workers=2, batch_size=4))
    wall = time.perf_counter() - t
    assert res.items_processed == 24
    # ``seconds`` is the call as the caller waits for it (our stopwatch around it is the reference)
    assert 0.9 * wall <= res.seconds <= wall
    assert 0 < res.setup_seconds < res.seconds
    # the headline rate is items over that same ``seconds``
    assert res.items_per_second == pytest.approx(24 / res.seconds, rel=0.01)
    assert res.items_per_second == pytest.approx(24 / wall, rel=0.12)
    # the rate after set-up: items over what is left once set-up is taken away
    assert res.steady_items_per_second == pytest.approx(24 / (res.seconds - res.setup_seconds), rel=0.02)
    assert res.steady_items_per_second > res.items_per_second


def test_cli_prints_both_rates_with_the_set_up_time(tmp_path, capsys):
    ds = tmp_path / "ds"
    utk_images(ds, 6)
    b = tiny_bundle(tmp_path / "b")
    assert main(["replay", str(b), str(ds), "-o", str(tmp_path / "p"), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    m = re.search(
        r"([\d,.]+) items/s overall \(([\d.]+) s, of which ([\d.]+) s set-up\); ([\d,.]+) items/s after set-up",
        out,
    )
    assert m, out
    overall, seconds, setup, steady = (float(g.replace(",", "")) for g in m.groups())
    assert setup <= seconds and steady >= overall > 0
