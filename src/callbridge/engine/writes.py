"""The engine's batched writes: admitting click-to-calls and committing call changes.

Both run inside the BatchWriter's shared transaction (see store/writer.py) and touch each
table with one multi-row statement per batch. Admission is the atomic step of SPEC §2.2: the
device checks and the compare-and-set busy mark (`INSERT … ON CONFLICT DO NOTHING`, so the
primary key decides which of N concurrent requests wins) commit together with the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.calls import Call, Leg
from callbridge.domain.options import CallbackEvent, CallOptions
from callbridge.domain.presence import DeviceSnapshot, device_refusal
from callbridge.domain.views import call_details
from callbridge.errors import CallbridgeError, DeviceBusy, VirtualNumberNotFound
from callbridge.store import outbox as outbox_store
from callbridge.store import users as user_store
from callbridge.store.calls import call_values, leg_values
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
    reachable: bool = True


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


def _dialect_insert(conn: AsyncConnection, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


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
    rows = await conn.execute(
        select(
            devices.c.account_sid,
            devices.c.contact_uri,
            devices.c.available,
            devices.c.verified,
            users.c.first_name,
            users.c.last_name,
        )
        .join(users, users.c.id == devices.c.user_id)
        .where(devices.c.account_sid.in_(accounts), devices.c.contact_uri.in_(uris))
    )
    for r in rows:
        found[(r[0], r[1])] = r
    results: list[Admitted | CallbridgeError | None] = []
    candidates: list[tuple[int, Admission]] = []
    for index, job in enumerate(jobs):
        call = job.call
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
                    reachable=job.reachable,
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
    winners: set[str] = set()
    if managed:
        statement = (
            _dialect_insert(conn, busy_marks)
            .values(
                [
                    {
                        "account_sid": j.call.account_sid,
                        "contact_uri": j.call.from_uri,
                        "call_sid": j.call.sid,
                        "owner_node": j.owner_node,
                        "created_at": j.call.created_at,
                    }
                    for _, j in managed
                ]
            )
            .on_conflict_do_nothing()
            .returning(busy_marks.c.call_sid)
        )
        winners = {r[0] for r in await conn.execute(statement)}
    admitted: list[tuple[int, Admission]] = []
    for index, job in candidates:
        if job.options.state_management and job.call.sid not in winners:
            results[index] = DeviceBusy(f"{job.call.from_uri} is on another call")
        else:
            admitted.append((index, job))
    if admitted:
        await conn.execute(
            insert(calls),
            [
                {
                    "sid": j.call.sid,
                    "account_sid": j.call.account_sid,
                    "direction": j.call.direction.value,
                    "virtual_number": j.call.virtual_number,
                    "from_uri": j.call.from_uri,
                    "custom_field": j.call.custom_field,
                    "options": j.options.to_json(),
                    "owner_node": j.owner_node,
                    "created_at": j.call.created_at,
                    **call_values(j.call),
                }
                for _, j in admitted
            ],
        )
        await conn.execute(insert(legs), [_leg_row(j.from_leg) for _, j in admitted])
        for index, job in admitted:
            results[index] = Admitted(job.call, job.from_leg, job.options)
    final: list[Admitted | CallbridgeError] = []
    for result in results:
        assert result is not None
        final.append(result)
    return final


def _leg_row(leg: Leg) -> dict[str, Any]:
    return {
        "sid": leg.sid,
        "call_sid": leg.call_sid,
        "side": leg.side.value,
        "seq": leg.seq,
        "contact_uri": leg.contact_uri,
        "group_id": leg.group_id,
        "group_name": leg.group_name,
        "created_at": leg.created_at,
        **leg_values(leg),
    }


async def apply_changes(conn: AsyncConnection, changes: Sequence[Change]) -> list[None]:
    """Commit many calls' changes with one statement per table, in the order given."""
    new_legs = [_leg_row(leg) for c in changes for leg in c.new_legs]
    if new_legs:
        await conn.execute(insert(legs), new_legs)
    leg_updates = [{"b_sid": leg.sid, **leg_values(leg)} for c in changes for leg in c.legs]
    if leg_updates:
        columns = [k for k in leg_updates[0] if k != "b_sid"]
        await conn.execute(
            update(legs)
            .where(legs.c.sid == bindparam("b_sid"))
            .values({k: bindparam(k) for k in columns}),
            leg_updates,
        )
    call_updates = [{"b_sid": c.call.sid, **call_values(c.call)} for c in changes]
    columns = [k for k in call_updates[0] if k != "b_sid"]
    await conn.execute(
        update(calls)
        .where(calls.c.sid == bindparam("b_sid"))
        .values({k: bindparam(k) for k in columns}),
        call_updates,
    )
    releasing = [c for c in changes if c.release_marks]
    if releasing:
        sids = [c.call.sid for c in releasing]
        freed = (
            await conn.execute(
                select(busy_marks.c.account_sid, busy_marks.c.contact_uri).where(
                    busy_marks.c.call_sid.in_(sids)
                )
            )
        ).all()
        if freed:
            await conn.execute(delete(busy_marks).where(busy_marks.c.call_sid.in_(sids)))
            by_account: dict[str, list[str]] = {}
            for account_sid, uri in freed:
                by_account.setdefault(account_sid, []).append(uri)
            now = max(c.call.updated_at for c in releasing)
            for account_sid, freed_uris in by_account.items():
                await user_store.apply_pending_availability(conn, account_sid, freed_uris, now)
    for change in changes:
        if change.event is None or change.options is None or not change.options.status_callbacks:
            continue
        await outbox_store.enqueue_events(
            conn,
            account_sid=change.call.account_sid,
            call_sid=change.call.sid,
            event_type=change.event,
            callbacks=change.options.status_callbacks,
            call_details=call_details(change.call, change.tz_name, change.recording_url),
            now=change.call.updated_at,
        )
    return [None] * len(changes)
