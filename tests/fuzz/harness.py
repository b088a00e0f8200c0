"""The fuzz property, its budget, and structure-aware mutators of valid seed bytes.

The property every parser of untrusted bytes must keep: return a result, or raise a replaybench typed
error (a ``ReplaybenchError`` subclass). Anything else fails the example: another exception (``KeyError``,
``struct.error``, ``RecursionError``...), a hang (a SIGALRM watchdog, ``REPLAYBENCH_FUZZ_TIMEOUT`` seconds,
interrupts it) or unbounded memory (the address space is capped ``REPLAYBENCH_FUZZ_MEMORY_MB`` above what the
process uses before the call, so a blow-up is a ``MemoryError`` instead of an exhausted machine).

Budget: ``REPLAYBENCH_FUZZ_EXAMPLES`` inputs per parser (unset: each test's short default, derandomised so
the normal test command is reproducible). A longer, random run::

    REPLAYBENCH_FUZZ_EXAMPLES=20000 python -m pytest tests/fuzz -p no:xdist -q

Hypothesis keeps failing inputs in ``.hypothesis/`` and replays them first on the next run.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from replaybench.errors import ReplaybenchError

T = TypeVar("T")

LONG_RUN = os.environ.get("REPLAYBENCH_FUZZ_EXAMPLES")
TIMEOUT_S = float(os.environ.get("REPLAYBENCH_FUZZ_TIMEOUT", "20"))
MEMORY_HEADROOM = int(os.environ.get("REPLAYBENCH_FUZZ_MEMORY_MB", "2048")) << 20


def fuzz_settings(default_examples: int) -> settings:
    """Hypothesis settings for one fuzz target: the short default or the env-var budget."""
    n = int(LONG_RUN) if LONG_RUN else default_examples
    return settings(
        max_examples=n,
        deadline=None,  # the watchdog catches hangs; wall time on a shared machine is no verdict
        derandomize=not LONG_RUN,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
        print_blob=True,
    )


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so no ``except Exception`` in a parser swallows it."""


@contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no result after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _address_space() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def _memory_cap(headroom: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# Inputs tried per target in this process: target -> [results, typed errors] (printed by conftest.py).
TRIED: dict[str, list[int]] = {}


def expect_typed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | ReplaybenchError:
    """Call ``fn``: its result, or the replaybench typed error it raised. Any other outcome fails."""
    counts = TRIED.setdefault(getattr(fn, "__name__", str(fn)), [0, 0])
    try:
        with _memory_cap(MEMORY_HEADROOM), _watchdog(TIMEOUT_S):
            result = fn(*args, **kwargs)
        counts[0] += 1
        return result
    except ReplaybenchError as e:
        assert str(e), f"{type(e).__name__} without a message"
        counts[1] += 1
        return e
    except Hang as e:
        raise AssertionError(f"{getattr(fn, '__name__', fn)} hung: {e}") from None
    except MemoryError as e:
        raise AssertionError(
            f"{getattr(fn, '__name__', fn)} wanted more than {MEMORY_HEADROOM >> 20} MiB more memory"
        ) from e


# ------------------------------------------------------------------------------------------ mutators

INTERESTING = (
    0, 1, 2, 3, 4, 7, 8, 12, 16, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
    0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF,
)  # fmt: skip
_WIDTH = {"B": 1, "H": 2, "I": 4, "Q": 8}


@st.composite
def mutated(
    draw: st.DrawFn, seed: bytes, hot: Sequence[int] = (), max_ops: int = 6, protect: int = 0
) -> bytes:
    """``seed`` with 0..max_ops mutations: bit flips, bytes, integers (interesting values, sizes and
    offsets) written at any position, at 4-byte aligned positions (flatbuffer offsets) or at ``hot``
    positions (header fields of the format), inserts, deletes, duplicated chunks and truncation.

    The first ``protect`` bytes (the magic number) are left alone by position draws, which favour
    small offsets: a broken magic is one explicit example, not a quarter of the budget."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, max_ops))):
        if not data:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        n = len(data)
        low = protect if n > protect + 4 else 0
        where = draw(st.sampled_from(["any", "aligned", "hot"] if hot else ["any", "aligned"]))
        if where == "hot":
            pos = draw(st.sampled_from(list(hot)))
        elif where == "aligned":
            pos = 4 * draw(st.integers((low + 3) // 4, max((low + 3) // 4, (n - 1) // 4)))
        else:
            pos = draw(st.integers(low, n - 1))
        pos = min(pos, n - 1)
        op = draw(st.sampled_from(["flip", "byte", "int", "int", "insert", "delete", "dup", "truncate"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":
            fmt = draw(st.sampled_from("BHIQ"))
            width = _WIDTH[fmt]
            value = draw(
                st.one_of(
                    st.sampled_from(INTERESTING),
                    st.just(n),
                    st.just(n - pos),
                    st.integers(0, n + 64),
                    st.integers(0, (1 << (8 * width)) - 1),
                )
            ) & ((1 << (8 * width)) - 1)
            raw = struct.pack("<" + fmt, value)[: n - pos]
            data[pos : pos + len(raw)] = raw
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "dup":
            length = draw(st.integers(1, 256))
            dest = draw(st.integers(0, n - 1))
            data[dest:dest] = data[pos : pos + length]
        else:
            del data[pos:]
    return bytes(data)


def zip_hot_positions(data: bytes) -> list[int]:
    """Header fields of every zip record: methods, sizes, name/extra lengths, offsets, entry counts."""
    hot: list[int] = []
    for sig, fields in (
        (b"PK\x03\x04", (6, 8, 14, 18, 22, 26, 28)),
        (b"PK\x01\x02", (10, 16, 20, 24, 28, 30, 32, 38, 42)),
        (b"PK\x05\x06", (4, 8, 10, 12, 16, 20)),
        (b"PK\x06\x06", (24, 32, 40, 48)),
        (b"PK\x06\x07", (8,)),
    ):
        i = data.find(sig)
        while i >= 0:
            hot += [i + f for f in fields if i + f < len(data)]
            i = data.find(sig, i + 1)
    return hot


def elf_hot_positions(data: bytes) -> list[int]:
    """ELF64 header fields and each section header's name, type, offset, size and link."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:
        return []
    hot = [0x04, 0x05, 0x10, 0x12, 0x20, 0x28, 0x36, 0x38, 0x3A, 0x3C, 0x3E]
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    (phnum,) = struct.unpack_from("<H", data, 0x38)
    for i in range(shnum):
        base = shoff + 64 * i
        hot += [base + f for f in (0x00, 0x04, 0x18, 0x20, 0x28, 0x38) if base + f + 8 <= len(data)]
    for i in range(phnum):
        base = phoff + 56 * i
        hot += [base + f for f in (0x00, 0x08, 0x20, 0x28) if base + f + 8 <= len(data)]
    return hot


def dex_with_valid_checksums(data: bytes) -> bytes:
    """``data`` with its DEX header's file_size, SHA-1 signature and Adler-32 checksum recomputed, so a
    mutation reaches androguard's parser instead of its checksum check."""
    if len(data) < 0x70 or data[:4] != b"dex\n":
        return data
    out = bytearray(data)
    struct.pack_into("<I", out, 0x20, len(out))
    out[12:32] = hashlib.sha1(bytes(out[32:])).digest()
    struct.pack_into("<I", out, 8, zlib.adler32(bytes(out[12:])))
    return bytes(out)


def dex_hot_positions(data: bytes) -> list[int]:
    """DEX header size/offset pairs and the string id entries (offsets into the string data)."""
    if len(data) < 0x70:
        return []
    hot = list(range(0x20, 0x70, 4))
    n, off = struct.unpack_from("<II", data, 0x38)
    hot += [off + 4 * i for i in range(min(n, 256)) if off + 4 * i + 4 <= len(data)]
    return hot
