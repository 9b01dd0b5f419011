"""The live view's pure parts: the phase an operator sees for each combination of leg
statuses, agent status, and SSE framing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from callbridge.dashboard.views import agent_view, call_phase, call_view, sse_frame
from callbridge.domain.calls import (
    Call,
    CallState,
    CallStatus,
    Direction,
    Leg,
    LegSide,
    LegStatus,
)
from callbridge.store.users import DeviceRow, UserRow

AT = datetime(2026, 1, 15, 6, 30, tzinfo=UTC)


def a_call(state: CallState = CallState.ACTIVE, status: CallStatus | None = None) -> Call:
    return Call(
        sid="c1",
        account_sid="acme",
        direction=Direction.OUTBOUND,
        virtual_number="+912241499102",
        from_uri="+919900000001",
        to_uri="+919800000001",
        state=state,
        status=status,
        created_at=AT,
        updated_at=AT,
        start_at=AT,
    )


def a_leg(side: LegSide, status: LegStatus, seq: int = 1) -> Leg:
    return Leg(f"{side}{seq}", "c1", side, seq, "+91990000000" + str(seq), None, status, AT, AT)


F, T = LegSide.FROM, LegSide.TO
S = LegStatus


@pytest.mark.parametrize(
    ("legs", "phase"),
    [
        ([], "dialing"),
        ([(F, S.QUEUED)], "dialing"),
        ([(F, S.RINGING)], "ringing_from"),
        ([(F, S.IN_PROGRESS)], "waiting"),
        ([(F, S.IN_PROGRESS), (T, S.QUEUED)], "ringing_to"),
        ([(F, S.IN_PROGRESS), (T, S.RINGING)], "ringing_to"),
        ([(F, S.IN_PROGRESS), (T, S.IN_PROGRESS)], "connected"),
        ([(F, S.IN_PROGRESS), (T, S.NO_ANSWER)], "waiting"),
        ([(F, S.IN_PROGRESS), (T, S.CANCELED), (T, S.IN_PROGRESS)], "connected"),
        ([(F, S.COMPLETED), (T, S.IN_PROGRESS)], "ending"),
        ([(F, S.BUSY)], "ending"),
    ],
)
def test_active_call_phase_follows_its_legs(
    legs: list[tuple[LegSide, LegStatus]], phase: str
) -> None:
    built = [a_leg(side, status, seq) for seq, (side, status) in enumerate(legs, start=1)]
    assert call_phase(a_call(), built) == phase


def test_terminal_call_shows_its_status() -> None:
    call = a_call(CallState.TERMINAL, CallStatus.TO_LEG_UNANSWERED)
    assert call_phase(call, [a_leg(F, S.COMPLETED)]) == "to_leg_unanswered"


def test_call_view_orders_legs_from_first_and_gives_epoch_times() -> None:
    view = call_view(a_call(), [a_leg(T, S.RINGING, 2), a_leg(F, S.IN_PROGRESS, 1)], "Asia/Kolkata")
    assert [leg["side"] for leg in view["legs"]] == ["from", "to"]
    assert view["start_time"] == "2026-01-15 12:00:00+05:30"
    assert view["start_ms"] == int(AT.timestamp() * 1000)
    assert view["phase"] == "ringing_to"


def device(uri: str, available: bool) -> DeviceRow:
    return DeviceRow("d" + uri, "u1", "acme", None, uri, "tel", available, True, None, AT, AT)


@pytest.mark.parametrize(
    ("available", "busy", "status"),
    [
        (True, {}, "free"),
        (False, {}, "off"),
        (True, {"+1": "c9"}, "busy"),
        (False, {"+1": "c9"}, "busy"),
    ],
)
def test_agent_status_is_busy_free_or_off(
    available: bool, busy: dict[str, str], status: str
) -> None:
    user = UserRow("u1", "acme", "Asha", "Rao", None, "user", AT, AT)
    view = agent_view(user, [device("+1", available)], busy)
    assert view["status"] == status
    assert view["active_call"] == busy.get("+1")
    assert view["devices"][0]["status"] == ("busy" if busy else "free")


def test_sse_frame_is_one_event_with_one_data_line() -> None:
    frame = sse_frame("call", {"text": "two\nlines", "name": "Ásha"})
    lines = frame.split("\n")
    assert lines[0] == "event: call"
    assert lines[1].startswith("data: ") and frame.endswith("\n\n") and len(lines) == 4
    assert json.loads(lines[1][6:]) == {"text": "two\nlines", "name": "Ásha"}
