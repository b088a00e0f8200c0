"""The CLI surface: every command documented with an example, errors mapped to exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from replaybench import __version__
from replaybench.cli import app, main
from replaybench.errors import ALL_ERRORS


def _walk(cmd, path: tuple[str, ...] = ()):
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(typer.main.get_command(app)))
DESIGN_COMMANDS = {
    "scan",
    "extract",
    "convert",
    "agent",
    "trace",
    "inspect",
    "replay",
    "evaluate",
    "distill",
    "demo",
}


def test_all_design_commands_registered():
    top = {p[0] for p, _ in COMMANDS if len(p) == 1}
    assert DESIGN_COMMANDS | {"doctor"} <= top
    assert {p[1] for p, _ in COMMANDS if len(p) == 2 and p[0] == "distill"} == {
        "label",
        "train",
        "score",
        "export",
    }


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "root" for p, _ in COMMANDS])
def test_every_command_help_has_example(path, cmd, capsys):
    assert "Example:" in (cmd.help or ""), f"'replaybench {' '.join(path)}' help has no Example:"
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Example:" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"replaybench {__version__}"


def test_unknown_option_is_usage_error(capsys):
    assert main(["scan", "--no-such-flag", "x.apk"]) == 2


def test_exit_codes_are_distinct():
    codes = [e.exit_code for e in ALL_ERRORS]
    assert len(codes) == len(set(codes))
    assert 0 not in codes


def test_doctor_json(capsys):
    import json

    assert main(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    names = {c["name"] for c in doc["checks"]}
    assert any("onnxruntime" in n for n in names)
    assert any("frida" in n for n in names)
    assert all({"ok", "detail"} <= set(c) for c in doc["checks"])


def test_help_starts_without_heavy_imports():
    """`replaybench --help` must not import torch/tensorflow/tf2onnx/androguard/lief/frida/onnxruntime."""
    code = (
        "import sys\n"
        "from replaybench.cli import main\n"
        "rc = main(['--help'])\n"
        "heavy = [m for m in ('torch','tensorflow','tf2onnx','androguard','lief','frida','onnxruntime','polars')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_doctor_says_how_to_install_what_is_missing(monkeypatch, capsys):
    import importlib.util

    from replaybench import doctor

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(doctor.shutil, "which", lambda tool: None)
    monkeypatch.setattr(
        doctor.importlib.util, "find_spec", lambda m: None if m == "frida" else real_find_spec(m)
    )
    checks = {c.name: c for c in doctor.check_environment().checks}
    frida = checks["frida (trace capture)"]
    assert not frida.ok and frida.optional and frida.install == "pip install 'replaybench[frida]'"
    smali = checks["smali (test APKs)"]
    assert not smali.ok and smali.install == "apt-get install -y smali"
    assert checks["tf2onnx"].ok
    assert main(["doctor"]) == 0
    assert "pip install 'replaybench[frida]'" in capsys.readouterr().out  # the extra is text, not markup
