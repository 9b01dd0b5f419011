"""Strict integers from paths and query strings, bounded to what the database columns hold.

Python reads more as a number than a client means: `'²'.isdigit()` is true, `int()` accepts
fullwidth digits and `1_0`, and raises on 5,000 digits. Every id or count taken from a URL goes
through here instead, so it is ASCII digits of a bounded length, within the range of the
column it is compared with (PostgreSQL refuses an out-of-range parameter outright, and SQLite
overflows past 64 bits).
"""

from __future__ import annotations

import re

from callbridge.errors import ValidationFailed

INT32_MAX = 2**31 - 1
"""The largest value of an `Integer` column (PostgreSQL `integer`)."""
INT64_MAX = 2**63 - 1
"""The largest value of a `BigInteger` column, and of any SQLite integer."""

_INTEGER = re.compile(r"-?[0-9]{1,19}")


def parse_int(raw: str) -> int | None:
    """`raw` as an integer when it is an optional `-` and 1 to 19 ASCII digits, else None."""
    if _INTEGER.fullmatch(raw) is None:
        return None
    return int(raw)


def row_id(raw: str, high: int = INT64_MAX) -> int | None:
    """A path's numeric id, or None when no row can have it (not a number, or out of range):
    the caller answers its 404."""
    value = parse_int(raw)
    if value is None or not 1 <= value <= high:
        return None
    return value


def query_int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    """A query parameter that must be an integer in `low..high`; 400 naming it otherwise."""
    if raw is None:
        return default
    value = parse_int(raw.strip())
    if value is None:
        raise ValidationFailed(f"{name} must be an integer")
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be between {low} and {high}")
    return value
