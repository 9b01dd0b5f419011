"""Calls and legs: statuses, the leg transition table, and how leg outcomes give a call's status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Direction(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class CallState(StrEnum):
    ACTIVE = "active"
    TERMINAL = "terminal"


class CallStatus(StrEnum):
    COMPLETED = "completed"
    FROM_LEG_UNANSWERED = "from_leg_unanswered"
    TO_LEG_UNANSWERED = "to_leg_unanswered"
    FROM_LEG_CANCELLED = "from_leg_cancelled"
    FROM_LEG_NO_DIAL = "from_leg_no_dial"
    TO_LEG_NO_DIAL = "to_leg_no_dial"


class LegSide(StrEnum):
    FROM = "from"
    TO = "to"


class LegStatus(StrEnum):
    QUEUED = "queued"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_LEG_STATUSES


_FINAL_LEG_STATUSES = frozenset(
    {
        LegStatus.COMPLETED,
        LegStatus.BUSY,
        LegStatus.NO_ANSWER,
        LegStatus.FAILED,
        LegStatus.CANCELED,
    }
)

LEG_TRANSITIONS: dict[LegStatus, frozenset[LegStatus]] = {
    LegStatus.QUEUED: frozenset(
        {
            LegStatus.RINGING,
            LegStatus.IN_PROGRESS,
            LegStatus.BUSY,
            LegStatus.NO_ANSWER,
            LegStatus.FAILED,
            LegStatus.CANCELED,
        }
    ),
    LegStatus.RINGING: frozenset(
        {
            LegStatus.IN_PROGRESS,
            LegStatus.BUSY,
            LegStatus.NO_ANSWER,
            LegStatus.FAILED,
            LegStatus.CANCELED,
        }
    ),
    LegStatus.IN_PROGRESS: frozenset({LegStatus.COMPLETED, LegStatus.FAILED}),
    LegStatus.COMPLETED: frozenset(),
    LegStatus.BUSY: frozenset(),
    LegStatus.NO_ANSWER: frozenset(),
    LegStatus.FAILED: frozenset(),
    LegStatus.CANCELED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


MAX_DIGITS = 256
"""A call keeps at most this many DTMF digits (the stored `digits` column's size)."""


def append_digits(digits: str | None, more: str) -> str:
    """The call's `digits` with `more` appended; keys beyond MAX_DIGITS are dropped."""
    return ((digits or "") + more)[:MAX_DIGITS]


def check_leg_transition(current: LegStatus, new: LegStatus) -> LegStatus:
    """Return `new` if a leg may move from `current` to it, else raise IllegalTransition."""
    if new not in LEG_TRANSITIONS[current]:
        raise IllegalTransition(f"leg cannot go from {current} to {new}")
    return new


class LegOutcome(StrEnum):
    """How a leg's attempt ended, as the engine saw it."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELED = "canceled"
    """We hung the leg up before it answered (the other side left, or another agent won)."""


UNANSWERED_OUTCOMES = frozenset({LegOutcome.BUSY, LegOutcome.NO_ANSWER, LegOutcome.REJECTED})


def leg_status_for_unanswered(outcome: LegOutcome) -> LegStatus:
    """The final leg status of a leg that never answered. A rejected call reads as `busy`,
    as carriers report a declined call (SIP 603) to the caller."""
    return {
        LegOutcome.BUSY: LegStatus.BUSY,
        LegOutcome.REJECTED: LegStatus.BUSY,
        LegOutcome.NO_ANSWER: LegStatus.NO_ANSWER,
        LegOutcome.FAILED: LegStatus.FAILED,
        LegOutcome.CANCELED: LegStatus.CANCELED,
    }[outcome]


def derive_outbound_status(from_outcome: LegOutcome, to_outcome: LegOutcome | None) -> CallStatus:
    """The terminal status of a click-to-call from how its two legs ended.

    `to_outcome` is None when leg 2 was never dialled."""
    if from_outcome is LegOutcome.FAILED:
        return CallStatus.FROM_LEG_NO_DIAL
    if from_outcome is not LegOutcome.ANSWERED:
        return CallStatus.FROM_LEG_UNANSWERED
    if to_outcome is None or to_outcome is LegOutcome.CANCELED:
        return CallStatus.FROM_LEG_CANCELLED
    if to_outcome is LegOutcome.ANSWERED:
        return CallStatus.COMPLETED
    if to_outcome is LegOutcome.FAILED:
        return CallStatus.TO_LEG_NO_DIAL
    return CallStatus.TO_LEG_UNANSWERED


def derive_inbound_status(
    agent_outcomes: list[LegOutcome], customer_left_first: bool
) -> CallStatus:
    """The terminal status of an inbound call. `from` is the customer, `to` the agents.

    An agent answered → completed. The customer hung up while agents rang →
    from_leg_cancelled. Agents were tried and none answered → to_leg_unanswered. Nobody
    could be dialled at all (no free agent, or every dial failed) → to_leg_no_dial."""
    if LegOutcome.ANSWERED in agent_outcomes:
        return CallStatus.COMPLETED
    if customer_left_first:
        return CallStatus.FROM_LEG_CANCELLED
    if any(o in UNANSWERED_OUTCOMES for o in agent_outcomes):
        return CallStatus.TO_LEG_UNANSWERED
    return CallStatus.TO_LEG_NO_DIAL


@dataclass(frozen=True, slots=True)
class Leg:
    sid: str
    call_sid: str
    side: LegSide
    seq: int
    contact_uri: str
    name: str | None
    status: LegStatus
    created_at: datetime
    updated_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    group_id: int | None = None
    group_name: str | None = None


@dataclass(frozen=True, slots=True)
class Call:
    sid: str
    account_sid: str
    direction: Direction
    virtual_number: str
    from_uri: str
    to_uri: str | None
    state: CallState
    status: CallStatus | None
    created_at: datetime
    updated_at: datetime
    start_at: datetime | None = None
    end_at: datetime | None = None
    talk_time_s: float | None = None
    custom_field: str | None = None
    app_id: str | None = None
    app_name: str | None = None
    digits: str | None = None
    recordings: tuple[str, ...] = field(default_factory=tuple)
    """Recording ids; the API turns each into a URL."""
