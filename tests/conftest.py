"""Shared pytest set-up. Real third-party material lives in ../shared/realdata (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _find_realdata() -> Path:
    """``$REPLAYBENCH_REALDATA``, else the nearest ``shared/realdata`` beside the repository or above it."""
    if "REPLAYBENCH_REALDATA" in os.environ:
        return Path(os.environ["REPLAYBENCH_REALDATA"])
    root = Path(__file__).resolve().parents[1]
    for parent in root.parents:
        if (parent / "shared" / "realdata").is_dir():
            return parent / "shared" / "realdata"
    return root.parent / "shared" / "realdata"


REALDATA = _find_realdata()


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The shared real-data folder; tests that use it skip with a reason where it is absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data not available at {REALDATA} (set REPLAYBENCH_REALDATA)")
    return REALDATA
