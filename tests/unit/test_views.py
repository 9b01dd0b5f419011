from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callbridge.domain.calls import Call, CallState, CallStatus, Direction
from callbridge.domain.views import call_details, format_time

T0 = datetime(2022, 11, 2, 18, 19, 51, tzinfo=UTC)


def test_time_is_rendered_in_the_account_timezone_with_offset() -> None:
    assert format_time(T0, "Asia/Kolkata") == "2022-11-02 23:49:51+05:30"
    assert format_time(T0, "America/New_York") == "2022-11-02 14:19:51-04:00"
    assert format_time(None, "Asia/Kolkata") is None


def completed_call(start: datetime, end: datetime, **fields: Any) -> Call:
    return Call(
        sid="a" * 32,
        account_sid="acme",
        direction=Direction.OUTBOUND,
        virtual_number="+912241499102",
        from_uri="+919900000001",
        to_uri="+919800000001",
        state=CallState.TERMINAL,
        status=CallStatus.COMPLETED,
        created_at=start,
        updated_at=end,
        start_at=start,
        end_at=end,
        **fields,
    )


def test_call_details_has_exotel_fields_and_durations() -> None:
    call = replace(
        completed_call(
            T0,
            T0.replace(minute=20, second=31),
            talk_time_s=30.4,
            custom_field="order-1",
            recordings=("r1",),
        ),
        updated_at=T0.replace(second=59),
    )
    details = call_details(call, "Asia/Kolkata", lambda rid: f"https://x/{rid}.mp3")
    assert list(details) == [
        "sid",
        "direction",
        "virtual_number",
        "state",
        "status",
        "legs",
        "created_time",
        "updated_time",
        "start_time",
        "end_time",
        "total_duration",
        "total_talk_time",
        "custom_field",
        "app_id",
        "app_name",
        "digits",
        "recordings",
    ]
    assert details["legs"] == f"/v3/accounts/acme/calls/{'a' * 32}/legs"
    assert details["total_duration"] == 40
    assert details["total_talk_time"] == 30
    assert details["recordings"] == [{"url": "https://x/r1.mp3"}]
    assert details["end_time"] == "2022-11-02 23:50:31+05:30"


@pytest.mark.parametrize(
    ("start_us", "end_s", "end_us", "expected"),
    [(37_651, 35, 593_619, 35), (900_000, 3, 100_000, 3), (0, 0, 999_999, 0)],
)
def test_total_duration_is_the_difference_of_the_shown_times(
    start_us: int, end_s: int, end_us: int, expected: int
) -> None:
    start = datetime(2026, 11, 27, 15, 49, 50, start_us, tzinfo=UTC)
    end = start.replace(microsecond=0) + timedelta(seconds=end_s, microseconds=end_us)
    details = call_details(completed_call(start, end), "Asia/Kolkata")
    shown_start = datetime.fromisoformat(details["start_time"])
    shown_end = datetime.fromisoformat(details["end_time"])
    assert details["total_duration"] == expected == (shown_end - shown_start).total_seconds()
