"""HTTP byte ranges (RFC 9110 §14): which part of a file a `Range` header asks for."""

from __future__ import annotations

import re

from callbridge.errors import RangeNotSatisfiable

_SINGLE = re.compile(r"\A\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*\Z", re.IGNORECASE)


def requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte positions a `Range` header selects in a file of `size`
    bytes, or None to send the whole file.

    A missing or malformed header, another unit, or several ranges give None: a server may
    ignore a Range it does not serve (§14.2), and players then simply get the file. A range that
    starts past the end (or an empty suffix) raises RangeNotSatisfiable (416)."""
    if header is None:
        return None
    match = _SINGLE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # bytes=-N: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size, f"range {header.strip()[:64]} selects no bytes")
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored, as §14.1.1 requires
    if start >= size:
        raise RangeNotSatisfiable(
            size, f"range {header.strip()[:64]} starts past the end ({size} bytes)"
        )
    return start, min(end, size - 1)
