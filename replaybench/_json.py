"""JSON from untrusted files (traces, scraped posts, bundle documents): every failure is a ValueError.

``json.loads`` fails in ways a caller catching ``JSONDecodeError`` misses: a bare ``ValueError`` for an
integer longer than Python's int-string limit, ``UnicodeDecodeError`` for invalid UTF-8 bytes and
``RecursionError`` for nesting deeper than the interpreter's recursion limit (a line of 100k ``[``).
"""

from __future__ import annotations

import json
from typing import Any


def loads_untrusted(text: str | bytes | bytearray) -> Any:
    """``json.loads`` that raises only ``ValueError`` (``JSONDecodeError`` among them) on bad input."""
    try:
        return json.loads(text)
    except RecursionError as e:
        raise ValueError("JSON nested deeper than the recursion limit") from e
