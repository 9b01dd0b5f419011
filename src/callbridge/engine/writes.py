"""The engine's batched writes: admitting click-to-calls and committing call changes.

Both run inside the BatchWriter's shared transaction (see store/writer.py) and touch each
table with one multi-row statement per batch. Admission is the atomic step of SPEC §2.2: the
device checks and the compare-and-set busy mark (`INSERT … ON CONFLICT DO NOTHING`, so the
primary key decides which of N concurrent requests wins) commit together with the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.calls import Call, CallState, Leg
from callbridge.domain.options import CallbackEvent, CallOptions
from callbridge.domain.presence import DeviceSnapshot, device_refusal
from callbridge.domain.views import callback_details
from callbridge.errors import CallbridgeError, DeviceBusy, NodeNotLeased, VirtualNumberNotFound
from callbridge.store import busy as busy_store
from callbridge.store import nodes as node_store
from callbridge.store import outbox as outbox_store
from callbridge.store.bulk import (
    insert_rows,
    placeholders,
    sqlite_datetime,
    sqlite_fetch_all,
    update_rows,
)
from callbridge.store.calls import call_values, leg_values
from callbridge.store.registrations import live_binding
from callbridge.store.tables import busy_marks, calls, devices, exophones, legs, users

ADMIT = "admit"
CHANGE = "change"


@dataclass(slots=True)
class Admission:
    """One click-to-call waiting for its atomic admission."""

    call: Call
    from_leg: Leg
    options: CallOptions
    owner_node: str


@dataclass(frozen=True, slots=True)
class Admitted:
    call: Call
    from_leg: Leg
    options: CallOptions


@dataclass(slots=True)
class Change:
    """One transaction's worth of a call's progress."""

    call: Call
    new_legs: list[Leg] = field(default_factory=list)
    legs: list[Leg] = field(default_factory=list)
    event: CallbackEvent | None = None
    release_marks: bool = False
    options: CallOptions | None = None
    tz_name: str = "Asia/Kolkata"
    recording_url: Callable[[str], str] | None = None


async def admit_batch(
    conn: AsyncConnection, jobs: Sequence[Admission]
) -> list[Admitted | CallbridgeError]:
    """Admit every job that passes its checks and wins its busy mark; refuse the others."""
    accounts = sorted({j.call.account_sid for j in jobs})
    numbers = sorted({j.call.virtual_number for j in jobs})
    uris = sorted({j.call.from_uri for j in jobs})
    known_phones = {
        (r[0], r[1])
        for r in await conn.execute(
            select(exophones.c.account_sid, exophones.c.number).where(
                exophones.c.account_sid.in_(accounts), exophones.c.number.in_(numbers)
            )
        )
    }
    found: dict[tuple[str, str], Any] = {}
    now = max(j.call.created_at for j in jobs)
    rows = await conn.execute(
        select(
            devices.c.account_sid,
            devices.c.contact_uri,
            devices.c.available,
            devices.c.verified,
            users.c.first_name,
            users.c.last_name,
            devices.c.sip_ha1.is_not(None).label("registers"),
            live_binding(now).label("registered"),
        )
        .join(users, users.c.id == devices.c.user_id)
        .where(devices.c.account_sid.in_(accounts), devices.c.contact_uri.in_(uris))
    )
    for r in rows:
        found[(r[0], r[1])] = r
    leased = {
        owner for owner in {j.owner_node for j in jobs} if await node_store.is_live(conn, owner)
    }
    results: list[Admitted | CallbridgeError | None] = []
    candidates: list[tuple[int, Admission]] = []
    for index, job in enumerate(jobs):
        call = job.call
        if job.owner_node not in leased:
            # Declared dead by a peer (it stalled past the lease): a call written under this
            # node now would be ended by that peer while its phones ring.
            results.append(NodeNotLeased())
            continue
        if (call.account_sid, call.virtual_number) not in known_phones:
            results.append(
                VirtualNumberNotFound(
                    f"virtual_number {call.virtual_number} is not an ExoPhone of this account"
                )
            )
            continue
        device = found.get((call.account_sid, call.from_uri))
        if device is not None:
            refusal = device_refusal(
                DeviceSnapshot(
                    available=bool(device.available),
                    verified=bool(device.verified),
                    # A phone that registers is reachable only with a live binding.
                    reachable=not device.registers or bool(device.registered),
                    busy=False,
                )
            )
            if refusal is not None:
                results.append(refusal)
                continue
            name = f"{device.first_name} {device.last_name}".strip()
            job.from_leg = replace(job.from_leg, name=name or None)
            if not job.options.state_management:
                job.options = replace(job.options, state_management=True)
        results.append(None)
        candidates.append((index, job))
    managed = [(i, j) for i, j in candidates if j.options.state_management]
    winners = await _mark_busy_many(
        conn,
        [
            (j.call.account_sid, j.call.from_uri, j.call.sid, j.owner_node, j.call.created_at)
            for _, j in managed
        ],
    )
    admitted: list[tuple[int, Admission]] = []
    for index, job in candidates:
        if job.options.state_management and job.call.sid not in winners:
            results[index] = DeviceBusy(f"{job.call.from_uri} is on another call")
        else:
            admitted.append((index, job))
    await insert_rows(
        conn,
        calls,
        CALL_INSERT_COLUMNS,
        [
            (
                j.call.sid,
                j.call.account_sid,
                j.call.direction.value,
                j.call.virtual_number,
                j.call.from_uri,
                j.call.custom_field,
                j.options.to_json(),
                j.owner_node,
                j.call.created_at,
                *call_update_row(j.call)[:-1],
            )
            for _, j in admitted
        ],
    )
    await insert_rows(
        conn, legs, LEG_INSERT_COLUMNS, [leg_insert_row(j.from_leg) for _, j in admitted]
    )
    for index, job in admitted:
        results[index] = Admitted(job.call, job.from_leg, job.options)
    final: list[Admitted | CallbridgeError] = []
    for result in results:
        assert result is not None
        final.append(result)
    return final


CALL_UPDATE_COLUMNS = (
    "state",
    "status",
    "updated_at",
    "start_at",
    "end_at",
    "talk_time_s",
    "digits",
    "recordings",
    "app_id",
    "app_name",
    "to_uri",
)
CALL_INSERT_COLUMNS = (
    "sid",
    "account_sid",
    "direction",
    "virtual_number",
    "from_uri",
    "custom_field",
    "options",
    "owner_node",
    "created_at",
    *CALL_UPDATE_COLUMNS,
)
LEG_UPDATE_COLUMNS = ("status", "updated_at", "answered_at", "ended_at", "name")
LEG_INSERT_COLUMNS = (
    "sid",
    "call_sid",
    "side",
    "seq",
    "contact_uri",
    "group_id",
    "group_name",
    "created_at",
    *LEG_UPDATE_COLUMNS,
)


def call_update_row(call: Call) -> tuple[Any, ...]:
    """CALL_UPDATE_COLUMNS values (as `store.calls.call_values` gives them), then the sid."""
    values = call_values(call)
    return (*(values[c] for c in CALL_UPDATE_COLUMNS), call.sid)


def leg_update_row(leg: Leg) -> tuple[Any, ...]:
    """LEG_UPDATE_COLUMNS values (as `store.calls.leg_values` gives them), then the sid."""
    values = leg_values(leg)
    return (*(values[c] for c in LEG_UPDATE_COLUMNS), leg.sid)


def leg_insert_row(leg: Leg) -> tuple[Any, ...]:
    return (
        leg.sid,
        leg.call_sid,
        leg.side.value,
        leg.seq,
        leg.contact_uri,
        leg.group_id,
        leg.group_name,
        leg.created_at,
        *leg_update_row(leg)[:-1],
    )


async def _mark_busy_many(
    conn: AsyncConnection, marks: list[tuple[str, str, str, str, datetime]]
) -> set[str]:
    """Insert busy marks; a taken (account, contact URI) is skipped. Returns the winning calls."""
    if not marks:
        return set()
    if conn.dialect.name == "sqlite":
        values = ", ".join("(?, ?, ?, ?, ?)" for _ in marks)
        params: list[Any] = []
        for account_sid, uri, call_sid, owner, at in marks:
            params += [account_sid, uri, call_sid, owner, sqlite_datetime(at)]
        rows = await sqlite_fetch_all(
            conn,
            "INSERT INTO busy_marks (account_sid, contact_uri, call_sid, owner_node, created_at) "
            f"VALUES {values} ON CONFLICT DO NOTHING RETURNING call_sid",
            params,
        )
        return {r[0] for r in rows}
    statement = (
        pg_insert(busy_marks)
        .values(
            [
                {
                    "account_sid": account_sid,
                    "contact_uri": uri,
                    "call_sid": call_sid,
                    "owner_node": owner,
                    "created_at": at,
                }
                for account_sid, uri, call_sid, owner, at in marks
            ]
        )
        .on_conflict_do_nothing()
        .returning(busy_marks.c.call_sid)
    )
    return {r[0] for r in await conn.execute(statement)}


async def _lock_and_find_terminal(conn: AsyncConnection, sids: list[str]) -> set[str]:
    """Which of these calls the database already holds as terminal (another node ended them).

    On PostgreSQL every one of the calls is row-locked until this transaction commits, in sid
    order, so a reconciler ending one of them waits for this change and then sees its result
    (and this check sees a reconciler's committed end): the two never both end a call. SQLite
    writers are serialised by BEGIN IMMEDIATE already."""
    if conn.dialect.name == "sqlite":
        rows = await sqlite_fetch_all(
            conn,
            f"SELECT sid FROM calls WHERE state = ? AND sid IN ({placeholders(len(sids))})",
            [CallState.TERMINAL.value, *sids],
        )
        return {r[0] for r in rows}
    result = await conn.execute(
        select(calls.c.sid, calls.c.state)
        .where(calls.c.sid.in_(sids))
        .order_by(calls.c.sid)
        .with_for_update()
    )
    return {sid for sid, state in result if state == CallState.TERMINAL.value}


class CallTakenOver(Exception):
    """The call is already terminal in the database: another node ended it (this node's lease
    had lapsed). The change is not applied."""


async def apply_changes(
    conn: AsyncConnection, all_changes: Sequence[Change]
) -> list[CallTakenOver | None]:
    """Commit many calls' changes with one statement per table, in the order given; a change
    to a call another node already ended is refused with CallTakenOver."""
    sids = sorted({c.call.sid for c in all_changes})
    taken = await _lock_and_find_terminal(conn, sids)
    changes = [c for c in all_changes if c.call.sid not in taken]
    await insert_rows(
        conn, legs, LEG_INSERT_COLUMNS, [leg_insert_row(leg) for c in changes for leg in c.new_legs]
    )
    await update_rows(
        conn,
        legs,
        "sid",
        LEG_UPDATE_COLUMNS,
        [leg_update_row(leg) for c in changes for leg in c.legs],
    )
    await update_rows(
        conn, calls, "sid", CALL_UPDATE_COLUMNS, [call_update_row(c.call) for c in changes]
    )
    releasing = [c for c in changes if c.release_marks]
    if releasing:
        await busy_store.release_marks_of_calls(
            conn, [c.call.sid for c in releasing], max(c.call.updated_at for c in releasing)
        )
    await outbox_store.enqueue_events_many(
        conn,
        [
            outbox_store.EventToEnqueue(
                account_sid=c.call.account_sid,
                call_sid=c.call.sid,
                event_type=c.event,
                callbacks=c.options.status_callbacks,
                call_details=callback_details(
                    c.call,
                    [*c.new_legs, *c.legs],
                    c.tz_name,
                    v2_agent=c.options.v2_agent,
                    recording_url=c.recording_url,
                    v1=c.options.v1,
                ),
                now=c.call.updated_at,
            )
            for c in changes
            if c.event is not None and c.options is not None and c.options.status_callbacks
        ],
    )
    return [CallTakenOver(c.call.sid) if c.call.sid in taken else None for c in all_changes]
