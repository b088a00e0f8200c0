"""Print how many inputs each fuzz target tried (results and typed errors) at the end of the run."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.fuzz.harness import TRIED

    if not TRIED:
        return
    terminalreporter.section("fuzz inputs tried (results / replaybench typed errors)")
    for target, (ok, typed) in sorted(TRIED.items()):
        terminalreporter.write_line(f"{target:28s} {ok + typed:8d}  ({ok} / {typed})")
