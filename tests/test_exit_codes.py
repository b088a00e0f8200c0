"""Exit codes: errors.py, its docstring table and the README table say the same thing; 10 is retired."""

from __future__ import annotations

import re
from pathlib import Path

import replaybench.errors as errors
from replaybench.errors import ALL_ERRORS, ReplaybenchError

ROOT = Path(__file__).resolve().parents[1]


def _readme_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (.+?) \|$", section, flags=re.M)}


def _docstring_codes() -> dict[int, str]:
    doc = errors.__doc__ or ""
    return {int(m[1]): m[2] for m in re.finditer(r"^(\d+)\s+(\S+)", doc, flags=re.M)}


def test_every_error_class_is_listed_with_its_code():
    classes = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, ReplaybenchError)}
    assert classes == set(ALL_ERRORS)
    doc = _docstring_codes()
    readme = _readme_codes()
    for cls in ALL_ERRORS:
        assert doc[cls.exit_code] == cls.__name__
        assert cls.exit_code in readme
    assert set(doc) == set(readme) == {0} | {c.exit_code for c in ALL_ERRORS} | {10}


def test_code_10_is_retired_not_reused():
    assert not hasattr(errors, "NotAvailableYetError")
    assert 10 not in {c.exit_code for c in ALL_ERRORS}
    assert "retired" in _readme_codes()[10]
    assert _docstring_codes()[10] == "(retired)"
    # the codes around it kept their numbers (scripts that test for them keep working)
    assert (errors.MissingDependencyError.exit_code, errors.DatasetError.exit_code) == (9, 11)
