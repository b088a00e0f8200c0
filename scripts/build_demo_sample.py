"""Rebuild the embedded sample (replaybench/demo/sample/): the sample app's APK and its trace.

Run from the repository root (needs the test toolchain: smali, aapt, apksigner, zipalign, gcc-aarch64):

    .venv/bin/python scripts/build_demo_sample.py
    .venv/bin/python scripts/build_demo_sample.py --trace-only   # keep the APK, rewrite only the trace

1. trains the face-attribute model on synthetic faces with a planted skin-tone shortcut
   (scripts/train_demo_model.py) plus an older "v1" model;
2. builds a real signed APK: v1 plain in assets, the fp16 model embedded in lib/arm64-v8a/libfacekit.so,
   the current model XOR-obfuscated as assets/fa.bin, and code that references all of it;
3. writes the app's trace in the agent's format (replaybench/demo/sample_app.py), with the app's input
   tensors made by the reference implementations (Skia's createScaledBitmap via skia-python, TFLite
   Support's NormalizeOp arithmetic), not by replaybench's kernels.

``--trace-only`` takes the running model from the existing APK (decrypting assets/fa.bin) and rewrites
only the trace (no toolchain needed beyond the dev extra).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replaybench.demo import sample_app  # noqa: E402
from replaybench.demo.synthetic import face_samples  # noqa: E402
from replaybench.extract.capture import agent_version  # noqa: E402
from scripts.train_demo_model import train  # noqa: E402
from tests.fixtures.apk import build_apk  # noqa: E402
from tests.fixtures.elf import build_so  # noqa: E402

OUT = ROOT / "replaybench" / "demo" / "sample"

APP_SMALI = """.class public Lorg/replaybench/sample/FaceAnalyzer;
.super Ljava/lang/Object;

.method public static analyze(Landroid/graphics/Bitmap;)V
    .registers 6
    const-string v0, "facekit"
    invoke-static {v0}, Ljava/lang/System;->loadLibrary(Ljava/lang/String;)V
    const-string v0, "fa.bin"
    const/16 v1, 0x40
    const/16 v2, 0x40
    const/4 v3, 0x1
    invoke-static {p0, v1, v2, v3}, Landroid/graphics/Bitmap;->createScaledBitmap(Landroid/graphics/Bitmap;IIZ)Landroid/graphics/Bitmap;
    new-instance v0, Lorg/tensorflow/lite/support/common/ops/NormalizeOp;
    const/high16 v1, 0x42ff0000    # 127.5f
    const/high16 v2, 0x42ff0000    # 127.5f
    invoke-direct {v0, v1, v2}, Lorg/tensorflow/lite/support/common/ops/NormalizeOp;-><init>(FF)V
    new-instance v0, Lorg/tensorflow/lite/Interpreter;
    return-void
.end method
"""


def face_crops() -> list[np.ndarray]:
    """Face crops of several sizes, as a face detector would hand them over."""
    from PIL import Image

    rng = np.random.default_rng(5)
    crops = []
    for i, (img, _, _) in enumerate(face_samples(6, seed=21)):
        size = int(rng.integers(72, 140))
        crops.append(np.asarray(Image.fromarray(img).resize((size, size + (i % 3) * 8))))
    return crops


def rewrite_trace() -> None:
    """Rewrite the trace only, for the model the existing APK runs."""
    import zipfile

    with zipfile.ZipFile(OUT / "sample.apk") as z:
        current = sample_app.xor_keystream(z.read(f"assets/{sample_app.OBFUSCATED_ASSET}"))
    shutil.rmtree(OUT / "trace", ignore_errors=True)
    sample_app.write_sample_trace(OUT / "trace", current, face_crops(), agent_version=agent_version())


def main() -> None:
    if "--trace-only" in sys.argv[1:]:
        rewrite_trace()
        for p in sorted((OUT / "trace").rglob("*")):
            if p.is_file():
                print(f"{p.relative_to(ROOT)}  {p.stat().st_size:,} B")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train(work / "models")
        current = (work / "models" / "face_gender.tflite").read_bytes()
        fp16 = (work / "models" / "face_gender_fp16.tflite").read_bytes()
        train(work / "v1", epochs=3, seed=9)
        v1 = (work / "v1" / "face_gender.tflite").read_bytes()
        lib = build_so(
            work / sample_app.NATIVE_LIB,
            arch="aarch64",
            blob=fp16,
            symbols=[
                "Java_org_replaybench_sample_FaceKit_nativeInit",
                "TfLiteInterpreterCreate",
                "TfLiteInterpreterInvoke",
            ],
            strings=["tflite::Interpreter", "face_gender_fp16"],
        )
        OUT.mkdir(parents=True, exist_ok=True)
        build_apk(
            OUT / "sample.apk",
            package=sample_app.PACKAGE,
            version_code=sample_app.VERSION_CODE,
            version_name=sample_app.VERSION_NAME,
            assets={
                "models/face_gender_v1.tflite": v1,
                sample_app.OBFUSCATED_ASSET: sample_app.xor_keystream(current),
            },
            native_libs={f"arm64-v8a/{sample_app.NATIVE_LIB}": lib},
            smali={"FaceAnalyzer": APP_SMALI},
            code_strings=[sample_app.OBFUSCATED_ASSET, "models/face_gender_v1.tflite"],
        )
        shutil.rmtree(OUT / "trace", ignore_errors=True)
        sample_app.write_sample_trace(OUT / "trace", current, face_crops(), agent_version=agent_version())
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(ROOT)}  {p.stat().st_size:,} B")


if __name__ == "__main__":
    main()
