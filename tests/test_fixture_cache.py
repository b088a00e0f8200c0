"""The fixture cache key covers the library sources a fixture is built with, not only its builder's file."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

import tests.fixtures.cache as cache

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A tiny project: a builder that (inside its function) uses ``pkg.lib``, which uses ``pkg.deep``."""
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "lib.py").write_text(
        "def write(out):\n    from . import deep\n\n    (out / 'v').write_text(deep.VALUE)\n"
    )
    (root / "pkg" / "deep.py").write_text("VALUE = 'one'\n")
    (root / "pkg" / "unrelated.py").write_text("X = 1\n")
    (root / "builders.py").write_text(
        "from pathlib import Path\n\n\ndef build(out):\n    from pkg.lib import write\n\n    write(out)\n"
        "    with (Path(__file__).parent / 'builds.log').open('a') as f:\n        f.write('built\\n')\n"
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(cache, "ROOT", root)
    monkeypatch.setattr(cache, "CACHE", tmp_path / "cache")
    for name in ("pkg", "pkg.lib", "pkg.deep"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return root, _load(root / "builders.py", f"builders_{tmp_path.name}")


def test_a_fixture_is_rebuilt_when_a_library_file_it_runs_changes(project):
    root, builders = project

    def builds() -> int:
        return len((root / "builds.log").read_text().splitlines())

    first = cache.cached_build("thing", builders.build)
    assert (first / "v").read_text() == "one"
    assert cache.cached_build("thing", builders.build) == first and builds() == 1  # built once

    (root / "pkg" / "unrelated.py").write_text("X = 2\n")
    assert cache.cached_build("thing", builders.build) == first and builds() == 1  # not used by the build

    (root / "pkg" / "deep.py").write_text("VALUE = 'changed'\n")  # reached only via lib.py's local import
    second = cache.cached_build("thing", builders.build)
    assert second != first and builds() == 2


def test_trained_student_key_changes_with_replaybench_distill(tmp_path):
    """The real case from issue 13: the distill-student fixture vs an edit to replaybench/distill/."""
    root = tmp_path / "repo"

    def not_python(folder: str, names: list[str]) -> set[str]:
        """Copy only the Python sources (the sample APK and trace dumps are not needed for the key)."""
        return {
            n for n in names if n == "__pycache__" or not (n.endswith(".py") or (Path(folder) / n).is_dir())
        }

    shutil.copytree(ROOT / "replaybench", root / "replaybench", ignore=not_python)
    (root / "tests" / "distill").mkdir(parents=True)
    for rel in ("tests/__init__.py", "tests/distill/__init__.py", "tests/distill/synthetic.py"):
        if (ROOT / rel).exists():
            shutil.copyfile(ROOT / rel, root / rel)
    synthetic = _load(root / "tests" / "distill" / "synthetic.py", f"synthetic_{tmp_path.name}")
    builder = synthetic.build_student_and_bundle
    sources = {str(p.relative_to(root)) for p in cache.fixture_sources(builder, root=root)}
    assert {"replaybench/distill/train.py", "replaybench/distill/student.py"} <= sources

    before = cache.fixture_key(builder, {}, root=root)
    train = root / "replaybench" / "distill" / "train.py"
    train.write_text(train.read_text() + "\n# an edit\n")
    assert cache.fixture_key(builder, {}, root=root) != before
