"""The agent as shipped: `replaybench agent` writes it, and (real Frida) its generic watch option and
its events-per-second cap work on a compiled program."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replaybench.cli import app
from replaybench.errors import TraceError
from replaybench.extract.capture import AgentConfig, CaptureTarget, agent_source, agent_version
from replaybench.extract.trace import StatsEvent, WatchEvent, read_trace
from tests.extract.trace_target import stop_when_exists

PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline, noipa)) int rb_secret(const char *label, int n) { return (int)strlen(label) + n; }
__attribute__((noinline, noipa)) int rb_spam(int i) { volatile int x = i; return x * 2; }
int main(int argc, char **argv) {
    int acc = 0;
    for (int i = 0; i < 5; i++) acc += rb_secret("hello-watch", 42);
    for (int i = 0; i < 3000; i++) acc += rb_spam(i);
    FILE *done = fopen(argv[1], "w");  /* tell the test we are done; it ends the capture */
    fprintf(done, "%d\n", acc);
    fclose(done);
    sleep(30);  /* stay alive: the capture kills us (exiting under live hooks is racy in frida) */
    return 0;
}
"""


def test_agent_command_writes_the_packaged_agent(tmp_path: Path) -> None:
    out = tmp_path / "agent.js"
    r = CliRunner().invoke(app, ["agent", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text() == agent_source()
    assert "Module.getExportByName(null" not in agent_source()  # removed in Frida 17
    assert agent_version() == "1.0.0"
    r = CliRunner().invoke(app, ["agent"])
    assert r.exit_code == 0 and "attachModuleObserver" in r.output


def test_config_is_prepended_as_js() -> None:
    js = AgentConfig(max_events_per_second=7, watch=["libc.so.6!open"]).to_js()
    assert js.startswith("const REPLAYBENCH_CONFIG = ") and '"maxEventsPerSecond": 7' in js


@pytest.fixture(scope="module")
def exe(tmp_path_factory) -> Path:
    """The test program, compiled once for the module (frida and gcc required)."""
    pytest.importorskip("frida", reason="frida is not installed (pip install 'replaybench[frida]')")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    folder = tmp_path_factory.mktemp("prog")
    src = folder / "prog.c"
    src.write_text(PROGRAM)
    out = folder / "prog"
    subprocess.run(["gcc", "-O0", "-rdynamic", "-o", str(out), str(src)], check=True)
    return out


@pytest.mark.frida
def test_watch_and_rate_cap_on_a_compiled_program(tmp_path: Path, exe: Path) -> None:
    from replaybench.extract.capture import capture

    config = AgentConfig(max_events_per_second=50, watch=["rb_secret", "prog!rb_spam"])
    done = tmp_path / "done"
    stop = stop_when_exists(done)
    try:
        result = capture(
            CaptureTarget(spawn=str(exe), spawn_args=[str(done)]),
            tmp_path / "trace",
            seconds=30,
            config=config,
            stop=stop,
        )
    except TraceError as e:
        if "cannot attach" in e.message:
            pytest.skip(f"frida cannot attach here (ptrace denied?): {e.message}")
        raise
    assert result.ended_by == "stopped"
    trace = read_trace(tmp_path / "trace")
    watches = trace.of_kind(WatchEvent)
    secret = [w for w in watches if w.target == "rb_secret" and w.phase == "enter"]
    assert len(secret) == 5
    assert secret[0].args[0]["string"] == "hello-watch" and int(secret[0].args[1]["value"], 16) == 42
    assert trace.read_dump(secret[0].dump).startswith(b"hello-watch")
    leave = [w for w in watches if w.target == "rb_secret" and w.phase == "leave"]
    assert int(leave[0].retval, 16) == len("hello-watch") + 42
    spam = [w for w in watches if w.target == "prog!rb_spam"]
    # 6000 spam events were offered in well under a second: the cap lets through ~50 per second.
    assert 0 < len(spam) < 50 * (result.seconds + 2)
    assert sum(s.dropped for s in trace.of_kind(StatsEvent)) > 0


def test_capture_without_frida_names_the_install_command(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "frida":
            raise ImportError("no frida")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(sys.modules, "frida", raising=False)
    from replaybench.errors import MissingDependencyError
    from replaybench.extract.capture import capture

    with pytest.raises(MissingDependencyError) as e:
        capture(CaptureTarget(pid=1), Path("unused"))
    assert "pip install 'replaybench[frida]'" in (e.value.hint or "")


@pytest.mark.parametrize("targets", [["--pid", "1", "--spawn", "x"], []], ids=["two", "none"])
def test_trace_command_needs_exactly_one_target(tmp_path: Path, targets: list[str], capsys) -> None:
    from replaybench.cli import main

    assert main(["trace", "-o", str(tmp_path / "t"), *targets]) == 2  # UsageError's documented code
    err = capsys.readouterr().err
    assert "error: give exactly one of --pid, --name or --spawn" in err.splitlines()
    assert "Traceback" not in err and not (tmp_path / "t").exists()


@pytest.mark.frida
def test_trace_command_records_and_reports_json(tmp_path: Path, exe: Path, capsys) -> None:
    from replaybench.cli import main

    out = tmp_path / "trace"
    argv = [
        "trace",
        "--spawn",
        str(exe),
        "-o",
        str(out),
        "--seconds",
        "1.5",
        "--watch",
        "rb_secret",
        "--json",
    ]
    code = main([*argv, "--", str(tmp_path / "done")])
    if code == 12 and "cannot attach" in capsys.readouterr().err:
        pytest.skip("frida cannot attach here (ptrace denied?)")
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ended_by"] == "timeout" and doc["by_kind"]["watch"] == 10 and doc["models_loaded"] == 0
    assert (tmp_path / "done").is_file()  # the program got its argument after --
    assert read_trace(out).summary.by_kind["watch"] == 10
