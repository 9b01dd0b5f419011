"""Calls and legs: rows in and out of the domain types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.calls import (
    Call,
    CallState,
    CallStatus,
    Direction,
    Leg,
    LegSide,
    LegStatus,
)
from callbridge.domain.options import CallOptions
from callbridge.store.nodes import owner_not_live
from callbridge.store.repo import utc, utc_required
from callbridge.store.tables import calls, legs


def call_from_row(row: Any) -> Call:
    m = row._mapping
    return Call(
        sid=m["sid"],
        account_sid=m["account_sid"],
        direction=Direction(m["direction"]),
        virtual_number=m["virtual_number"],
        from_uri=m["from_uri"],
        to_uri=m["to_uri"],
        state=CallState(m["state"]),
        status=CallStatus(m["status"]) if m["status"] else None,
        created_at=utc_required(m["created_at"]),
        updated_at=utc_required(m["updated_at"]),
        start_at=utc(m["start_at"]),
        end_at=utc(m["end_at"]),
        talk_time_s=m["talk_time_s"],
        custom_field=m["custom_field"],
        app_id=m["app_id"],
        app_name=m["app_name"],
        digits=m["digits"],
        recordings=tuple(m["recordings"] or ()),
    )


def leg_from_row(row: Any) -> Leg:
    m = row._mapping
    return Leg(
        sid=m["sid"],
        call_sid=m["call_sid"],
        side=LegSide(m["side"]),
        seq=m["seq"],
        contact_uri=m["contact_uri"],
        name=m["name"],
        status=LegStatus(m["status"]),
        created_at=utc_required(m["created_at"]),
        updated_at=utc_required(m["updated_at"]),
        answered_at=utc(m["answered_at"]),
        ended_at=utc(m["ended_at"]),
        group_id=m["group_id"],
        group_name=m["group_name"],
    )


def call_values(call: Call) -> dict[str, Any]:
    return {
        "state": call.state.value,
        "status": call.status.value if call.status else None,
        "updated_at": call.updated_at,
        "start_at": call.start_at,
        "end_at": call.end_at,
        "talk_time_s": call.talk_time_s,
        "digits": call.digits,
        "recordings": list(call.recordings) or None,
        "app_id": call.app_id,
        "app_name": call.app_name,
        "to_uri": call.to_uri,
    }


def leg_values(leg: Leg) -> dict[str, Any]:
    return {
        "status": leg.status.value,
        "updated_at": leg.updated_at,
        "answered_at": leg.answered_at,
        "ended_at": leg.ended_at,
        "name": leg.name,
    }


async def insert_call(
    conn: AsyncConnection, call: Call, options: CallOptions, owner_node: str | None
) -> None:
    await conn.execute(
        insert(calls).values(
            sid=call.sid,
            account_sid=call.account_sid,
            direction=call.direction.value,
            virtual_number=call.virtual_number,
            from_uri=call.from_uri,
            custom_field=call.custom_field,
            options=options.to_json(),
            owner_node=owner_node,
            created_at=call.created_at,
            **call_values(call),
        )
    )


async def update_call(conn: AsyncConnection, call: Call) -> None:
    await conn.execute(update(calls).where(calls.c.sid == call.sid).values(**call_values(call)))


async def insert_leg(conn: AsyncConnection, leg: Leg) -> None:
    await conn.execute(
        insert(legs).values(
            sid=leg.sid,
            call_sid=leg.call_sid,
            side=leg.side.value,
            seq=leg.seq,
            contact_uri=leg.contact_uri,
            group_id=leg.group_id,
            group_name=leg.group_name,
            created_at=leg.created_at,
            **leg_values(leg),
        )
    )


async def update_leg(conn: AsyncConnection, leg: Leg) -> None:
    await conn.execute(update(legs).where(legs.c.sid == leg.sid).values(**leg_values(leg)))


async def get_call(conn: AsyncConnection, account_sid: str, call_sid: str) -> Call | None:
    row = (
        await conn.execute(
            select(calls).where(calls.c.sid == call_sid, calls.c.account_sid == account_sid)
        )
    ).first()
    return call_from_row(row) if row else None


async def get_call_options(conn: AsyncConnection, call_sid: str) -> CallOptions | None:
    value = (await conn.execute(select(calls.c.options).where(calls.c.sid == call_sid))).scalar()
    return CallOptions.from_json(value) if value is not None else None


async def get_legs(conn: AsyncConnection, call_sid: str) -> list[Leg]:
    rows = await conn.execute(
        select(legs).where(legs.c.call_sid == call_sid).order_by(legs.c.side, legs.c.seq)
    )
    return [leg_from_row(r) for r in rows]


ORPHAN_BATCH = 100
"""Orphaned calls ended per transaction: bounded, so a node with thousands of orphans to end
never holds a long transaction (and its own lease keeps renewing beside it)."""


async def lock_orphan_calls(
    conn: AsyncConnection, limit: int = ORPHAN_BATCH
) -> list[tuple[Call, str | None, CallOptions]]:
    """Up to `limit` active calls whose owner node is not live, with that owner and the call's
    options. On PostgreSQL the rows stay locked until the transaction ends and rows another
    node is ending are skipped (SKIP LOCKED), so two reconcilers never work on the same call."""
    query = (
        select(calls)
        .where(calls.c.state == CallState.ACTIVE.value, owner_not_live())
        .order_by(calls.c.sid)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=calls)
    rows = await conn.execute(query)
    return [
        (call_from_row(r), r._mapping["owner_node"], CallOptions.from_json(r._mapping["options"]))
        for r in rows
    ]


async def end_if_owned(conn: AsyncConnection, call: Call, owner_node: str | None) -> bool:
    """Write `call` (terminal) only if it is still active and still owned by `owner_node`: the
    fence that lets exactly one writer end an orphaned call. True if this writer won."""
    result = await conn.execute(
        update(calls)
        .where(
            calls.c.sid == call.sid,
            calls.c.state == CallState.ACTIVE.value,
            calls.c.owner_node.is_not_distinct_from(owner_node),
        )
        .values(**call_values(call))
        .returning(calls.c.sid)
    )
    return result.first() is not None


async def legs_of_calls(conn: AsyncConnection, call_sids: Sequence[str]) -> dict[str, list[Leg]]:
    """Every leg of these calls, per call, in side and sequence order."""
    found: dict[str, list[Leg]] = {sid: [] for sid in call_sids}
    if not call_sids:
        return found
    rows = await conn.execute(
        select(legs)
        .where(legs.c.call_sid.in_(list(call_sids)))
        .order_by(legs.c.call_sid, legs.c.side, legs.c.seq)
    )
    for r in rows:
        leg = leg_from_row(r)
        found[leg.call_sid].append(leg)
    return found


async def list_calls(
    conn: AsyncConnection, account_sid: str, *, limit: int = 50, active_only: bool = False
) -> list[Call]:
    query = select(calls).where(calls.c.account_sid == account_sid)
    if active_only:
        query = query.where(calls.c.state == CallState.ACTIVE.value)
    rows = await conn.execute(query.order_by(calls.c.created_at.desc()).limit(limit))
    return [call_from_row(r) for r in rows]
