"""Fixture apps for the extract tests: real signed APKs, bundles and .so files, built once and cached."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.apk import build_apk, build_apks, build_split_folder, build_xapk
from tests.fixtures.elf import build_so
from tests.fixtures.models import tflite_models

TFLITE_SYMBOLS = ["TfLiteInterpreterCreate", "TfLiteModelCreate", "_ZN6tflite11InterpreterC1Ev"]


def tiny_onnx() -> bytes:
    """A two-node ONNX model (Relu, Sigmoid) made with onnx.helper: deterministic bytes."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(
        graph, producer_name="replaybench-tests", opset_imports=[helper.make_opsetid("", 13)]
    )
    return model.SerializeToString()


def xor_encrypt(data: bytes, seed: int = 7) -> bytes:
    """What obfuscating apps do: XOR with a pseudo-random keystream (output is ~8 bits/byte)."""
    key = np.random.default_rng(seed).integers(0, 256, len(data), dtype=np.uint8)
    return (np.frombuffer(data, np.uint8) ^ key).tobytes()


def aes_encrypt(data: bytes) -> bytes:
    """AES-128-CBC with a fixed key and IV through the openssl CLI (deterministic, real AES)."""
    import subprocess

    key, iv = "00112233445566778899aabbccddeeff", "0f0e0d0c0b0a09080706050403020100"
    return subprocess.run(
        ["openssl", "enc", "-aes-128-cbc", "-K", key, "-iv", iv], input=data, capture_output=True, check=True
    ).stdout


@pytest.fixture(scope="session")
def tflite_bytes() -> bytes:
    return tflite_models()["float"].read_bytes()


@pytest.fixture(scope="session")
def apps(tmp_path_factory: pytest.TempPathFactory, tflite_bytes: bytes) -> dict[str, Path]:
    """Every fixture app, by role."""
    d = tmp_path_factory.mktemp("apps")
    int8 = tflite_models()["int8"].read_bytes()
    so_arm = build_so(
        d / "so" / "libtflitejni_arm.so", arch="aarch64", blob=tflite_bytes, symbols=TFLITE_SYMBOLS
    )
    so_x86 = build_so(d / "so" / "libtflitejni_x86.so", arch="x86_64", blob=int8, symbols=TFLITE_SYMBOLS)
    # High entropy, large enough to count as a model (>= 64 KiB): an encrypted model as apps ship it.
    enc = xor_encrypt(tflite_bytes * 40)
    out = {
        "tflite_assets": build_apk(
            d / "tflite_assets.apk", package="org.example.age", version_code=42, version_name="4.2",
            assets={"models/age.tflite": tflite_bytes, "sounds/ding.ogg": b"OggS" + bytes(70000)},
            ml_code=True, code_strings=["models/age.tflite"],
        ),
        "raw_onnx": build_apk(d / "raw_onnx.apk", raw={"classifier.onnx": tiny_onnx()}),
        "embedded": build_apk(
            d / "embedded.apk",
            native_libs={"arm64-v8a/libtflitejni.so": so_arm, "x86_64/libtflitejni.so": so_x86},
        ),
        "encrypted": build_apk(
            d / "encrypted.apk",
            assets={"data/m.enc": enc, "face.tflite": xor_encrypt(tflite_bytes * 40, seed=9),
                    "models/detector.bin": aes_encrypt(tflite_bytes * 40)},
            code_strings=["data/m.enc"],
        ),
        "plain": build_apk(d / "plain.apk", assets={"readme.txt": b"hello" * 100}),
    }  # fmt: skip
    out["split"] = build_split_folder(
        d / "split",
        base={"version_code": 3, "ml_code": True},
        splits={
            "config.arm64_v8a": {"native_libs": {"arm64-v8a/libtflitejni.so": so_arm}},
            "df_ml": {"assets": {"ml/age.tflite": tflite_bytes}},
        },
    )
    obb_zip = d / "main.obb"
    with zipfile.ZipFile(obb_zip, "w") as z:
        z.writestr("models/gender.tflite", int8, compress_type=zipfile.ZIP_DEFLATED)
    out["xapk"] = build_xapk(
        d / "app.xapk",
        {"org.example.app.apk": out["tflite_assets"], "config.arm64_v8a.apk": out["split"] / "split_config.arm64_v8a.apk"},
        obb={"main.1.org.example.app.obb": obb_zip.read_bytes()},
    )  # fmt: skip
    out["apkm"] = build_apks(
        d / "app.apkm", {"base.apk": out["raw_onnx"], "split_df_ml.apk": out["split"] / "split_df_ml.apk"}
    )
    out["apks"] = build_apks(d / "app.apks", {"base-master.apk": out["embedded"]}, flavour="apks")
    return out
