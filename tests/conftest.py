"""Shared pytest set-up. Real third-party material lives in ../shared/realdata (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REALDATA = Path(
    os.environ.get("REPLAYBENCH_REALDATA", Path(__file__).resolve().parents[1].parent / "shared" / "realdata")
)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The shared real-data folder; tests that use it skip with a reason where it is absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data not available at {REALDATA} (set REPLAYBENCH_REALDATA)")
    return REALDATA
