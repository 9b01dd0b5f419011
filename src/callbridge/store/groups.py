"""Groups of users, their members, and the routing snapshot: each candidate agent's device,
availability, busy mark, cool-down and idle time, read in one go for an inbound call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    and_,
    delete,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.flows import Destination
from callbridge.domain.routing import Candidate, DynamicTarget
from callbridge.store import registrations as reg_store
from callbridge.store.busy import busy_uris
from callbridge.store.repo import is_unique_violation, utc, utc_required
from callbridge.store.tables import busy_marks, devices, groups, user_groups, users


class GroupExists(Exception):
    """A group of that name already exists in the account."""


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    account_sid: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    name: str


def _group(row: Any) -> Group:
    m = row._mapping
    return Group(m["id"], m["account_sid"], m["name"], utc_required(m["created_at"]))


async def create_group(conn: AsyncConnection, account_sid: str, name: str, now: datetime) -> Group:
    """Insert a group. Raises GroupExists (which ends the transaction) on a duplicate name."""
    try:
        result = await conn.execute(
            insert(groups)
            .values(account_sid=account_sid, name=name, created_at=now)
            .returning(groups.c.id)
        )
    except IntegrityError as exc:
        if is_unique_violation(exc):
            raise GroupExists(name) from exc
        raise
    return Group(int(result.scalar_one()), account_sid, name, now)


async def find_group_by_name(conn: AsyncConnection, account_sid: str, name: str) -> Group | None:
    row = (
        await conn.execute(
            select(groups).where(groups.c.account_sid == account_sid, groups.c.name == name)
        )
    ).first()
    return _group(row) if row else None


async def get_group(conn: AsyncConnection, account_sid: str, group_id: int) -> Group | None:
    row = (
        await conn.execute(
            select(groups).where(groups.c.account_sid == account_sid, groups.c.id == group_id)
        )
    ).first()
    return _group(row) if row else None


async def list_groups(
    conn: AsyncConnection, account_sid: str, *, offset: int, limit: int
) -> tuple[list[Group], int]:
    where = groups.c.account_sid == account_sid
    total = int((await conn.execute(select(func.count()).where(where))).scalar_one())
    rows = await conn.execute(
        select(groups).where(where).order_by(groups.c.id).offset(offset).limit(limit)
    )
    return [_group(r) for r in rows], total


async def rename_group(conn: AsyncConnection, group: Group, name: str) -> Group:
    try:
        await conn.execute(update(groups).where(groups.c.id == group.id).values(name=name))
    except IntegrityError as exc:
        if is_unique_violation(exc):
            raise GroupExists(name) from exc
        raise
    return Group(group.id, group.account_sid, name, group.created_at)


async def delete_group(conn: AsyncConnection, group: Group) -> None:
    await conn.execute(delete(user_groups).where(user_groups.c.group_id == group.id))
    await conn.execute(delete(groups).where(groups.c.id == group.id))


async def members(conn: AsyncConnection, group_ids: Sequence[int]) -> dict[int, list[Member]]:
    """Members of each group, in the order calls are offered: by name (user_groups keeps no
    order of its own)."""
    found: dict[int, list[Member]] = {gid: [] for gid in group_ids}
    if not group_ids:
        return found
    rows = await conn.execute(
        select(user_groups.c.group_id, users.c.id, users.c.first_name, users.c.last_name)
        .join(users, users.c.id == user_groups.c.user_id)
        .where(user_groups.c.group_id.in_(list(group_ids)))
        .order_by(users.c.first_name, users.c.last_name, users.c.id)
    )
    for gid, uid, first, last in rows:
        found[gid].append(Member(uid, f"{first} {last}".strip()))
    return found


async def existing_users(
    conn: AsyncConnection, account_sid: str, user_ids: Sequence[str]
) -> set[str]:
    if not user_ids:
        return set()
    rows = await conn.execute(
        select(users.c.id).where(users.c.account_sid == account_sid, users.c.id.in_(user_ids))
    )
    return {r[0] for r in rows}


async def existing_groups(
    conn: AsyncConnection, account_sid: str, group_ids: Sequence[int]
) -> set[int]:
    if not group_ids:
        return set()
    rows = await conn.execute(
        select(groups.c.id).where(groups.c.account_sid == account_sid, groups.c.id.in_(group_ids))
    )
    return {int(r[0]) for r in rows}


async def add_members(conn: AsyncConnection, group_id: int, user_ids: Sequence[str]) -> int:
    """Add users to a group (already-members are left alone); returns how many were added."""
    present = {
        r[0]
        for r in await conn.execute(
            select(user_groups.c.user_id).where(user_groups.c.group_id == group_id)
        )
    }
    new = [uid for uid in dict.fromkeys(user_ids) if uid not in present]
    if new:
        await conn.execute(
            insert(user_groups), [{"user_id": uid, "group_id": group_id} for uid in new]
        )
    return len(new)


async def remove_member(conn: AsyncConnection, group_id: int, user_id: str) -> bool:
    result = await conn.execute(
        delete(user_groups).where(
            user_groups.c.group_id == group_id, user_groups.c.user_id == user_id
        )
    )
    return bool(result.rowcount)


# -- the routing snapshot ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Agent:
    user_id: str
    name: str
    contact_uri: str
    has_device: bool
    available: bool
    verified: bool
    cooldown_until: datetime | None
    last_call_ended_at: datetime | None


def _candidate(
    agent: _Agent,
    position: int,
    busy: set[str],
    unreachable: set[str],
    group: tuple[int, str] | None = None,
) -> Candidate:
    return Candidate(
        key=agent.user_id,
        contact_uri=agent.contact_uri,
        position=position,
        user_id=agent.user_id,
        name=agent.name,
        group_id=group[0] if group else None,
        group_name=group[1] if group else None,
        has_device=agent.has_device,
        available=agent.available,
        reachable=agent.contact_uri not in unreachable,
        verified=agent.verified,
        busy=agent.contact_uri in busy,
        cooldown_until=agent.cooldown_until,
        last_call_ended_at=agent.last_call_ended_at,
    )


async def _devices_by_contact(
    conn: AsyncConnection, account_sid: str, uris: Sequence[str]
) -> dict[str, _Agent]:
    """The users owning these exact device numbers, with that device's own state."""
    if not uris:
        return {}
    rows = await conn.execute(
        select(
            users.c.id,
            users.c.first_name,
            users.c.last_name,
            users.c.cooldown_until,
            users.c.last_call_ended_at,
            devices.c.contact_uri,
            devices.c.available,
            devices.c.verified,
        )
        .join(users, users.c.id == devices.c.user_id)
        .where(devices.c.account_sid == account_sid, devices.c.contact_uri.in_(list(uris)))
    )
    return {
        uri: _Agent(
            user_id=uid,
            name=f"{first} {last}".strip(),
            contact_uri=uri,
            has_device=True,
            available=bool(available),
            verified=bool(verified),
            cooldown_until=utc(cooldown),
            last_call_ended_at=utc(idle),
        )
        for uid, first, last, cooldown, idle, uri, available, verified in rows
    }


def _bare(uri: str, position: int, busy: set[str], state_managed: bool) -> Candidate:
    return Candidate(
        key=uri,
        contact_uri=uri,
        position=position,
        busy=uri in busy,
        state_managed=state_managed,
    )


async def _snapshot(
    conn: AsyncConnection, account_sid: str, user_ids: Sequence[str], group_ids: Sequence[int]
) -> tuple[dict[str, _Agent], dict[int, tuple[str, list[str]]], set[str]]:
    """Users named directly or through groups, with devices and busy marks: one query.

    Returns the agents, each group's (name, member ids in call order) and the busy URIs."""
    direct = select(
        literal(0, Integer).label("gid"),
        literal("", String).label("gname"),
        users.c.id.label("uid"),
    ).where(users.c.account_sid == account_sid, users.c.id.in_(list(user_ids) or [""]))
    member = (
        select(
            user_groups.c.group_id.label("gid"),
            groups.c.name.label("gname"),
            user_groups.c.user_id.label("uid"),
        )
        .join(groups, groups.c.id == user_groups.c.group_id)
        .where(groups.c.account_sid == account_sid, groups.c.id.in_(list(group_ids) or [0]))
    )
    wanted = union_all(direct, member).subquery()
    rows = await conn.execute(
        select(
            wanted.c.gid,
            wanted.c.gname,
            users.c.id,
            users.c.first_name,
            users.c.last_name,
            users.c.cooldown_until,
            users.c.last_call_ended_at,
            devices.c.contact_uri,
            devices.c.available,
            devices.c.verified,
            busy_marks.c.call_sid,
        )
        .select_from(
            wanted.join(users, users.c.id == wanted.c.uid)
            .outerjoin(devices, devices.c.user_id == users.c.id)
            .outerjoin(
                busy_marks,
                and_(
                    busy_marks.c.account_sid == devices.c.account_sid,
                    busy_marks.c.contact_uri == devices.c.contact_uri,
                ),
            )
        )
        .order_by(
            users.c.first_name, users.c.last_name, users.c.id, devices.c.created_at, devices.c.id
        )
    )
    agents: dict[str, _Agent] = {}
    group_members: dict[int, tuple[str, list[str]]] = {}
    busy: set[str] = set()
    for gid, gname, uid, first, last, cooldown, idle, uri, available, verified, mark in rows:
        if gid:
            _, member_ids = group_members.setdefault(gid, (gname, []))
            if uid not in member_ids:
                member_ids.append(uid)
        if mark is not None:
            busy.add(uri)
        current = agents.get(uid)
        if current is not None and (current.available or uri is None):
            continue
        agents[uid] = _Agent(
            user_id=uid,
            name=f"{first} {last}".strip(),
            contact_uri=uri or "",
            has_device=uri is not None,
            available=bool(available),
            verified=bool(verified),
            cooldown_until=utc(cooldown),
            last_call_ended_at=utc(idle),
        )
    return agents, group_members, busy


async def static_candidates(
    conn: AsyncConnection, account_sid: str, destinations: Sequence[Destination], now: datetime
) -> list[Candidate]:
    """Expand a static connect list (users, groups, numbers) into a candidate snapshot."""
    user_ids = [d.user_id for d in destinations if d.user_id is not None]
    group_ids = [d.group_id for d in destinations if d.group_id is not None]
    agents, group_members, busy = await _snapshot(conn, account_sid, user_ids, group_ids)
    uris = [d.contact_uri for d in destinations if d.contact_uri is not None]
    owned: dict[str, _Agent] = {}
    if uris:
        owned = await _devices_by_contact(conn, account_sid, uris)
        busy |= set(await busy_uris(conn, account_sid, uris))
    unreachable = await reg_store.unreachable_uris(
        conn, account_sid, [a.contact_uri for a in (*agents.values(), *owned.values())], now
    )
    out: list[Candidate] = []
    for d in destinations:
        if d.user_id is not None and d.user_id in agents:
            out.append(_candidate(agents[d.user_id], len(out), busy, unreachable))
        elif d.group_id is not None and d.group_id in group_members:
            name, member_ids = group_members[d.group_id]
            for uid in member_ids:
                out.append(_candidate(agents[uid], len(out), busy, unreachable, (d.group_id, name)))
        elif d.contact_uri is not None:
            device = owned.get(d.contact_uri)
            if device is not None:
                out.append(_candidate(device, len(out), busy, unreachable))
            else:
                out.append(_bare(d.contact_uri, len(out), busy, True))
    return out


async def dynamic_candidates(
    conn: AsyncConnection, account_sid: str, targets: Sequence[DynamicTarget], now: datetime
) -> list[Candidate]:
    """Candidates for the numbers a dynamic URL returned; users' devices are state-managed,
    other numbers only when the answer asked for `state_management`."""
    uris = [t.contact_uri for t in targets]
    owned = await _devices_by_contact(conn, account_sid, uris)
    busy = set(await busy_uris(conn, account_sid, uris))
    unreachable = await reg_store.unreachable_uris(conn, account_sid, list(owned), now)
    out: list[Candidate] = []
    for t in targets:
        device = owned.get(t.contact_uri)
        if device is not None:
            out.append(_candidate(device, len(out), busy, unreachable))
        else:
            out.append(_bare(t.contact_uri, len(out), busy, bool(t.state_management)))
    return out
