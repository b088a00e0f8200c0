"""Scan throughput next to ``sha256sum`` of the same files, in one run; peak memory of the scan.

    PYTHONPATH=. python benchmarks/scan_bench.py [--size-mb 300] [--keep DIR]

Builds a split-APK set of about ``--size-mb`` MB in a temp folder: base.apk with thousands of small
entries (resources, text, compressed assets), a config split with several large native libraries
(real ELF files from gcc, each with a big .rodata table and an embedded TFLite model) and an asset
split with models and a large encrypted blob. Then, with a warm page cache for both:

* ``sha256sum`` over the files (the floor: read every byte once, hash it);
* ``replaybench scan --no-code --json`` in a child process (wall time and peak RSS from the kernel);
* the DEX code analysis, timed separately on a real APK when ../shared/realdata is present.

Prints MB/s for both and the ratio (goal: scan >= 0.5x sha256sum; peak RSS < 1 GB).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_set(folder: Path, size_mb: int) -> list[Path]:
    """The split-APK set; returns its files."""
    import numpy as np

    from tests.fixtures.apk import build_apk
    from tests.fixtures.elf import build_so
    from tests.fixtures.models import tflite_models

    rng = np.random.default_rng(0)
    tfl = tflite_models()["float"].read_bytes()
    manifest = zipfile.ZipFile(build_apk(folder / "_ref.apk")).read("AndroidManifest.xml")
    (folder / "_ref.apk").unlink()
    n_libs = 4
    lib_mb = max(1, int(size_mb * 0.6 / n_libs))
    libs = []
    for i in range(n_libs):
        # A native library whose .rodata is mostly a big constant table (weights, LUTs) with a model in it.
        table = rng.integers(0, 256, lib_mb << 20, dtype=np.uint8).tobytes()
        blob = table[: len(table) // 2] + tfl + table[len(table) // 2 :]
        libs.append(
            build_so(folder / f"_lib{i}.so", arch="aarch64", blob=blob,
                     symbols=["TfLiteInterpreterCreate"] if i == 0 else [f"engine_{i}_run"],
                     strings=["convolution", "softmax", "tensor"])
        )  # fmt: skip
    base = folder / "base.apk"
    with zipfile.ZipFile(base, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("AndroidManifest.xml", manifest)
        for i in range(3000):  # many small entries: layouts, strings, icons
            z.writestr(f"res/layout/l{i}.xml", (f"<LinearLayout id='{i}'/>" * 40).encode())
        for i in range(500):
            z.writestr(f"res/drawable/i{i}.png", b"\x89PNG\r\n\x1a\n" + rng.bytes(8000), zipfile.ZIP_STORED)
        z.writestr("assets/big_text.json", ("{'k': 'value'}\n" * (size_mb * 3000)).encode())
    split_lib = folder / "split_config.arm64_v8a.apk"
    with zipfile.ZipFile(split_lib, "w", zipfile.ZIP_STORED) as z:
        z.writestr("AndroidManifest.xml", manifest)
        for i, lib in enumerate(libs):
            z.write(lib, f"lib/arm64-v8a/libengine{i}.so")
            lib.unlink()
    split_ml = folder / "split_df_ml.apk"
    with zipfile.ZipFile(split_ml, "w", zipfile.ZIP_STORED) as z:
        z.writestr("AndroidManifest.xml", manifest)
        for mode, p in tflite_models().items():
            z.write(p, f"assets/models/{mode}.tflite")
        z.writestr("assets/models/face.enc", rng.bytes(int(size_mb * 0.25) << 20))
        for i in range(200):
            z.writestr(f"assets/sfx/s{i}.ogg", b"OggS" + rng.bytes(20000))
    return [base, split_lib, split_ml]


def tiny_app(folder: Path) -> Path:
    """A one-entry-of-each-kind split set (manifest, tiny .so, tiny model): the scan's fixed cost."""
    from tests.fixtures.apk import build_apk
    from tests.fixtures.elf import build_so
    from tests.fixtures.models import tflite_models

    folder.mkdir(parents=True, exist_ok=True)
    so = build_so(folder / "_t.so", arch="aarch64", symbols=["TfLiteInterpreterCreate"])
    build_apk(folder / "base.apk", assets={"m.tflite": tflite_models()["float"].read_bytes()},
              native_libs={"arm64-v8a/libt.so": so})  # fmt: skip
    so.unlink()
    return folder


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds and peak RSS (bytes) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) * 1024, proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--keep", type=Path, help="build the set here and keep it")
    ap.add_argument("--repeat", type=int, default=2, help="best of N for each timing")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="scanbench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    files = build_set(tmp, args.size_mb)
    total = sum(f.stat().st_size for f in files)
    mb = total / 1e6
    sha = min(timed(["sha256sum", *map(str, files)], env)[0] for _ in range(args.repeat + 1))
    # A stricter floor than coreutils (whose sha256 may lack SHA-NI): OpenSSL via hashlib, 1 MiB reads.
    hashlib_cmd = [
        sys.executable, "-c",
        "import hashlib,sys\nfor p in sys.argv[1:]:\n h=hashlib.sha256()\n f=open(p,'rb')\n"
        " while (b:=f.read(1<<20)): h.update(b)",
        *map(str, files),
    ]  # fmt: skip
    py_sha = min(timed(hashlib_cmd, env)[0] for _ in range(args.repeat))
    scan_cmd = [sys.executable, "-m", "replaybench", "scan", "--json", "--no-code", str(tmp)]
    # The fixed cost (interpreter, imports of lief/androguard/numpy) is timed separately on a tiny app
    # with the same kinds of entries, so the ratio is shown both with and without it.
    startup = min(
        timed([*scan_cmd[:-1], str(tiny_app(tmp.parent / f"{tmp.name}-tiny"))], env)[0] for _ in range(2)
    )
    runs = [timed(scan_cmd, env) for _ in range(args.repeat)]
    scan_wall = min(r[0] for r in runs)
    peak = max(r[1] for r in runs)
    import json

    inv = json.loads(runs[0][2])
    print(f"APK set: {len(files)} files, {mb:,.1f} MB in {tmp}")
    print(
        f"  entries scanned: model blobs {len(inv['model_blobs'])}, native libs {len(inv['native_libraries'])}"
    )
    print(f"sha256sum           : {sha:6.2f} s  {mb / sha:8.1f} MB/s")
    print(f"python hashlib sha256: {py_sha:5.2f} s  {mb / py_sha:8.1f} MB/s  (OpenSSL: a stricter floor)")
    print(
        f"replaybench scan    : {scan_wall:6.2f} s  {mb / scan_wall:8.1f} MB/s  (incl. {startup:.2f} s fixed cost: start-up, imports)"
    )
    print(f"scan excl. start-up : {scan_wall - startup:6.2f} s  {mb / (scan_wall - startup):8.1f} MB/s")
    print(
        f"ratio scan/sha256sum: {sha / scan_wall:.2f}x (excl. start-up {sha / (scan_wall - startup):.2f}x), goal >= 0.5x"
    )
    print(
        f"ratio scan/hashlib  : {py_sha / scan_wall:.2f}x (excl. start-up {py_sha / (scan_wall - startup):.2f}x)"
    )
    print(f"peak RSS of scan    : {peak / 2**20:,.0f} MiB (goal < 1024 MiB)")
    real_apk = (
        ROOT.parent.parent / "shared/realdata/apk_negative_controls/DigitRecognizer_server_side_model.apk"
    )
    real_apk = (
        Path(os.environ.get("REPLAYBENCH_REALDATA", real_apk.parents[1]))
        / "apk_negative_controls/DigitRecognizer_server_side_model.apk"
    )
    if real_apk.exists():
        code_off = min(timed([*scan_cmd[:-1], str(real_apk)], env)[0] for _ in range(args.repeat))
        code_on = min(timed([*scan_cmd[:-2], str(real_apk)], env)[0] for _ in range(args.repeat))
        print(f"DEX analysis (real APK, 4.8 MB classes.dex): --no-code {code_off:.2f} s, with code {code_on:.2f} s "
              f"(DEX part {code_on - code_off:.2f} s)")  # fmt: skip
    else:
        print("DEX analysis: real APK not found (set REPLAYBENCH_REALDATA); skipped")
    if args.keep is None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.parent / f"{tmp.name}-tiny", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
