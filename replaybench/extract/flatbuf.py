"""A minimal, bounds-checked FlatBuffers table reader that remembers how far into the buffer it read.

Why our own instead of the generated TFLite classes: the input is untrusted (any offset may point
anywhere), the TFLite Support metadata schema is not shipped with any installed package, and pulling an
embedded model out of a native library byte-exact needs the *extent* of the flatbuffer (FlatBuffers
carry no total size): every read records the furthest byte touched, so walking the whole object graph
gives the model's end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from replaybench.errors import CorruptInputError


class FlatbufferError(CorruptInputError, ValueError):
    """The bytes are not a well-formed flatbuffer (an offset or length points outside the buffer).

    A typed replaybench error (exit code 5); still a ``ValueError`` for callers that catch those."""


# Reads allowed per byte of buffer (plus a floor). A well-formed flatbuffer is a tree read about once per
# byte; offsets are free to point at one table many times (a vector of 100k entries naming one subgraph
# whose tensor vector names one tensor 100k times), which turns a 1 MB buffer into 10^10 reads.
# The ceiling keeps one hostile header inside a large buffer (a fake model at the start of a 100 MB
# .rodata) to seconds; real models, even with 100k tensors, need a few million reads.
READS_PER_BYTE = 32
READS_FLOOR = 1 << 16
READS_CEILING = 8 << 20


@dataclass
class Reader:
    """Bounds-checked access to ``buf``; ``end`` is the furthest byte any read touched.

    Every read counts against a budget proportional to the buffer's size, so hostile offsets that
    revisit the same objects raise ``FlatbufferError`` instead of looping for hours."""

    buf: bytes | bytearray | memoryview
    end: int = 0
    limit: int = field(default=-1)
    reads: int = 0

    def __post_init__(self) -> None:
        if self.limit < 0:
            self.limit = len(self.buf)
        self.budget = min(READS_CEILING, READS_FLOOR + READS_PER_BYTE * self.limit)

    def _check(self, pos: int, n: int) -> None:
        if pos < 0 or n < 0 or pos + n > self.limit:
            raise FlatbufferError(f"read of {n} bytes at {pos} outside buffer of {self.limit}")
        if pos + n > self.end:
            self.end = pos + n
        self.reads += 1
        if self.reads > self.budget:
            raise FlatbufferError(
                f"more than {self.budget:,} reads in a {self.limit:,}-byte flatbuffer: its offsets "
                "revisit the same objects over and over (malformed or hostile)"
            )

    def u8(self, pos: int) -> int:
        self._check(pos, 1)
        return self.buf[pos]

    def u16(self, pos: int) -> int:
        self._check(pos, 2)
        return int(struct.unpack_from("<H", self.buf, pos)[0])

    def i32(self, pos: int) -> int:
        self._check(pos, 4)
        return int(struct.unpack_from("<i", self.buf, pos)[0])

    def u32(self, pos: int) -> int:
        self._check(pos, 4)
        return int(struct.unpack_from("<I", self.buf, pos)[0])

    def u64(self, pos: int) -> int:
        self._check(pos, 8)
        return int(struct.unpack_from("<Q", self.buf, pos)[0])

    def root(self) -> Table:
        return Table(self, self.u32(0))

    def span(self, pos: int, n: int) -> bytes:
        self._check(pos, n)
        return bytes(self.buf[pos : pos + n])


@dataclass
class Table:
    """One flatbuffer table: fields are addressed by their index in the schema (0, 1, 2, ...)."""

    r: Reader
    pos: int

    def _field(self, index: int) -> int | None:
        vt = self.pos - self.r.i32(self.pos)
        vt_len = self.r.u16(vt)
        # The inline table size: touch the whole inline table so the extent covers its scalars too.
        self.r._check(self.pos, max(self.r.u16(vt + 2), 4))
        slot = 4 + 2 * index
        if slot + 2 > vt_len:
            return None
        off = self.r.u16(vt + slot)
        return self.pos + off if off else None

    def touch(self) -> None:
        """Mark the whole vtable and inline table as read (for tables whose fields are not decoded)."""
        vt = self.pos - self.r.i32(self.pos)
        self.r._check(vt, self.r.u16(vt))
        self.r._check(self.pos, max(self.r.u16(vt + 2), 4))

    def scalar(self, index: int, fmt: str, default: int | float = 0) -> int | float:
        p = self._field(index)
        if p is None:
            return default
        size = struct.calcsize(fmt)
        self.r._check(p, size)
        return struct.unpack_from("<" + fmt, self.r.buf, p)[0]  # type: ignore[no-any-return]

    def _indirect(self, index: int) -> int | None:
        p = self._field(index)
        return None if p is None else p + self.r.u32(p)

    def string(self, index: int) -> str | None:
        p = self._indirect(index)
        if p is None:
            return None
        n = self.r.u32(p)
        data = self.r.span(p + 4, n + 1)  # + the terminating NUL, part of the encoding
        return data[:-1].decode("utf-8", "replace")

    def table(self, index: int) -> Table | None:
        p = self._indirect(index)
        return None if p is None else Table(self.r, p)

    def vector_len(self, index: int) -> tuple[int, int] | None:
        """(position of the first element, count) of a vector field."""
        p = self._indirect(index)
        if p is None:
            return None
        return p + 4, self.r.u32(p)

    def tables(self, index: int) -> list[Table]:
        v = self.vector_len(index)
        if v is None:
            return []
        start, n = v
        self.r._check(start, 4 * n)
        return [Table(self.r, start + 4 * i + self.r.u32(start + 4 * i)) for i in range(n)]

    def strings(self, index: int) -> list[str]:
        v = self.vector_len(index)
        if v is None:
            return []
        start, n = v
        out = []
        for i in range(n):
            p = start + 4 * i + self.r.u32(start + 4 * i)
            k = self.r.u32(p)
            out.append(self.r.span(p + 4, k + 1)[:-1].decode("utf-8", "replace"))
        return out

    def scalars(self, index: int, fmt: str) -> list[int | float]:
        v = self.vector_len(index)
        if v is None:
            return []
        start, n = v
        size = struct.calcsize(fmt)
        self.r._check(start, size * n)
        return list(struct.unpack_from(f"<{n}{fmt}", self.r.buf, start))

    def bytes_span(self, index: int) -> tuple[int, int] | None:
        """(start, length) of a [ubyte] vector without copying it."""
        v = self.vector_len(index)
        if v is None:
            return None
        start, n = v
        self.r._check(start, n)
        return start, n
