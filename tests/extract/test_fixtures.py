"""The fixture toolkit builds real artefacts: an APK androguard accepts, ELF libraries lief reads."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.apk import build_apk
from tests.fixtures.elf import build_so


def test_build_apk_is_a_real_signed_apk(tmp_path: Path) -> None:
    from androguard.core.apk import APK
    from loguru import logger

    logger.disable("androguard")
    apk = build_apk(tmp_path / "a.apk", package="org.example.fx", version_code=9, version_name="9.1",
                    assets={"m.bin": b"abc"}, ml_code=True)  # fmt: skip
    a = APK(str(apk))
    assert (a.get_package(), a.get_androidversion_code(), a.get_androidversion_name()) == (
        "org.example.fx",
        "9",
        "9.1",
    )
    assert a.is_signed_v2() or a.is_signed_v1()
    assert "classes.dex" in a.get_files() and "assets/m.bin" in a.get_files()


def test_build_so_embeds_blob_and_exports_symbols(tmp_path: Path) -> None:
    import lief

    blob = bytes(range(256)) * 3 + b"END"
    for arch, machine in (("x86_64", lief.ELF.ARCH.X86_64), ("aarch64", lief.ELF.ARCH.AARCH64)):
        so = build_so(
            tmp_path / f"lib{arch}.so",
            arch=arch,
            blob=blob,
            symbols=["_ZN4ncnn3NetC1Ev"],
            strings=["hi there"],
        )  # type: ignore[arg-type]
        elf = lief.ELF.parse(str(so))
        assert elf.header.machine_type == machine
        assert "_ZN4ncnn3NetC1Ev" in {s.name for s in elf.exported_symbols}
        data = so.read_bytes()
        off = data.find(blob)
        rodata = elf.get_section(".rodata")
        assert rodata.offset <= off < rodata.offset + rodata.size
        assert b"hi there" in data
