"""scan_app / extract_blobs on real fixture APKs, bundles and hostile archives."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from replaybench.cli import main
from replaybench.errors import CorruptInputError, InputNotFoundError, UnsafeInputError
from replaybench.extract.blobs import extract_blobs
from replaybench.extract.containers import safe_output_path
from replaybench.extract.inventory import ExtractManifest, Inventory
from replaybench.extract.scan import scan_app
from tests.fixtures.apk import build_traversal_zip, build_zip_bomb, truncate
from tests.fixtures.elf import build_so
from tests.fixtures.models import tflite_models


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(scope="module")
def assets_inv(apps: dict[str, Path]) -> Inventory:
    return scan_app([apps["tflite_assets"]])


def test_tflite_in_assets_is_found_with_structure(assets_inv: Inventory, tflite_bytes: bytes, apps) -> None:
    [blob] = assets_inv.model_blobs
    assert blob.format == "tflite" and not blob.encrypted
    assert blob.location.container == [str(apps["tflite_assets"])]
    assert blob.location.entry == "assets/models/age.tflite" and blob.location.offset == 0
    assert blob.size == len(tflite_bytes) and blob.sha256 == _sha(tflite_bytes)
    assert blob.details["inputs"][0]["shape"] == [1, 32, 32, 3]
    assert blob.details["inputs"][0]["dtype"] == "float32"
    assert "CONV_2D" in blob.details["ops"] and "SOFTMAX" in blob.details["ops"]
    assert any("referenced in code" in e for e in blob.evidence)


def test_app_identity(assets_inv: Inventory) -> None:
    assert (assets_inv.app.package, assets_inv.app.version_code, assets_inv.app.version_name) == (
        "org.example.age", 42, "4.2"
    )  # fmt: skip
    assert [c.kind for c in assets_inv.app.containers] == ["apk"]


def test_code_evidence_reads_preprocessing_constants(assets_inv: Inventory) -> None:
    refs = assets_inv.code_references
    pre = {r.api.split("->")[-1]: r.args for r in refs if r.kind == "preprocess_arg"}
    assert pre["<init>"] == [127.5, 127.5]  # new NormalizeOp(127.5f, 127.5f)
    assert pre["createScaledBitmap"][1:] == [224, 224, True]
    assert [r.value for r in refs if r.kind == "load_library"] == ["tflitejni"]
    assert any(r.kind == "api" and r.api.startswith("Lorg/tensorflow/lite/Interpreter;") for r in refs)
    assert all(r.class_name == "Lorg/example/age/MainActivity;" for r in refs)


def test_no_code_skips_dex(apps) -> None:
    inv = scan_app([apps["tflite_assets"]], code=False)
    assert inv.code_references == [] and inv.code_scanned is False
    assert [b.format for b in inv.model_blobs] == ["tflite"]


def test_media_with_model_dir_is_not_a_model(assets_inv: Inventory) -> None:
    assert all("ding.ogg" not in b.location.entry for b in assets_inv.model_blobs)


def test_onnx_in_res_raw(apps) -> None:
    [blob] = scan_app([apps["raw_onnx"]], code=False).model_blobs
    assert blob.format == "onnx" and blob.location.entry == "res/raw/classifier.onnx"
    assert blob.details["ops"] == {"Relu": 1, "Sigmoid": 1}
    assert blob.details["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "FLOAT"}]


@pytest.mark.parametrize("abi,mode", [("arm64-v8a", "float"), ("x86_64", "int8")])
def test_model_embedded_in_so_is_pulled_out_byte_exact(apps, tmp_path: Path, abi: str, mode: str) -> None:
    inv = scan_app([apps["embedded"]], code=False)
    original = tflite_models()[mode].read_bytes()
    lib = next(x for x in inv.native_libraries if x.abi == abi)
    assert [r.runtime for r in lib.runtimes] == ["tflite"]
    assert set(lib.ml_symbols) == {
        "TfLiteInterpreterCreate",
        "TfLiteModelCreate",
        "_ZN6tflite11InterpreterC1Ev",
    }
    assert lib.machine == {"arm64-v8a": "AARCH64", "x86_64": "X86_64"}[abi]
    [blob] = [b for b in inv.model_blobs if abi in b.location.entry]
    assert blob.format == "tflite" and blob.location.section == ".rodata"
    assert blob.location.vaddr is not None and blob.location.offset > 0
    assert blob.size == len(original) and blob.sha256 == _sha(original)
    manifest = extract_blobs(inv, tmp_path / "out")
    item = next(i for i in manifest.blobs if i.blob.sha256 == blob.sha256)
    assert (tmp_path / "out" / item.file).read_bytes() == original
    # the ELF file offset is real: the bytes sit there inside the library as stored in the APK
    import zipfile

    so = zipfile.ZipFile(apps["embedded"]).read(blob.location.entry)
    assert so[blob.location.offset : blob.location.offset + blob.size] == original


def test_encrypted_blobs_are_flagged(apps) -> None:
    inv = scan_app([apps["encrypted"]])
    by_entry = {b.location.entry: b for b in inv.model_blobs}
    enc = by_entry["assets/data/m.enc"]
    assert enc.format == "unknown_high_entropy" and enc.encrypted and enc.entropy > 7.9
    assert any("referenced in app code" in e for e in enc.evidence)
    fake = by_entry["assets/face.tflite"]
    assert fake.format == "unknown_high_entropy" and any("likely encrypted" in e for e in fake.evidence)
    aes = by_entry["assets/models/detector.bin"]
    assert aes.encrypted and any("model folder" in e for e in aes.evidence)
    assert aes.size % 16 == 0 and aes.size > 40 * len(tflite_models()["float"].read_bytes())
    [rej] = inv.rejected_candidates
    assert rej.location.entry == "assets/face.tflite" and rej.claimed_format == "tflite"


def test_plain_app_has_no_model(apps) -> None:
    inv = scan_app([apps["plain"]])
    assert inv.model_blobs == [] and inv.runtimes == [] and not inv.has_on_device_model


def test_split_folder(apps, tflite_bytes: bytes) -> None:
    inv = scan_app([apps["split"]], code=False)
    kinds = sorted(c.kind for c in inv.app.containers)
    assert kinds == ["apk", "folder", "split_apk", "split_apk"]
    assert inv.app.package == "org.example.app" and inv.app.version_code == 3
    asset = next(b for b in inv.model_blobs if b.location.entry == "assets/ml/age.tflite")
    assert asset.location.container == [str(apps["split"]), "split_df_ml.apk"]
    assert asset.sha256 == _sha(tflite_bytes)
    assert inv.runtimes == ["tflite"]
    assert {b.location.entry for b in inv.model_blobs} == {
        "assets/ml/age.tflite",
        "lib/arm64-v8a/libtflitejni.so",
    }


def test_xapk_with_obb(apps, tmp_path: Path) -> None:
    inv = scan_app([apps["xapk"]], code=False)
    assert inv.app.containers[0].kind == "xapk"
    obb = next(b for b in inv.model_blobs if b.location.entry == "models/gender.tflite")
    assert obb.location.container == [
        str(apps["xapk"]),
        "Android/obb/org.example.app/main.1.org.example.app.obb",
    ]
    assert obb.sha256 == _sha(tflite_models()["int8"].read_bytes())
    assert {b.location.container[1] for b in inv.model_blobs} >= {
        "org.example.app.apk",
        "config.arm64_v8a.apk",
    }
    manifest = extract_blobs(inv, tmp_path / "x")
    assert len(manifest.blobs) == len(inv.model_blobs)
    for item in manifest.blobs:
        assert _sha((tmp_path / "x" / item.file).read_bytes()) == item.blob.sha256


def test_apkm_and_apks(apps) -> None:
    inv = scan_app([apps["apkm"]], code=False)
    assert inv.app.containers[0].kind == "apkm"
    assert sorted(b.format for b in inv.model_blobs) == ["onnx", "tflite"]
    inv2 = scan_app([apps["apks"]], code=False)
    assert inv2.app.containers[0].kind == "apks"
    assert sorted(b.location.container[1] for b in inv2.model_blobs) == ["splits/base-master.apk"] * 2


def test_zip_bomb_refused_naming_the_entry(tmp_path: Path) -> None:
    bomb = build_zip_bomb(tmp_path / "bomb.apk")
    with pytest.raises(UnsafeInputError, match=r"assets/bomb\.bin.*zip bomb"):
        scan_app([bomb])
    assert main(["scan", str(bomb)]) == UnsafeInputError.exit_code


def test_truncated_apk_is_a_typed_error(apps, tmp_path: Path) -> None:
    cut = truncate(apps["tflite_assets"], tmp_path / "cut.apk")
    with pytest.raises(CorruptInputError, match="truncated or corrupt"):
        scan_app([cut])
    assert main(["scan", str(cut)]) == CorruptInputError.exit_code
    assert main(["scan", str(tmp_path / "absent.apk")]) == InputNotFoundError.exit_code


def test_path_traversal_never_escapes(tmp_path: Path) -> None:
    evil = build_traversal_zip(tmp_path / "evil.apk", data=tflite_models()["float"].read_bytes())
    inv = scan_app([evil])
    assert any("outside its folder" in w for w in inv.warnings)
    out = tmp_path / "deep" / "out"
    manifest = extract_blobs(inv, out)
    [item] = manifest.blobs
    assert (out / item.file).is_file() and "/" not in item.file and ".." not in item.file
    assert not (tmp_path / "evil.tflite").exists() and not (tmp_path / "deep" / "evil.tflite").exists()
    for bad in ("../x", "/etc/passwd", "a/../../x", "C:\\x"):
        with pytest.raises(UnsafeInputError):
            safe_output_path(out, bad)


def test_unknown_engine_and_cpp_fingerprints(tmp_path: Path) -> None:
    from replaybench.extract.native import analyze_elf

    ops = ["Convolution", "ConvolutionDepthWise", "Pooling", "Softmax", "BatchNorm", "Sigmoid", "Eltwise",
           "InnerProduct", "Deconvolution", "PReLU", "tensor shape mismatch", "graph load failed",
           "inference session", "dequantize int8 weights", "layer %s forward"]  # fmt: skip
    so = build_so(tmp_path / "libsecret.so", arch="aarch64", strings=ops, symbols=["xq_run"])
    info = analyze_elf(so.read_bytes(), "libsecret.so")
    assert info["runtimes"] == [] and info["engine_score"] >= 0.6
    assert any("convolution" in e for e in info["engine_evidence"])
    plain = build_so(tmp_path / "libplain.so", arch="x86_64", strings=["hello world", "config.json"])
    assert analyze_elf(plain.read_bytes(), "libplain.so")["engine_score"] < 0.3
    ncnn = build_so(
        tmp_path / "libx.so",
        arch="x86_64",
        symbols=["_ZN4ncnn3Net10load_paramEPKc", "_ZN4ncnn9Extractor7extractEPKcRNS_3MatE"],
    )
    [match] = analyze_elf(ncnn.read_bytes(), "libx.so")["runtimes"]
    assert match.runtime == "ncnn" and match.evidence[0].startswith("symbol _ZN4ncnn3Net")


def test_cli_scan_json_and_extract(apps, tmp_path: Path, capsys) -> None:
    assert main(["scan", str(apps["tflite_assets"]), "--json", "--no-code"]) == 0
    inv = Inventory.model_validate_json(capsys.readouterr().out)
    assert inv.schema_version == "1.0" and inv.model_blobs[0].format == "tflite"
    assert main(["extract", str(apps["embedded"]), "-o", str(tmp_path / "ex")]) == 0
    blobs = tmp_path / "ex" / "blobs"
    manifest = ExtractManifest.model_validate(json.loads((blobs / "manifest.json").read_text()))
    assert sorted(i.blob.format for i in manifest.blobs) == ["tflite", "tflite"]
    assert "extract.json" in capsys.readouterr().out
    assert main(["scan", str(apps["plain"])]) == 0
    assert "no on-device model found" in capsys.readouterr().out


def test_zip_nested_in_assets_is_opened_in_place(tmp_path: Path) -> None:
    import io
    import zipfile

    from tests.fixtures.apk import build_apk

    original = tflite_models()["fp16"].read_bytes()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("pack/face.tflite", original, compress_type=zipfile.ZIP_DEFLATED)
    apk = build_apk(tmp_path / "nested.apk", assets={"bundle/models.zip": inner.getvalue()})
    assert zipfile.ZipFile(apk).getinfo("assets/bundle/models.zip").compress_type == zipfile.ZIP_STORED
    inv = scan_app([apk], code=False)
    [blob] = inv.model_blobs
    assert blob.location.container == [str(apk), "assets/bundle/models.zip"]
    assert blob.location.entry == "pack/face.tflite" and blob.details["quantization"] == "float16"
    manifest = extract_blobs(inv, tmp_path / "out")
    assert (tmp_path / "out" / manifest.blobs[0].file).read_bytes() == original


def test_dex_string_table_matches_androguard(apps) -> None:
    import zipfile

    from androguard.core.dex import DEX

    from replaybench.extract.code import dex_strings

    dex = zipfile.ZipFile(apps["tflite_assets"]).read("classes.dex")
    assert dex_strings(dex) == [str(s) for s in DEX(dex).get_strings()]
    with pytest.raises(ValueError, match="not a DEX"):
        dex_strings(b"PK\x03\x04" + bytes(200))


def test_torch_lite_and_ncnn_param_embedded_in_so(tmp_path: Path) -> None:
    from tests.fixtures.apk import build_apk
    from tests.fixtures.models import torch_models

    ptl = torch_models()[1].read_bytes()
    param = (
        b"7767517\n3 3\nInput data 0 1 data 0=32 1=32 2=3\nReLU relu 1 1 data r\nSoftmax prob 1 1 r prob\n"
    )
    lib_ptl = build_so(tmp_path / "a.so", arch="aarch64", blob=ptl, symbols=["_ZN5torch3jit12load_mobileEv"])
    lib_ncnn = build_so(
        tmp_path / "b.so", arch="x86_64", blob=param, symbols=["_ZN4ncnn3Net10load_paramEPKc"]
    )
    apk = build_apk(
        tmp_path / "e.apk", native_libs={"arm64-v8a/libpt.so": lib_ptl, "x86_64/libnc.so": lib_ncnn}
    )
    inv = scan_app([apk], code=False)
    by_format = {b.format: b for b in inv.model_blobs}
    assert set(by_format) == {"pytorch_lite", "ncnn_param"}
    assert by_format["pytorch_lite"].sha256 == _sha(ptl) and by_format["ncnn_param"].sha256 == _sha(param)
    assert inv.runtimes == ["ncnn", "pytorch_mobile"]
    manifest = extract_blobs(inv, tmp_path / "out")
    got = {i.blob.format: (tmp_path / "out" / i.file).read_bytes() for i in manifest.blobs}
    assert got == {"pytorch_lite": ptl, "ncnn_param": param}


def test_extract_seam_select_and_after(apps, tmp_path: Path) -> None:
    """The hooks trace matching and conversion plug into: select which blobs, act on each written one."""
    inv = scan_app([apps["apkm"]], code=False)
    seen: list[tuple[str, bool]] = []
    manifest = extract_blobs(
        inv,
        tmp_path / "o",
        select=lambda b: b.format == "onnx",
        after=[lambda item, out: seen.append((item.blob.format, (out / item.file).is_file()))],
    )
    assert [i.blob.format for i in manifest.blobs] == ["onnx"] and seen == [("onnx", True)]
    on_disk = ExtractManifest.model_validate_json((tmp_path / "o" / "manifest.json").read_text())
    assert on_disk == manifest


def test_cli_prints_hostile_entry_names_literally(tmp_path: Path, capsys) -> None:
    """Names come from the app under audit: rich markup in them is text, never markup (an unmatched
    closing tag used to crash the table with MarkupError)."""
    import io
    import zipfile

    from tests.fixtures.apk import build_apk

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("[/evil]/face.tflite", tflite_models()["fp16"].read_bytes())
        z.writestr("pack/[bold]fake[/bold].tflite", b"not a model at all" * 10)
    apk = build_apk(tmp_path / "hostile.apk", assets={"bundle/models.zip": inner.getvalue()})
    assert main(["scan", str(apk), "--no-code"]) == 0
    out = capsys.readouterr().out
    assert "[/evil]/face.tflite" in out
    assert "pack/[bold]fake[/bold].tflite" in out
