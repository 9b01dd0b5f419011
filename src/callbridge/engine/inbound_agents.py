"""The agents of an inbound call: in-process claims and compare-and-set busy marks taken with the
new `to` legs in one transaction, dialling, freeing (and cooling down) agents who did not take
the call, and the `to` legs that record who was skipped and why."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.calls import Call, Leg, LegOutcome, LegSide, LegStatus, check_leg_transition
from callbridge.domain.routing import Candidate, SkipReason, skipped_leg_status
from callbridge.ids import new_sid
from callbridge.store import flows as flow_store
from callbridge.store import users as user_store
from callbridge.telephony.base import DialRequest, DriverError, TelephonyDriver

log = logging.getLogger(__name__)

MAX_ATTEMPTS_PER_CALL = 200
"""A safety cap on `to` legs per call (a dynamic URL that keeps answering new numbers)."""


@dataclass(slots=True)
class Attempt:
    """One agent offered the call: their `to` leg and how it ended."""

    leg: Leg
    candidate: Candidate
    outcome: LegOutcome | None = None


def set_leg_status(leg: Leg, status: LegStatus, at: Any, **changes: Any) -> Leg:
    check_leg_transition(leg.status, status)
    return replace(leg, status=status, updated_at=at, **changes)


class AgentClaims:
    """(account, contact URI) pairs one of this node's calls is marking or holding busy, so that
    concurrent calls on one node spread over agents instead of racing for the same mark."""

    def __init__(self) -> None:
        self._claims: set[tuple[str, str]] = set()

    def claim(self, account_sid: str, contact_uri: str) -> bool:
        key = (account_sid, contact_uri)
        if key in self._claims:
            return False
        self._claims.add(key)
        return True

    def release(self, account_sid: str, contact_uris: Iterable[str]) -> None:
        for uri in contact_uris:
            self._claims.discard((account_sid, uri))


@dataclass(frozen=True, slots=True)
class Offer:
    """Who a call is about to ring: the candidates in order, and whether to ring them all."""

    call: Call
    node_id: str
    ordered: Sequence[Candidate]
    ring_all: bool
    first_seq: int
    now: datetime


async def reserve_agents(
    conn: AsyncConnection,
    claims: AgentClaims,
    offer: Offer,
    *,
    tried: set[str],
    skipped: dict[str, tuple[Candidate, SkipReason]],
    new: list[Attempt],
) -> None:
    """Claim and mark the next agent (every agent, for ring-all) and build their queued `to`
    legs into `new`; agents already claimed here or marked elsewhere are skipped as busy.

    `new` is filled in place so that a caller whose transaction fails can free the claims."""
    account_sid = offer.call.account_sid
    for candidate in offer.ordered:
        tried.add(candidate.key)
        if candidate.state_managed:
            if not claims.claim(account_sid, candidate.contact_uri):
                skipped[candidate.key] = (candidate, SkipReason.BUSY)
                continue
            try:
                got = await flow_store.try_mark_busy(
                    conn,
                    account_sid=account_sid,
                    contact_uri=candidate.contact_uri,
                    call_sid=offer.call.sid,
                    owner_node=offer.node_id,
                    now=offer.now,
                )
            except BaseException:
                claims.release(account_sid, [candidate.contact_uri])
                raise
            if not got:
                # Taken since the snapshot (e.g. a click-to-call, another node).
                claims.release(account_sid, [candidate.contact_uri])
                skipped[candidate.key] = (candidate, SkipReason.BUSY)
                continue
        leg = Leg(
            sid=new_sid(),
            call_sid=offer.call.sid,
            side=LegSide.TO,
            seq=offer.first_seq + len(new),
            contact_uri=candidate.contact_uri,
            name=candidate.name,
            status=LegStatus.QUEUED,
            created_at=offer.now,
            updated_at=offer.now,
            group_id=candidate.group_id,
            group_name=candidate.group_name,
        )
        new.append(Attempt(leg, candidate))
        if not offer.ring_all:
            break


async def dial_agent(
    driver: TelephonyDriver, call: Call, attempt: Attempt, ring_timeout_s: float
) -> bool:
    """Ask the driver to ring the agent; False when it cannot."""
    try:
        await driver.dial(
            DialRequest(
                leg_sid=attempt.leg.sid,
                call_sid=call.sid,
                account_sid=call.account_sid,
                contact_uri=attempt.leg.contact_uri,
                caller_id=call.virtual_number,
                ring_timeout_s=ring_timeout_s,
            )
        )
    except DriverError as exc:
        log.warning(
            "dial failed",
            extra={"call_sid": call.sid, "leg": attempt.leg.sid, "error": str(exc)},
        )
        return False
    return True


async def release_agents(
    conn: AsyncConnection,
    call: Call,
    contact_uris: Sequence[str],
    cooling_user_ids: Sequence[str],
    cooldown_s: float,
    now: datetime,
) -> None:
    """Free the call's busy marks on these agents (applying availability changes made while
    they rang) and cool down the ones who let the call ring out or turned it down."""
    await flow_store.release_marks(conn, call.account_sid, list(contact_uris), call.sid)
    await user_store.apply_pending_availability(conn, call.account_sid, list(contact_uris), now)
    if cooling_user_ids:
        until = now + timedelta(seconds=cooldown_s)
        await flow_store.set_cooldown(conn, list(cooling_user_ids), until, now)


def end_attempts(attempts: Sequence[Attempt], now: datetime) -> list[Leg]:
    """The call ends: a talking agent's leg completes, a still-ringing one is canceled."""
    legs: list[Leg] = []
    for attempt in attempts:
        if attempt.leg.status is LegStatus.IN_PROGRESS:
            attempt.leg = set_leg_status(attempt.leg, LegStatus.COMPLETED, now, ended_at=now)
        elif not attempt.leg.status.is_final:
            attempt.outcome = LegOutcome.CANCELED
            attempt.leg = set_leg_status(attempt.leg, LegStatus.CANCELED, now, ended_at=now)
        legs.append(attempt.leg)
    return legs


def skipped_history(
    call_sid: str, skipped: Iterable[tuple[Candidate, SkipReason]], now: datetime
) -> list[Leg]:
    """Nobody could be dialled: record who was skipped and why, as `to` legs."""
    legs: list[Leg] = []
    for candidate, reason in skipped:
        legs.append(
            Leg(
                sid=new_sid(),
                call_sid=call_sid,
                side=LegSide.TO,
                seq=len(legs) + 1,
                contact_uri=candidate.contact_uri or "",
                name=candidate.name,
                status=skipped_leg_status(reason),
                created_at=now,
                updated_at=now,
                ended_at=now,
                group_id=candidate.group_id,
                group_name=candidate.group_name,
            )
        )
    return legs
