"""In-app replay throughput against the same engine called directly, side by side in one run.

The app is the stand-in of tests/inapp (a native program with its own engine and weight format) with a
128x128 input: two 3x3 stride-2 convolutions and a dense layer, a few ms per image on one core. Measured:

  (a) direct: the engine called in this process (ctypes) on items already decoded and packed;
  (b) agent transport: the same packed items posted to the app through the Frida agent (native export
      feed, output tensor read), a bounded number in flight, results back: the channel and the agent;
  (c) end to end: ``replay_in_app`` (decode + resize + pack on the host, agent, decoders, Parquet parts),
      timed around the whole call (the app's spawn included);
  (d) end to end with frame substitution: the app's own camera loop takes the items (bounded by its
      frame interval, 2 ms here, as an app is by its camera).

and prints b / a and c / a (the goal: the channel and host are not the bottleneck, >= 0.5).

    python benchmarks/inapp_bench.py                # 600 synthetic 200x200 faces
    python benchmarks/inapp_bench.py --items 200    # a quick look
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replaybench.replay.hooks import parse_manifest  # noqa: E402
from replaybench.replay.inapp import (  # noqa: E402
    AppLink,
    InAppOptions,
    InAppTarget,
    pack_image,
    replay_in_app,
)
from tests.inapp.manifests import manifest  # noqa: E402
from tests.inapp.standin import StandinEngine, build_standin  # noqa: E402

SIZE = 128


def _faces(folder: Path, n: int) -> None:
    """UTKFace-named 200x200 JPEGs: smooth gradients plus noise (JPEG sizes like real face chips)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:200, 0:200]
    for i in range(n):
        base = (np.stack([xx, yy, xx + yy], -1) * rng.uniform(0.3, 0.6, 3) + rng.uniform(0, 80, 3)) % 256
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(
            folder / f"{20 + i % 60}_{i % 2}_{i % 5}_2017010{i:08d}.jpg.chip.jpg", quality=90
        )


def _packed(folder: Path, spec: object) -> list[tuple[bytes, int, int]]:
    from replaybench.replay.decode import decode_image

    return [pack_image(decode_image(p), spec) for p in sorted(folder.glob("*.jpg"))]  # type: ignore[arg-type]


def direct_rate(engine: StandinEngine, packed: list[tuple[bytes, int, int]], repeats: int = 3) -> float:
    """The best of ``repeats`` passes (the machine is shared: the best pass is the least disturbed)."""
    arrays = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b, w, h in packed]
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for a in arrays:
            engine.run(a)
        best = max(best, len(arrays) / (time.perf_counter() - t))
    return best


def _target(standin: object, camera: bool) -> InAppTarget:
    # Native feeds run with the app's camera loop off, so the engine does the items' work only, as in (a).
    env = {} if camera else {"STANDIN_CAMERA": "0"}
    return InAppTarget(spawn=str(standin.program), spawn_args=[str(standin.weights)], env=env)  # type: ignore[attr-defined]


def transport_rate(
    standin: object, doc: dict, packed: list[tuple[bytes, int, int]], in_flight: int = 8
) -> float:
    events: queue.Queue = queue.Queue()
    target = _target(standin, camera=False)
    link = AppLink(target, parse_manifest(doc), events)
    info = link.start(1)
    assert not info["missing"], info
    sent = done = 0
    t = time.perf_counter()
    try:
        while done < len(packed):
            while sent < len(packed) and sent - done < in_flight:
                b, w, h = packed[sent]
                sent += 1
                link.post(sent, w, h, b)
            ev = events.get(timeout=30)
            if ev[0] == "result":
                assert "error" not in ev[2], ev[2]
                done += 1
        return len(packed) / (time.perf_counter() - t)
    finally:
        link.close(kill=True)


def end_to_end_rate(standin: object, doc: dict, faces: Path, work: Path, n: int) -> float:
    hooks = work / f"{doc['name']}.json"
    hooks.write_text(json.dumps(doc), encoding="utf-8")
    out = work / f"preds-{doc['name']}"
    shutil.rmtree(out, ignore_errors=True)
    target = _target(standin, camera=doc["feed"]["kind"] == "frame_substitution")
    t = time.perf_counter()
    r = replay_in_app(hooks, faces, out, target, InAppOptions(format="utkface"))
    rate = n / (time.perf_counter() - t)
    assert r.items_ok == n, r
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a) and (b)")
    args = ap.parse_args()
    standin = build_standin(SIZE, SIZE)
    engine = StandinEngine(standin)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        faces = work / "faces"
        _faces(faces, args.items)
        native = manifest(standin, "native_export")
        frames = manifest(standin, "frame_substitution")
        packed = _packed(faces, parse_manifest(native).input)
        # (a) and (b) alternate, best of each: the shared machine's load swings by 2x within seconds
        rounds = []
        for _ in range(args.rounds):
            rounds.append((direct_rate(engine, packed, repeats=1), transport_rate(standin, native, packed)))
        a, b = max(r[0] for r in rounds), max(r[1] for r in rounds)
        c = end_to_end_rate(standin, native, faces, work, args.items)
        d = end_to_end_rate(standin, frames, faces, work, args.items)
    print(
        f"in-app replay, {args.items} items, {SIZE}x{SIZE} stand-in engine (a, b: best of {args.rounds} alternating rounds)"
    )
    print("  rounds (a, b): " + ", ".join(f"({x:.0f}, {y:.0f})" for x, y in rounds))
    print(f"  (a) engine called directly        {a:8.1f} items/s")
    print(f"  (b) through the agent (packed)    {b:8.1f} items/s   b/a = {b / a:.2f}")
    print(f"  (c) replay-app end to end         {c:8.1f} items/s   c/a = {c / a:.2f}")
    print(f"  (d) end to end, frame substitution{d:8.1f} items/s   d/a = {d / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
