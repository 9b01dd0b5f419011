"""Exotel v1 shapes of a call: the `Call` resource of the Calls API and the fields of v1 status
callbacks, rendered in the account's timezone. Pure: no I/O.

v1 reports one overall `Status` (queued, ringing, in-progress, completed, failed, busy,
no-answer) where v3 has a state and a terminal status; `v1_status` is that mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from callbridge.domain.callbacks import FlatFields
from callbridge.domain.calls import Call, CallState, CallStatus, Direction, Leg, LegSide, LegStatus
from callbridge.domain.options import V1Callbacks
from callbridge.domain.views import total_duration_s, zone

_UNANSWERED = {
    LegStatus.BUSY: "busy",
    LegStatus.NO_ANSWER: "no-answer",
    LegStatus.FAILED: "failed",
}


def format_v1_time(at: datetime | None, tz_name: str) -> str | None:
    """v1's `YYYY-MM-DD HH:mm:ss`, in the account's timezone, without an offset."""
    if at is None:
        return None
    return at.astimezone(zone(tz_name)).strftime("%Y-%m-%d %H:%M:%S")


def _sides(legs: Sequence[Leg]) -> tuple[Leg | None, list[Leg]]:
    ordered = sorted(legs, key=lambda leg: (leg.seq, leg.created_at))
    froms = [leg for leg in ordered if leg.side is LegSide.FROM]
    return (froms[0] if froms else None), [leg for leg in ordered if leg.side is LegSide.TO]


@dataclass(frozen=True, slots=True)
class _V1Legs:
    """A call's legs as v1 reports them: leg 1 (the `from` leg), leg 2 (`_second_leg`) and
    every leg in dialling order."""

    leg1_status: str | None
    leg2_status: str | None
    ordered: list[Leg]


def _second_leg(to_legs: list[Leg]) -> Leg | None:
    """The `to` leg v1 reports as leg 2: the one that answered, else the last one tried."""
    answered = [leg for leg in to_legs if leg.answered_at is not None]
    return answered[0] if answered else (to_legs[-1] if to_legs else None)


def _v1_legs(legs: Sequence[Leg]) -> _V1Legs:
    first, to_legs = _sides(legs)
    second = _second_leg(to_legs)
    return _V1Legs(
        leg1_status=first.status.value if first is not None else None,
        leg2_status=second.status.value if second is not None else None,
        ordered=[leg for leg in (first, *to_legs) if leg is not None],
    )


def v1_status(call: Call, legs: Sequence[Leg]) -> str:
    """The overall v1 `Status` of a call.

    While active it follows leg 1 (queued → ringing → in-progress). Once over: completed when
    the parties talked, or when leg 1 answered a call that ran a flow (the flow is the other
    party, as in Exotel); failed when a leg could not be dialled; otherwise how the leg that
    did not answer ended (busy or no-answer; a leg we hung up while it rang is no-answer)."""
    first, to_legs = _sides(legs)
    if call.state is CallState.ACTIVE:
        if first is not None and first.status is LegStatus.IN_PROGRESS:
            return "in-progress"
        if first is not None and first.status is LegStatus.RINGING:
            return "ringing"
        return "queued"
    if call.status is CallStatus.COMPLETED:
        return "completed"
    if call.app_id is not None and first is not None and first.answered_at is not None:
        return "completed"
    if call.status in (CallStatus.FROM_LEG_NO_DIAL, CallStatus.TO_LEG_NO_DIAL):
        return "failed"
    leg = first if call.status is CallStatus.FROM_LEG_UNANSWERED else _second_leg(to_legs)
    return _UNANSWERED.get(leg.status, "no-answer") if leg is not None else "no-answer"


def _on_call_s(leg: Leg) -> int:
    if leg.answered_at is None:
        return 0
    end = leg.ended_at or leg.updated_at
    return max(0, int((end - leg.answered_at).total_seconds()))


def v1_direction(call: Call) -> str:
    return "outbound-api" if call.direction is Direction.OUTBOUND else "inbound"


def _to_number(call: Call) -> str | None:
    """v1's `To`: the number dialled second, or the ExoPhone for calls that ran a flow."""
    if call.direction is Direction.OUTBOUND and call.app_id is None:
        return call.to_uri
    return call.virtual_number


def _conversation_s(call: Call) -> int:
    return round(call.talk_time_s or 0.0)


def _recording(call: Call, recording_url: Callable[[str], str] | None) -> str | None:
    if not call.recordings:
        return None
    render = recording_url or (lambda rid: rid)
    return render(call.recordings[0])


def v1_call(
    call: Call,
    legs: Sequence[Leg],
    tz_name: str,
    recording_url: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """The v1 `Call` resource (connect response, call details, bulk listing item)."""
    summary = _v1_legs(legs)
    recording = _recording(call, recording_url)
    return {
        "Sid": call.sid,
        "ParentCallSid": None,
        "DateCreated": format_v1_time(call.created_at, tz_name),
        "DateUpdated": format_v1_time(call.updated_at, tz_name),
        "AccountSid": call.account_sid,
        "To": _to_number(call),
        "From": call.from_uri,
        "PhoneNumberSid": call.virtual_number,
        "Status": v1_status(call, legs),
        "StartTime": format_v1_time(call.start_at, tz_name),
        "EndTime": format_v1_time(call.end_at, tz_name),
        "Duration": total_duration_s(call),
        "Price": None,
        "Direction": v1_direction(call),
        "AnsweredBy": None,
        "ForwardedFrom": None,
        "CallerName": None,
        "Uri": f"/v1/Accounts/{call.account_sid}/Calls/{call.sid}.json",
        "RecordingUrl": recording,
        "PreSignedRecordingUrl": recording,
        "CustomField": call.custom_field,
        "Details": {
            "ConversationDuration": _conversation_s(call),
            "Leg1Status": summary.leg1_status,
            "Leg2Status": summary.leg2_status,
            "Legs": [
                {"Leg": {"Id": index, "OnCallDuration": _on_call_s(leg)}}
                for index, leg in enumerate(summary.ordered, start=1)
            ],
        },
    }


def v1_callback_fields(
    call: Call,
    legs: Sequence[Leg],
    tz_name: str,
    style: V1Callbacks,
    recording_url: Callable[[str], str] | None = None,
) -> FlatFields:
    """The fields of a v1 status callback: the four Exotel always sends, and with subscribed
    events (`StatusCallbackEvents`) the event fields too (`EventType` is filled per event)."""
    fields = FlatFields(
        CallSid=call.sid,
        Status=v1_status(call, legs),
        RecordingUrl=_recording(call, recording_url),
        DateUpdated=format_v1_time(call.updated_at, tz_name),
    )
    if style is V1Callbacks.BASIC:
        return fields
    summary = _v1_legs(legs)
    fields.update(
        EventType=None,
        DateCreated=format_v1_time(call.created_at, tz_name),
        To=_to_number(call),
        From=call.from_uri,
        PhoneNumberSid=call.virtual_number,
        StartTime=format_v1_time(call.start_at, tz_name),
        EndTime=format_v1_time(call.end_at, tz_name),
        ConversationDuration=_conversation_s(call),
        Direction=v1_direction(call),
        CustomField=call.custom_field,
        Leg1Status=summary.leg1_status,
        Leg2Status=summary.leg2_status,
        Legs=[
            {"OnCallDuration": _on_call_s(leg), "Status": leg.status.value}
            for leg in summary.ordered
        ],
    )
    return fields
