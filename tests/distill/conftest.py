from __future__ import annotations

from pathlib import Path

import pytest

from tests.distill.synthetic import build_student_and_bundle
from tests.fixtures.cache import cached_build


@pytest.fixture(scope="session")
def trained() -> Path:
    """Folder with posts/, labels.csv, student/ (tiny, random-init encoders) and bundle/ (fp32 + int8)."""
    return cached_build("distill-student", build_student_and_bundle)
