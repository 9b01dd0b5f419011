"""Flows and the ExoPhones they are attached to, plus the per-agent writes inbound routing makes:
compare-and-set busy marks that never abort the transaction, cool-downs and idle times."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.flows import FlowDefinition, parse_flow_definition
from callbridge.ids import new_sid
from callbridge.store.repo import utc_required
from callbridge.store.tables import busy_marks, exophones, flows, users


@dataclass(frozen=True, slots=True)
class Flow:
    id: str
    account_sid: str
    name: str
    definition: FlowDefinition
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ExoPhoneRow:
    id: str
    account_sid: str
    number: str
    flow_id: str | None
    flow_name: str | None
    created_at: datetime
    updated_at: datetime


_PARSED: dict[tuple[str, datetime], FlowDefinition] = {}
_PARSED_MAX = 512


def _definition(flow_id: str, updated_at: datetime, data: dict[str, Any]) -> FlowDefinition:
    """Parse a stored definition once per version: every inbound call reads its flow."""
    key = (flow_id, updated_at)
    found = _PARSED.get(key)
    if found is None:
        found = parse_flow_definition(data)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = found
    return found


def _flow(row: Any) -> Flow:
    m = row._mapping
    updated_at = utc_required(m["updated_at"])
    return Flow(
        id=m["id"],
        account_sid=m["account_sid"],
        name=m["name"],
        definition=_definition(m["id"], updated_at, m["definition"]),
        created_at=utc_required(m["created_at"]),
        updated_at=updated_at,
    )


async def create_flow(
    conn: AsyncConnection, account_sid: str, name: str, definition: FlowDefinition, now: datetime
) -> Flow:
    flow = Flow(new_sid(), account_sid, name, definition, now, now)
    await conn.execute(
        insert(flows).values(
            id=flow.id,
            account_sid=account_sid,
            name=name,
            definition=definition.to_json(),
            created_at=now,
            updated_at=now,
        )
    )
    return flow


async def get_flow(conn: AsyncConnection, account_sid: str, flow_id: str) -> Flow | None:
    row = (
        await conn.execute(
            select(flows).where(flows.c.account_sid == account_sid, flows.c.id == flow_id)
        )
    ).first()
    return _flow(row) if row else None


async def list_flows(
    conn: AsyncConnection, account_sid: str, *, offset: int, limit: int
) -> tuple[list[Flow], int]:
    where = flows.c.account_sid == account_sid
    total = int((await conn.execute(select(func.count()).where(where))).scalar_one())
    rows = await conn.execute(
        select(flows)
        .where(where)
        .order_by(flows.c.created_at, flows.c.id)
        .offset(offset)
        .limit(limit)
    )
    return [_flow(r) for r in rows], total


async def update_flow(
    conn: AsyncConnection, flow: Flow, name: str, definition: FlowDefinition, now: datetime
) -> Flow:
    await conn.execute(
        update(flows)
        .where(flows.c.id == flow.id)
        .values(name=name, definition=definition.to_json(), updated_at=now)
    )
    return Flow(flow.id, flow.account_sid, name, definition, flow.created_at, now)


async def delete_flow(conn: AsyncConnection, flow: Flow) -> None:
    await conn.execute(delete(flows).where(flows.c.id == flow.id))


async def flow_numbers(conn: AsyncConnection, flow_ids: Sequence[str]) -> dict[str, list[str]]:
    """The ExoPhones attached to each flow."""
    found: dict[str, list[str]] = {fid: [] for fid in flow_ids}
    if not flow_ids:
        return found
    rows = await conn.execute(
        select(exophones.c.flow_id, exophones.c.number)
        .where(exophones.c.flow_id.in_(list(flow_ids)))
        .order_by(exophones.c.number)
    )
    for fid, number in rows:
        found[fid].append(number)
    return found


# -- ExoPhones -----------------------------------------------------------------------------


def _exophone(row: Any) -> ExoPhoneRow:
    m = row._mapping
    return ExoPhoneRow(
        id=m["id"],
        account_sid=m["account_sid"],
        number=m["number"],
        flow_id=m["flow_id"],
        flow_name=m["flow_name"],
        created_at=utc_required(m["created_at"]),
        updated_at=utc_required(m["updated_at"]),
    )


def _exophone_query() -> Any:
    return select(exophones, flows.c.name.label("flow_name")).select_from(
        exophones.outerjoin(flows, flows.c.id == exophones.c.flow_id)
    )


async def list_exophones(
    conn: AsyncConnection, account_sid: str, *, offset: int, limit: int
) -> tuple[list[ExoPhoneRow], int]:
    where = exophones.c.account_sid == account_sid
    total = int((await conn.execute(select(func.count()).where(where))).scalar_one())
    rows = await conn.execute(
        _exophone_query().where(where).order_by(exophones.c.number).offset(offset).limit(limit)
    )
    return [_exophone(r) for r in rows], total


async def find_exophone(
    conn: AsyncConnection, account_sid: str, *, number: str | None = None, id: str | None = None
) -> ExoPhoneRow | None:
    query = _exophone_query().where(exophones.c.account_sid == account_sid)
    if id is not None:
        query = query.where(exophones.c.id == id)
    else:
        query = query.where(exophones.c.number == number)
    row = (await conn.execute(query)).first()
    return _exophone(row) if row else None


async def number_taken(conn: AsyncConnection, number: str) -> bool:
    found = (await conn.execute(select(exophones.c.id).where(exophones.c.number == number))).first()
    return found is not None


async def insert_exophone(
    conn: AsyncConnection, account_sid: str, number: str, flow_id: str | None, now: datetime
) -> str:
    phone_id = new_sid()
    await conn.execute(
        insert(exophones).values(
            id=phone_id,
            account_sid=account_sid,
            number=number,
            flow_id=flow_id,
            created_at=now,
            updated_at=now,
        )
    )
    return phone_id


async def set_exophone_flow(
    conn: AsyncConnection, phone_id: str, flow_id: str | None, now: datetime
) -> None:
    await conn.execute(
        update(exophones).where(exophones.c.id == phone_id).values(flow_id=flow_id, updated_at=now)
    )


async def delete_exophone(conn: AsyncConnection, phone_id: str) -> None:
    await conn.execute(delete(exophones).where(exophones.c.id == phone_id))


# -- routing writes ------------------------------------------------------------------------


async def try_mark_busy(
    conn: AsyncConnection,
    *,
    account_sid: str,
    contact_uri: str,
    call_sid: str,
    owner_node: str,
    now: datetime,
) -> bool:
    """The compare-and-set free→busy step as `INSERT … ON CONFLICT DO NOTHING`: True when this
    call got the mark. Unlike `busy.mark_busy` a lost race leaves the transaction usable, so
    one transaction can mark the many agents of a ring-all."""
    values = {
        "account_sid": account_sid,
        "contact_uri": contact_uri,
        "call_sid": call_sid,
        "owner_node": owner_node,
        "created_at": now,
    }
    dialect = conn.dialect.name
    statement: Any
    if dialect == "postgresql":
        statement = postgresql.insert(busy_marks).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(busy_marks).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise RuntimeError(f"unsupported database {dialect}")
    result = await conn.execute(statement)
    return bool(result.rowcount)


async def release_marks(
    conn: AsyncConnection, account_sid: str, contact_uris: Sequence[str], call_sid: str
) -> None:
    """Free the marks this call holds on these numbers (agents who did not answer)."""
    if not contact_uris:
        return
    await conn.execute(
        delete(busy_marks).where(
            busy_marks.c.account_sid == account_sid,
            busy_marks.c.contact_uri.in_(list(contact_uris)),
            busy_marks.c.call_sid == call_sid,
        )
    )


async def set_cooldown(
    conn: AsyncConnection, user_ids: Sequence[str], until: datetime, now: datetime
) -> None:
    if user_ids:
        await conn.execute(
            update(users)
            .where(users.c.id.in_(list(user_ids)))
            .values(cooldown_until=until, updated_at=now)
        )


async def set_last_call_ended(conn: AsyncConnection, user_ids: Sequence[str], at: datetime) -> None:
    if user_ids:
        await conn.execute(
            update(users).where(users.c.id.in_(list(user_ids))).values(last_call_ended_at=at)
        )
