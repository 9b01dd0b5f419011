"""Which bytes a `Range` header selects (RFC 9110 §14), including the ones a server ignores."""

from __future__ import annotations

import pytest

from callbridge.api.byte_ranges import requested_range
from callbridge.errors import RangeNotSatisfiable


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, 999)),
        ("bytes=-50", (950, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        ("BYTES = 1 - 2", (1, 2)),
        ("bytes=5-1", None),  # invalid: ignored
        ("bytes=-", None),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file instead
        ("items=0-1", None),
        ("bytes=a-b", None),
    ],
)
def test_range_selects_inclusive_positions_or_the_whole_file(
    header: str | None, expected: tuple[int, int] | None
) -> None:
    assert requested_range(header, 1000) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=1000-", 1000), ("bytes=-0", 1000), ("bytes=0-", 0)]
)
def test_a_range_past_the_end_is_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        requested_range(header, size)
    assert raised.value.size == size and raised.value.http_status == 416
