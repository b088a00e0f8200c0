"""replay on this machine: the local engine vs --ray (a Ray cluster on the same cores), side by side.

For the 128 px face model of replay_bench.py (MobileNetV2 alpha .35, Keras -> TFLite -> tf2onnx, on
200 px UTKFace-like JPEGs) and for the student of student_bench.py (random-init ResNet18 + DistilBERT-base,
int8, on 1080 px JPEGs with real Instagram captions), it runs ``replaybench.replay.runner.replay`` with
the local engine and with ``ray=ADDRESS``, in ABBA order (local, ray, ray, local: a load that drifts
during the run cancels out), and prints items/s and the ratio ray / local, two ways:

  end to end  items / the whole replay() call, as a user waits for it (for --ray: joining the cluster
              and starting the job's actors, ~3-4 s on 2 cores, included; the first job on a fresh
              cluster, which also starts Ray Data's own actors, is a warm-up run not counted);
  steady      items after the first chunk was written / the time from it to the last one.

The cluster is started here with ``ray start --head`` on all of this machine's CPUs (or give --address
of one already running); every --ray run is a new Ray job, as a CLI run is.

    python benchmarks/ray_bench.py                      # 8000 faces, 600 posts
    python benchmarks/ray_bench.py --faces 1000 --posts 0
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from replaybench.replay.runner import ReplayOptions, replay  # noqa: E402


class Clock:
    """A progress sink that notes when the first and the last chunk were written."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None
        self.last = 0.0
        self.done = 0

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.last = time.perf_counter()
        if self.first is None:
            self.first = (self.last, self.done)

    def close(self) -> None:
        pass


def timed(run: Callable[[Clock], int]) -> tuple[float, float]:
    """(end-to-end items/s, steady items/s) of one replay."""
    clock = Clock()
    t = time.perf_counter()
    n = run(clock)
    wall = time.perf_counter() - t
    assert clock.first is not None
    t_first, n_first = clock.first
    steady = (n - n_first) / (clock.last - t_first) if clock.last > t_first else float("nan")
    return n / wall, steady


def start_cluster(cpus: int, temp: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            *("start", "--head", "--block", "--num-cpus", str(cpus), "--num-gpus", "0"),
            *("--node-ip-address", "127.0.0.1", "--port", str(port), "--temp-dir", str(temp)),
            *("--include-dashboard", "false", "--disable-usage-stats"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.3)
    time.sleep(2)  # the raylet registers after the GCS answers
    return head, f"127.0.0.1:{port}"


def side_by_side(
    label: str, bundles: list[Path], dataset: Path, opts: dict, address: str, work: Path
) -> None:
    def run(ray: str | None) -> Callable[[Clock], int]:
        def go(clock: Clock) -> int:
            out = work / f"out-{label.split()[0]}-{'ray' if ray else 'local'}"
            shutil.rmtree(out, ignore_errors=True)
            res = replay(bundles, dataset, out, ReplayOptions(ray=ray, **opts), clock)  # type: ignore[arg-type]
            return res.items_processed

        return go

    # what a machine pays once is not throughput: the first Ray Data job on a cluster starts its system
    # actors (stats, autoscaling coordinator: ~5-8 s on 2 cores), and a process its first imports
    t = time.perf_counter()
    for engine in ("local", "ray"):
        out = work / f"warm-{engine}"
        shutil.rmtree(out, ignore_errors=True)
        ray = address if engine == "ray" else None
        replay(bundles, dataset, out, ReplayOptions(ray=ray, limit=64, **opts))  # type: ignore[arg-type]
    print(f"{'(warm-up: one small run of each)':34s} {time.perf_counter() - t:.1f} s", flush=True)
    figures: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
    for engine in ("local", "ray", "ray", "local"):
        figures[engine].append(timed(run(address if engine == "ray" else None)))
    mean = {k: tuple(sum(x) / len(x) for x in zip(*v, strict=True)) for k, v in figures.items()}
    (le, ls), (re, rs) = mean["local"], mean["ray"]
    print(
        f"{label:34s} {le:9.1f} {re:9.1f} {re / le:6.2f}   | {ls:9.1f} {rs:9.1f} {rs / ls:6.2f}   "
        f"(load {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=8000, help="faces per run (0: skip the face model)")
    ap.add_argument("--posts", type=int, default=600, help="posts per run (0: skip the student)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "replaybench-ray-bench")
    ap.add_argument("--address", default=None, help="a running Ray cluster (default: start one here)")
    args = ap.parse_args()
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the cluster started here listens on 127.0.0.1 only
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    head, temp = None, Path(tempfile.mkdtemp(prefix="rb-raybench-"))
    address = args.address
    if address is None:
        head, address = start_cluster(cpus, temp)
    try:
        print(f"cpus={cpus} load={os.getloadavg()[0]:.1f} cluster={address}")
        print(
            f"{'':34s} {'end to end items/s':>26s}   | {'steady items/s':>26s}\n"
            f"{'scenario':34s} {'local':>9s} {'ray':>9s} {'ratio':>6s}   | {'local':>9s} {'ray':>9s} {'ratio':>6s}"
        )
        if args.faces:
            import replay_bench as rb

            faces = rb.build_images(work / f"utk_{args.faces}", args.faces, 200, cpus)
            model = rb.build_model(work, 128, 0.35)
            bundle = rb.make_bundle(work / "bundle128", model, "mnv2_128", 128)
            side_by_side(
                f"128 face model, {args.faces} x 200px",
                [bundle],
                faces,
                {"format": "utkface"},
                address,
                work,
            )
        if args.posts:
            import json

            import student_bench as sb

            paths = sb.make_jpegs(work / "images", args.posts)
            captions, all_captions = sb.real_captions(args.posts)
            posts = work / "posts"
            posts.mkdir(exist_ok=True)
            with (posts / "posts.jsonl").open("w", encoding="utf-8") as fh:
                for i, (p, c) in enumerate(zip(paths, captions, strict=True)):
                    fh.write(json.dumps({"post_id": f"b{i:05d}", "image": str(p), "caption": c}) + "\n")
            bundle = sb.build_bundle(work, "distilbert-base", None, all_captions, posts)
            side_by_side(
                f"student int8, {args.posts} x 1080px",
                [bundle],
                posts,
                {"format": "posts", "variant": "int8", "allow_outside": True},
                address,
                work,
            )
    finally:
        if head is not None:
            os.killpg(head.pid, signal.SIGKILL)  # the cluster is its process group
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
