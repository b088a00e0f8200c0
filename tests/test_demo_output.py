"""``demo -o DIR`` never deletes what replaybench did not write (it used to ``rmtree`` DIR)."""

from __future__ import annotations

import pytest

from replaybench.cli import main
from replaybench.demo.pipeline import DEMO_ENTRIES, MARKER, prepare_demo_output
from replaybench.errors import UsageError


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_demo_refuses_a_non_empty_folder_that_is_not_a_demo_output(tmp_path, capsys):
    out = tmp_path / "work"
    (out / "src").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "src" / "main.py").write_text("print(1)")
    before = _tree(out)
    assert main(["demo", "-o", str(out)]) == UsageError.exit_code
    assert "not a previous demo output" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "src" / "main.py").read_text() == "print(1)"
    assert _tree(out) == before  # nothing written either: no marker, no artefacts


def test_demo_refuses_the_working_folder(tmp_path, monkeypatch):
    """``-o .`` in a project folder used to wipe it."""
    (tmp_path / "keep.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "-o", "."]) == UsageError.exit_code
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_demo_refuses_a_file(tmp_path):
    f = tmp_path / "out"
    f.write_text("data")
    assert main(["demo", "-o", str(f)]) == UsageError.exit_code
    assert f.read_text() == "data"


def test_missing_or_empty_folder_is_used_and_marked(tmp_path):
    for out in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        prepare_demo_output(out)
        assert (out / MARKER).is_file()


def test_previous_demo_output_is_reused_and_only_demo_artefacts_are_replaced(tmp_path):
    out = tmp_path / "demo-out"
    prepare_demo_output(out)
    for name in DEMO_ENTRIES:
        if "." in name:
            (out / name).write_text("old")
        else:
            (out / name).mkdir()
            (out / name / "old.bin").write_bytes(b"old")
    (out / "my-analysis.ipynb").write_text("user file next to the demo artefacts")
    # a link among the demo's names is unlinked, never followed into the user's folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    (out / "report").rename(out / "report.old")
    (out / "report").symlink_to(elsewhere, target_is_directory=True)

    prepare_demo_output(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "my-analysis.ipynb", "report.old"])
    assert (elsewhere / "precious.txt").read_text() == "keep"


def test_a_marker_that_is_a_link_or_folder_does_not_count(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "data.csv").write_text("a,b")
    (out / MARKER).mkdir()
    with pytest.raises(UsageError):
        prepare_demo_output(out)
    (out / MARKER).rmdir()
    (tmp_path / "m").write_text("")
    (out / MARKER).symlink_to(tmp_path / "m")
    with pytest.raises(UsageError):
        prepare_demo_output(out)
    assert (out / "data.csv").read_text() == "a,b"
