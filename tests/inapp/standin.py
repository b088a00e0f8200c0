"""Build the stand-in app (tests/inapp/standin.c) and its weight file, once, in the fixture cache.

``build_standin()`` returns a ``Standin``: the stripped program, the offset of its unexported run
function (read with ``nm`` from the unstripped build before stripping), and a shared-library build of the
same source that ``StandinEngine`` calls through ctypes: the engine's outputs, directly.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.fixtures.cache import cached_build

SOURCE = Path(__file__).with_name("standin.c")
VERSION = "1.4.2"
CFLAGS = ["-O2", "-std=gnu11", "-fno-fast-math", "-Wall"]
FORMAT_RGB888 = 1
FORMAT_RGBA8888 = 2


def content_sum(pixels: bytes) -> int:
    """The stand-in's hash of an input (``content_sum`` in standin.c): its crash/hang knobs pick an item
    by this, as a bug that one image triggers would."""
    s = 0
    for b in pixels:
        s = (s * 31 + b) & 0xFFFFFFFF
    return s


def write_weights(path: Path, width: int, height: int, c1: int = 8, c2: int = 16, seed: int = 14) -> None:
    """An SIE1 weight file (the stand-in's own format): two 3x3 stride-2 convolutions, a dense layer of
    three outputs (age, male logit, female logit), He-scaled random weights from ``seed``."""
    rng = np.random.default_rng(seed)
    n_out = 3
    parts = [
        rng.normal(0, np.sqrt(2 / 27), (c1, 3, 3, 3)),
        rng.normal(0, 0.1, c1),
        rng.normal(0, np.sqrt(2 / (9 * c1)), (c2, c1, 3, 3)),
        rng.normal(0, 0.1, c2),
        rng.normal(0, 1.0, (n_out, c2)),
        rng.normal(0, 0.1, n_out),
    ]
    blob = b"SIE1" + struct.pack("<5I", width, height, c1, c2, n_out)
    blob += b"".join(np.asarray(p, "<f4").tobytes() for p in parts)
    path.write_bytes(blob)


def _build(folder: Path, width: int, height: int, source_sha256: str) -> None:
    del source_sha256  # only keys the cache: an edit of standin.c rebuilds
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the stand-in app (apt-get install gcc)")
    full = folder / "standin.full"
    subprocess.run(
        [
            gcc,
            *CFLAGS,
            "-fPIE",
            "-pie",
            "-rdynamic",
            f'-DSTANDIN_VERSION="{VERSION}"',
            "-o",
            full,
            SOURCE,
            "-lm",
            "-lpthread",
        ],
        check=True,
    )
    symbols = subprocess.run(["nm", full], check=True, capture_output=True, text=True).stdout
    (offset,) = [int(line.split()[0], 16) for line in symbols.splitlines() if line.endswith(" run_internal")]
    program = folder / "standin"
    subprocess.run(["strip", "-o", program, full], check=True)
    full.unlink()
    subprocess.run(
        [
            gcc,
            *CFLAGS,
            "-fPIC",
            "-shared",
            "-DSTANDIN_LIBRARY",
            "-o",
            folder / "libstandin.so",
            SOURCE,
            "-lm",
            "-lpthread",
        ],
        check=True,
    )
    write_weights(folder / "weights.sie", width, height)
    (folder / "build.json").write_text(json.dumps({"run_internal": offset}), encoding="utf-8")


@dataclass(frozen=True)
class Standin:
    program: Path
    library: Path
    weights: Path
    run_internal_offset: int
    width: int
    height: int


def build_standin(width: int = 64, height: int = 64) -> Standin:
    """The stand-in app for a ``width`` x ``height`` engine input (built once per size)."""
    source = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    folder = cached_build("inapp-standin", _build, width=width, height=height, source_sha256=source)
    info = json.loads((folder / "build.json").read_text(encoding="utf-8"))
    return Standin(
        program=folder / "standin",
        library=folder / "libstandin.so",
        weights=folder / "weights.sie",
        run_internal_offset=int(info["run_internal"]),
        width=width,
        height=height,
    )


class StandinEngine:
    """The stand-in's engine loaded in this process (ctypes): the reference the replayed values must equal."""

    def __init__(self, standin: Standin) -> None:
        self.lib = ctypes.CDLL(str(standin.library))
        self.lib.standin_load.argtypes = [ctypes.c_char_p]
        self.lib.standin_engine.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self.lib.standin_format_message.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        if self.lib.standin_load(str(standin.weights).encode()) != 0:
            raise RuntimeError(f"the stand-in engine cannot load {standin.weights}")
        self.n_out = int(self.lib.standin_outputs())

    def run(self, pixels: np.ndarray, fmt: int = FORMAT_RGB888) -> np.ndarray:
        """The engine's float32 outputs for an (H, W, 3 or 4) uint8 image."""
        px = np.ascontiguousarray(pixels, np.uint8)
        out = np.zeros(self.n_out, np.float32)
        rc = self.lib.standin_engine(px.ctypes.data, px.shape[1], px.shape[0], fmt, out.ctypes.data)
        if rc != 0:
            raise RuntimeError(f"standin_engine returned {rc}")
        return out

    def message(self, out: np.ndarray) -> dict[str, object]:
        """The JSON message the app posts for these outputs."""
        buf = ctypes.create_string_buffer(512)
        self.lib.standin_format_message(np.ascontiguousarray(out, np.float32).ctypes.data, buf, 512)
        return json.loads(buf.value.decode())
