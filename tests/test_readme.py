"""The README cannot rot: every `$ replaybench ...` line of its ```console blocks runs here, in order.

The working folder holds stand-ins for what the README assumes a researcher has: the sample app as
`app.apk` with its trace as `trace/`, a UTKFace-style folder of generated faces, generated posts and a
teacher-label CSV. Commands that need a phone or a teacher server are in ```text blocks and are not run.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replaybench.demo.pipeline import SAMPLE
from replaybench.demo.synthetic import GENDERS, render_face, teacher_labels, write_posts

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    return [line[2:].strip() for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def _utkface(folder: Path, n: int = 40) -> None:
    rng = np.random.default_rng(3)
    folder.mkdir()
    for i in range(n):
        gender = i % 2
        race = int(rng.integers(0, 5))
        age = int(rng.integers(1, 80))
        tone = "dark" if race in (1, 3) else "light"
        img = render_face(rng, tone, GENDERS[gender], size=200)
        Image.fromarray(img).save(folder / f"{age}_{gender}_{race}_20170117{i:06d}.jpg.chip.jpg")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("readme")
    shutil.copyfile(SAMPLE / "sample.apk", wd / "app.apk")
    shutil.copytree(SAMPLE / "trace", wd / "trace")
    shutil.copytree(ROOT / "examples", wd / "examples")
    _utkface(wd / "UTKFace")
    # an NCNN model for the README's native-runtime lines: a global max pool (no weights, so an empty .bin)
    (wd / "face.param").write_text(
        "7767517\n2 2\nInput input 0 1 input\nPooling pool 1 1 input output 0=0 4=1\n"
    )
    (wd / "face.bin").write_bytes(b"")
    posts = write_posts(wd / "posts", 24)
    with (wd / "teacher.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["post_id", "score"])
        w.writeheader()
        w.writerows(teacher_labels(posts))
    return wd


def test_readme_has_commands():
    cmds = readme_commands()
    assert len(cmds) >= 10 and all(c.startswith("replaybench ") for c in cmds)


def test_readme_commands_run(workdir):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for cmd in readme_commands():
        shell = cmd.replace("replaybench ", f"{sys.executable} -m replaybench ", 1)
        proc = subprocess.run(
            shell, shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"README command failed: {cmd}\n{proc.stderr[-3000:]}"
    assert (workdir / "report" / "index.html").is_file()
    assert (workdir / "scores").is_dir()
