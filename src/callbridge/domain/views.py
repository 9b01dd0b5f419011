"""Exotel wire shapes of calls and legs, rendered in the account's timezone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from callbridge.domain.calls import Call, CallState, Leg, LegSide
from callbridge.domain.options import V1Callbacks


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def format_time(at: datetime | None, tz_name: str) -> str | None:
    """Exotel's `YYYY-MM-DD HH:mm:ss+05:30` in the account's timezone."""
    if at is None:
        return None
    return _format_time(at, tz_name)


@lru_cache(maxsize=16_384)
def _format_time(at: datetime, tz_name: str) -> str:
    # Cached: a call's timestamps are rendered on every GET, callback and live update.
    # isoformat(" ", "seconds") is exactly this shape, offset included ("+05:30", "-04:00").
    return at.astimezone(zone(tz_name)).isoformat(" ", "seconds")


def legs_path(account_sid: str, call_sid: str) -> str:
    return f"/v3/accounts/{account_sid}/calls/{call_sid}/legs"


def total_duration_s(call: Call) -> int | None:
    """Whole seconds between the shown start and end times (which drop fractions), so the
    duration is always end - start as the client reads them; None until the call ends."""
    if call.start_at is None or call.end_at is None:
        return None
    shown = call.end_at.replace(microsecond=0) - call.start_at.replace(microsecond=0)
    return max(0, int(shown.total_seconds()))


def call_details(
    call: Call, tz_name: str, recording_url: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """The `call_details` object of the v3 API and of status callbacks."""
    total_duration = total_duration_s(call)
    # Known once the call is over (null while active, as Exotel answers).
    talk = round(call.talk_time_s or 0.0) if call.state is CallState.TERMINAL else None
    recordings: list[dict[str, str]] | None = None
    if call.recordings:
        render = recording_url or (lambda rid: rid)
        recordings = [{"url": render(rid)} for rid in call.recordings]
    return {
        "sid": call.sid,
        "direction": call.direction.value,
        "virtual_number": call.virtual_number,
        "state": call.state.value,
        "status": call.status.value if call.status else None,
        "legs": legs_path(call.account_sid, call.sid),
        "created_time": format_time(call.created_at, tz_name),
        "updated_time": format_time(call.updated_at, tz_name),
        "start_time": format_time(call.start_at, tz_name),
        "end_time": format_time(call.end_at, tz_name),
        "total_duration": total_duration,
        "total_talk_time": talk,
        "custom_field": call.custom_field,
        "app_id": call.app_id,
        "app_name": call.app_name,
        "digits": call.digits,
        "recordings": recordings,
    }


def leg_view(leg: Leg, tz_name: str) -> dict[str, Any]:
    view: dict[str, Any] = {
        "sid": leg.sid,
        "name": leg.name,
        "contact_uri": leg.contact_uri,
        "date_created": format_time(leg.created_at, tz_name),
        "date_updated": format_time(leg.updated_at, tz_name),
        "status": leg.status.value,
    }
    if leg.side is LegSide.TO:
        view["group_id"] = leg.group_id
        view["group_name"] = leg.group_name
    return view


def leg_details(
    account_sid: str, call_sid: str, legs: Sequence[Leg], tz_name: str
) -> dict[str, Any]:
    ordered = sorted(legs, key=lambda leg: (leg.seq, leg.created_at))
    return {
        "call_sid": call_sid,
        "account_sid": account_sid,
        "from": [leg_view(leg, tz_name) for leg in ordered if leg.side is LegSide.FROM],
        "to": [leg_view(leg, tz_name) for leg in ordered if leg.side is LegSide.TO],
    }


def callback_details(
    call: Call,
    legs: Sequence[Leg],
    tz_name: str,
    *,
    v2_agent: tuple[str | None, str | None] | None,
    recording_url: Callable[[str], str] | None = None,
    v1: V1Callbacks | None = None,
) -> dict[str, Any]:
    """`call_details` for a status callback: v3 names, v2 names for calls made through v2, or
    v1's flat fields (the whole document, see FlatFields) for calls made through v1."""
    if v1 is not None:
        from callbridge.domain.v1_views import v1_callback_fields

        return v1_callback_fields(call, legs, tz_name, v1, recording_url)
    details = call_details(call, tz_name, recording_url)
    if v2_agent is None:
        return details
    from callbridge.domain.users import V2Agent, v2_call_details

    customer = [leg for leg in legs if leg.side is LegSide.TO]
    return v2_call_details(
        details,
        agent=V2Agent(*v2_agent),
        customer_uri=call.to_uri,
        customer_status=customer[-1].status.value if customer else None,
    )
