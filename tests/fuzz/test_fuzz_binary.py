"""Fuzz the binary parsers: TFLite flatbuffer + metadata, the convert-side metadata reader, DEX, ELF.

Each target mutates a valid seed (tests/fuzz/seeds.py) and asserts the property of ``expect_typed``:
a result or a replaybench typed error, never another exception, a hang or a memory blow-up.
"""

from __future__ import annotations

import io
import struct
import zipfile

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from replaybench.errors import CorruptInputError, ReplaybenchError
from tests.fuzz import seeds
from tests.fuzz.harness import (
    dex_hot_positions,
    dex_with_valid_checksums,
    elf_hot_positions,
    expect_typed,
    fuzz_settings,
    mutated,
)

TFLITE = seeds.tflite_model()
METADATA = seeds._metadata_flatbuffer()


def test_seeds_are_valid() -> None:
    """The seeds are what they claim (checked by the real runtimes/tools), so mutations start from valid."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=TFLITE)
    it.allocate_tensors()
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    w = np.array([[10, -20, 30, -40], [5, 15, -25, 35]], np.float32) * 0.05
    np.testing.assert_allclose(it.get_tensor(it.get_output_details()[0]["index"]), x @ w.T + [0.25, -0.5])
    with zipfile.ZipFile(io.BytesIO(TFLITE)) as z:  # the appended associated-files zip
        assert z.read("labels.txt").decode().split() == seeds.LABELS
    import lief

    elf = lief.ELF.parse(list(seeds.elf_library()))
    assert elf is not None and any(s.name == "TfLiteInterpreterCreate" for s in elf.exported_symbols)
    from androguard.core.dex import DEX

    dex = DEX(seeds.dex_file())
    assert "Lorg/tensorflow/lite/Interpreter;" in set(dex.get_strings())


# ------------------------------------------------------------------------------------------ TFLite


def _parse_tflite(data: bytes) -> object:
    from replaybench.extract.tflite import flatbuffer_extent, parse_tflite

    info = parse_tflite(data)
    assert 0 <= info["_extent"] <= len(data)
    assert flatbuffer_extent(memoryview(data)) == info["_extent"]
    return info


@given(mutated(TFLITE, max_ops=8, protect=8))
@fuzz_settings(300)
@example(b"")
@example(TFLITE[:8])
@example(b"\x08\x00\x00\x00TFL3")
@example(TFLITE[:-2] + b"\x20\x00")  # found: the appended zip's comment length ran past the data
def test_fuzz_tflite_flatbuffer(data: bytes) -> None:
    expect_typed(_parse_tflite, data)


def _revisiting_model(n: int) -> bytes:
    """A TFLite flatbuffer whose subgraph vector names one subgraph ``n`` times, whose tensor vector
    names one tensor ``n`` times: valid offsets, ``n * n`` tensors to walk in ``4 * n``-ish bytes."""
    import flatbuffers

    b = flatbuffers.Builder(0)
    name = b.CreateString("t")
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(3, name, 0)
    tensor = b.EndObject()
    b.StartVector(4, n, 4)
    for _ in range(n):
        b.PrependUOffsetTRelative(tensor)
    tensors = b.EndVector()
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tensors, 0)
    subgraph = b.EndObject()
    b.StartVector(4, n, 4)
    for _ in range(n):
        b.PrependUOffsetTRelative(subgraph)
    subgraphs = b.EndVector()
    b.StartObject(8)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(2, subgraphs, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_tflite_offsets_revisiting_one_table_are_refused() -> None:
    """Found while fuzzing the reader's cost: shared offsets made the walk quadratic (4 million tensor
    reads for 16 KB here; hours for a hostile model embedded in a native library)."""
    from replaybench.extract.flatbuf import FlatbufferError
    from replaybench.extract.tflite import parse_tflite

    assert parse_tflite(_revisiting_model(3))["tensors"] == 9  # shared offsets are legal in moderation
    result = expect_typed(parse_tflite, _revisiting_model(2000))
    assert isinstance(result, FlatbufferError) and "revisit" in result.message


def _metadata_model(meta: bytes, tail: bytes) -> bytes:
    """The seed model with ``meta`` as its TFLITE_METADATA buffer and ``tail`` as its appended zip."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromPackedBuf(bytearray(TFLITE), 0)
    model.buffers[3].data = list(meta)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    flat = bytes(b.Output())
    return flat + b"\0" * (-len(flat) % 4) + tail


@given(mutated(METADATA, max_ops=8, protect=8), mutated(seeds.labels_zip(), max_ops=4, protect=4))
@fuzz_settings(300)
def test_fuzz_convert_tflite_metadata(meta: bytes, tail: bytes) -> None:
    """convert's metadata reader never fails a conversion: bad metadata becomes a note."""
    from replaybench.extract.tflite import TFLiteMetadata, read_metadata

    result = expect_typed(read_metadata, _metadata_model(meta, tail))
    assert isinstance(result, TFLiteMetadata)


def test_convert_metadata_reads_the_seed() -> None:
    from replaybench.extract.tflite import read_metadata

    meta = read_metadata(_metadata_model(METADATA, seeds.labels_zip()))
    assert (meta.mean, meta.std, meta.labels, meta.notes) == ([127.5] * 3, [127.5] * 3, seeds.LABELS, [])


# ------------------------------------------------------------------------------------------ DEX

DEX = seeds.dex_file()


def _dex(data: bytes) -> object:
    from replaybench.extract.code import analyze_dex, dex_strings

    strings = dex_strings(data, "classes.dex")
    assert sum(map(len, strings)) <= len(data)
    return analyze_dex(data, "classes.dex")


@given(
    st.builds(
        lambda data, fix: dex_with_valid_checksums(data) if fix else data,
        mutated(DEX, hot=dex_hot_positions(DEX), max_ops=6, protect=8),
        st.booleans(),
    )
)
@fuzz_settings(200)
@example(b"dex\n035\0" + bytes(0x68))
def test_fuzz_dex(data: bytes) -> None:
    expect_typed(_dex, data)


def test_dex_string_table_with_overlapping_strings_is_refused() -> None:
    """Hostile string ids that all point into one long run (no NUL) would decode the run once per id:
    quadratic time and memory. The table is refused instead."""
    from replaybench.extract.code import dex_strings

    n, run = 20_000, 200_000
    body = bytearray(b"dex\n035\0" + bytes(0x68))
    off = len(body)
    data_off = off + 4 * n
    struct.pack_into("<II", body, 0x38, n, off)
    body += b"".join(struct.pack("<I", data_off + 4 * i) for i in range(n))
    body += b"\x01" + b"A" * run  # uleb128 length 1, then a string that never ends before the next id
    body += b"\0"
    with pytest.raises(CorruptInputError, match="string"):
        dex_strings(bytes(body), "classes.dex")


def test_dex_uleb_prefix_is_bounded() -> None:
    """A uleb128 length is at most 5 bytes; a run of continuation bytes is not skipped to its end."""
    from replaybench.extract.code import dex_strings

    body = bytearray(b"dex\n035\0" + bytes(0x68))
    struct.pack_into("<II", body, 0x38, 1, len(body))
    body += struct.pack("<I", len(body) + 4) + b"\xff" * 64 + b"\0"
    with pytest.raises(CorruptInputError):
        dex_strings(bytes(body), "classes.dex")


# ------------------------------------------------------------------------------------------ ELF


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_fuzz_elf(arch: str) -> None:
    from replaybench.extract.native import analyze_elf

    seed = seeds.elf_library(arch)

    @given(mutated(seed, hot=elf_hot_positions(seed), max_ops=6, protect=4))
    @fuzz_settings(150)
    def run(data: bytes) -> None:
        result = expect_typed(analyze_elf, data, "libtflitejni.so")
        if not isinstance(result, ReplaybenchError):
            for emb in result["embedded"]:
                assert emb.file_offset >= 0 and emb.file_offset + emb.size <= len(data)

    run()


def test_elf_garbage_is_a_typed_error() -> None:
    from replaybench.extract.native import analyze_elf

    with pytest.raises(CorruptInputError):
        analyze_elf(b"\x7fELX" + bytes(60), "libx.so")


def _many_rodata_sections(n: int) -> bytes:
    """The seed library plus ``n`` extra section headers, each a .rodata covering the whole file."""
    seed = bytearray(seeds.elf_library("x86_64"))
    (shoff,) = struct.unpack_from("<Q", seed, 0x28)
    (shnum,) = struct.unpack_from("<H", seed, 0x3C)
    (shstrndx,) = struct.unpack_from("<H", seed, 0x3E)
    (names,) = struct.unpack_from("<Q", seed, shoff + 64 * shstrndx + 0x18)
    headers = [bytes(seed[shoff + 64 * i : shoff + 64 * i + 64]) for i in range(shnum)]
    (rodata,) = [
        h for h in headers if seed[names + struct.unpack_from("<I", h)[0] :].startswith(b".rodata\0")
    ]
    out = bytearray(seed[:shoff]) + b"".join(headers)
    fake = bytearray(rodata)
    struct.pack_into("<QQ", fake, 0x18, 0, len(out) + 64 * n)  # offset 0, size: the whole file
    out += bytes(fake) * n
    struct.pack_into("<H", out, 0x3C, shnum + n)
    return bytes(out)


def test_elf_with_many_overlapping_sections_is_scanned_once() -> None:
    """Found while fuzzing the scan's cost: 2000 sections named .rodata over the whole file took 99 s
    and reported the embedded model 2001 times. Each byte range is searched once, each blob reported once."""
    from replaybench.extract.native import analyze_elf

    result = expect_typed(analyze_elf, _many_rodata_sections(300), "libtflitejni.so")
    assert not isinstance(result, ReplaybenchError)
    assert [(e.format, e.size) for e in result["embedded"]] == [("tflite", len(TFLITE))]


def test_elf_symbol_size_past_the_section_is_not_trusted() -> None:
    """Found by fuzzing: a symbol table entry claiming the model is 4 GiB made the inventory report a
    4 GiB blob in a 15 KB library. The flatbuffer's own extent is kept instead."""
    from replaybench.extract.native import analyze_elf

    seed = seeds.elf_library("x86_64")
    (emb,) = analyze_elf(seed, "libtflitejni.so")["embedded"]
    entry = struct.pack("<QQ", emb.vaddr, 0)  # st_value, st_size of rb_model_blob (declared without size)
    assert entry in seed
    hostile = seed.replace(entry, struct.pack("<QQ", emb.vaddr, 1 << 32))
    (emb,) = analyze_elf(hostile, "libtflitejni.so")["embedded"]
    assert (emb.size, emb.evidence[-1]) == (len(TFLITE), f"size {len(TFLITE)} from the flatbuffer structure")
