"""Third-party chatter stays off the terminal unless -vv (issue 13).

Measured before the fix on ``make demo``: TensorFlow/absl start-up lines, LiteRT's XNNPACK line,
transformers' "Loading weights" / "Writing model shards" bars and onnxruntime's quantisation advice all
reached stderr. The CLI runs here as users run it (``python -m replaybench`` in a child process), because
the native lines are written to file descriptor 2 and pytest's own logging set-up would hide the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from replaybench._console import QUIET_THIRD_PARTY_ENV
from replaybench._stderr import is_chatter
from replaybench.demo.pipeline import SAMPLE
from tests.distill.synthetic import build_student_and_bundle
from tests.fixtures.cache import cached_build

ROOT = Path(__file__).resolve().parents[1]
# the face model the sample app decrypts and runs (a TFLite file): its conversion imports TensorFlow
# and builds LiteRT interpreters
SAMPLE_TFLITE = (
    SAMPLE / "trace" / "dumps" / "562460d87b603ca251e9db2406d9da39a0db6cf52dc26c25362e8c751e2de6a5"
)

TF_CHATTER = [
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "Created TensorFlow Lite XNNPACK delegate",
    "tf.lite.Interpreter is deprecated",  # a Python warning, from tf2onnx in the conversion child
]
EXPORT_CHATTER = ["Loading weights", "Please consider to run pre-processing before quantization"]


def _env() -> dict[str, str]:
    # an in-process CLI call of another test may have set the quiet switches in this process's environment
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in QUIET_THIRD_PARTY_ENV and not k.startswith(("TF_CPP_", "HF_HUB_", "TRANSFORMERS_"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "replaybench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """convert and distill export, each quiet and with -vv (started together: they take a while)."""
    tmp = tmp_path_factory.mktemp("chatter")
    student = cached_build("distill-student", build_student_and_bundle) / "student"
    procs = {
        "convert": _start("convert", str(SAMPLE_TFLITE), "-o", str(tmp / "c0")),
        "convert -vv": _start("-vv", "convert", str(SAMPLE_TFLITE), "-o", str(tmp / "c2")),
        "export": _start("distill", "export", str(student), "-o", str(tmp / "e0")),
        "export -vv": _start("-vv", "distill", "export", str(student), "-o", str(tmp / "e2")),
    }
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=1200)
        out[name] = (p.returncode, stdout, stderr)
    return out


@pytest.mark.slow
def test_convert_is_quiet_by_default_and_shows_tensorflow_lines_with_vv(runs):
    rc, stdout, stderr = runs["convert"]
    assert rc == 0, stderr
    assert "parity vs ai-edge-litert" in stdout  # the command did its work (and imported TensorFlow)
    assert not [s for s in TF_CHATTER if s in stderr], stderr
    rc, _, loud = runs["convert -vv"]
    assert rc == 0, loud
    assert all(s in loud for s in TF_CHATTER), loud


@pytest.mark.slow
def test_export_is_quiet_by_default_and_shows_bars_and_onnxruntime_advice_with_vv(runs):
    rc, _, stderr = runs["export"]
    assert rc == 0, stderr
    assert not [s for s in EXPORT_CHATTER if s in stderr], stderr
    assert "WARNING root" not in stderr and "WARNING:root" not in stderr
    rc, _, loud = runs["export -vv"]
    assert rc == 0, loud
    assert all(s in loud for s in EXPORT_CHATTER), loud


def test_the_fd2_filter_drops_start_up_chatter_and_passes_errors_and_children(tmp_path):
    """Native writes and a child process's stderr go through the filter; Python's stderr does not."""
    script = textwrap.dedent(
        """
        import os, subprocess, sys
        from replaybench._stderr import filter_native_stderr
        filter_native_stderr(lambda: len(sys.argv) > 1)
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"I0000 00:00:1796165755.527335   19840 port.cc:153] oneDNN custom operations are on.\\n")
        os.write(2, b"INFO: ")  # LiteRT writes a line in pieces
        os.write(2, b"Created TensorFlow Lite XNNPACK delegate for CPU.")
        os.write(2, b"\\n")
        os.write(2, b"E0000 00:00:1796165755.527335   19840 model.cc:9] a real error\\n")
        os.write(2, b"ERROR: tensor too large\\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child traceback\\\\n')"])
        sys.stderr.write("python level\\n")
        """
    )
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, env=_env(), timeout=60)
    assert quiet.returncode == 0, quiet.stderr
    err = quiet.stderr.decode()
    assert "absl::InitializeLog" not in err and "oneDNN" not in err and "XNNPACK" not in err, err
    for kept in ("a real error", "ERROR: tensor too large", "child traceback", "python level"):
        assert kept in err, err
    loud = subprocess.run([sys.executable, "-c", script, "loud"], capture_output=True, env=_env(), timeout=60)
    err = loud.stderr.decode()
    assert "absl::InitializeLog" in err and "oneDNN" in err and "XNNPACK delegate for CPU.\n" in err, err


@pytest.mark.parametrize(
    ("line", "chatter"),
    [
        (b"I0000 00:00:1796165755.527335   19840 port.cc:153] oneDNN custom operations are on.", True),
        (b"W0000 00:00:1796165755.527335   19840 cpu_feature_guard.cc:227] x", True),
        (b"2026-12-01 10:00:00.123456: I tensorflow/core/platform/cpu_feature_guard.cc:182] x", True),
        (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", True),
        (b"E0000 00:00:1796165755.527335   19840 port.cc:153] failed", False),
        (b"F0000 00:00:1796165755.527335   19840 port.cc:153] check failed", False),
        (b"ERROR: Didn't find op for builtin opcode", False),
        (b"INFO: something replaybench itself would want shown", False),
        (b"Segmentation fault (core dumped)", False),
        (b'  File "x.py", line 1, in <module>', False),
    ],
)
def test_only_known_info_and_warning_lines_count_as_chatter(line, chatter):
    assert is_chatter(line) is chatter
