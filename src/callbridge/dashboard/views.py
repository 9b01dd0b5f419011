"""What the live view shows: calls, legs and agents as small JSON objects, and SSE framing.

Pure functions over domain and store rows; nothing here carries a secret (no tokens, no
recording links, no callback URLs), so a frame can go to any subscriber of the account.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from callbridge.domain.calls import Call, CallState, Leg, LegSide, LegStatus
from callbridge.domain.views import format_time
from callbridge.store.users import DeviceRow, UserRow


class Phase(StrEnum):
    """Where an active call is, as an operator reads it; a terminal call shows its status."""

    DIALING = "dialing"
    RINGING_FROM = "ringing_from"
    RINGING_TO = "ringing_to"
    WAITING = "waiting"
    CONNECTED = "connected"
    ENDING = "ending"


_RINGING = frozenset({LegStatus.QUEUED, LegStatus.RINGING})


def call_phase(call: Call, legs: Sequence[Leg]) -> str:
    """`connected` once a `from` and a `to` leg both talk, else which side is ringing;
    `waiting` while the `from` side talks and no `to` leg rings (wait audio, next agent)."""
    if call.state is CallState.TERMINAL:
        return call.status.value if call.status else "ended"
    from_legs = [leg for leg in legs if leg.side is LegSide.FROM]
    to_legs = [leg for leg in legs if leg.side is LegSide.TO]
    talking_from = any(leg.status is LegStatus.IN_PROGRESS for leg in from_legs)
    if talking_from and any(leg.status is LegStatus.IN_PROGRESS for leg in to_legs):
        return Phase.CONNECTED.value
    if any(leg.status in _RINGING for leg in to_legs):
        return Phase.RINGING_TO.value
    if any(leg.status is LegStatus.RINGING for leg in from_legs):
        return Phase.RINGING_FROM.value
    if talking_from:
        return Phase.WAITING.value
    if not from_legs or any(leg.status is LegStatus.QUEUED for leg in from_legs):
        return Phase.DIALING.value
    return Phase.ENDING.value


def epoch_ms(at: datetime | None) -> int | None:
    return None if at is None else round(at.timestamp() * 1000)


def leg_view(leg: Leg) -> dict[str, Any]:
    return {
        "sid": leg.sid,
        "side": leg.side.value,
        "contact_uri": leg.contact_uri,
        "name": leg.name,
        "status": leg.status.value,
    }


def call_view(call: Call, legs: Sequence[Leg], tz_name: str) -> dict[str, Any]:
    """One call as the page draws it. Times come twice: Exotel's local string for display and
    epoch milliseconds so the page can tick durations without parsing."""
    ordered = sorted(legs, key=lambda leg: (leg.side.value != "from", leg.seq, leg.created_at))
    total_duration: int | None = None
    if call.start_at is not None and call.end_at is not None:
        total_duration = max(0, round((call.end_at - call.start_at).total_seconds()))
    return {
        "sid": call.sid,
        "direction": call.direction.value,
        "from": call.from_uri,
        "to": call.to_uri,
        "virtual_number": call.virtual_number,
        "state": call.state.value,
        "status": call.status.value if call.status else None,
        "phase": call_phase(call, ordered),
        "app_name": call.app_name,
        "created_time": format_time(call.created_at, tz_name),
        "start_time": format_time(call.start_at, tz_name),
        "end_time": format_time(call.end_at, tz_name),
        "created_ms": epoch_ms(call.created_at),
        "start_ms": epoch_ms(call.start_at),
        "end_ms": epoch_ms(call.end_at),
        "updated_ms": epoch_ms(call.updated_at),
        "total_duration": total_duration,
        "total_talk_time": round(call.talk_time_s) if call.talk_time_s is not None else None,
        "legs": [leg_view(leg) for leg in ordered],
    }


def agent_view(
    user: UserRow, devices: Sequence[DeviceRow], busy: Mapping[str, str]
) -> dict[str, Any]:
    """A user and their devices: ON/OFF, verified, free/busy and the call holding each."""
    device_views = [
        {
            "id": d.id,
            "name": d.name,
            "contact_uri": d.contact_uri,
            "type": d.type,
            "available": d.available,
            "verified": d.verified,
            "status": "busy" if d.contact_uri in busy else "free",
            "active_call": busy.get(d.contact_uri),
        }
        for d in devices
    ]
    active_call = next((v["active_call"] for v in device_views if v["active_call"]), None)
    if active_call is not None:
        status = "busy"
    elif any(d.available for d in devices):
        status = "free"
    else:
        status = "off"
    return {
        "id": user.id,
        "name": user.name,
        "role": user.role,
        "status": status,
        "active_call": active_call,
        "devices": device_views,
    }


def sse_frame(event: str, data: Mapping[str, Any]) -> str:
    """One Server-Sent Event; the JSON has no newlines, so it is a single `data:` line."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n"


KEEP_ALIVE_FRAME = ": keep-alive\n\n"
