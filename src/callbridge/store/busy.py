"""The busy registry: compare-and-set busy marks keyed by (account, normalised contact URI)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, exists, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.calls import CallState
from callbridge.store import users as user_store
from callbridge.store.repo import is_unique_violation
from callbridge.store.tables import busy_marks, calls, devices, nodes, users


class AlreadyBusy(Exception):
    """The contact URI already has a busy mark."""


async def mark_busy(
    conn: AsyncConnection,
    *,
    account_sid: str,
    contact_uri: str,
    call_sid: str,
    owner_node: str,
    now: datetime,
) -> None:
    """Insert the mark; the primary key makes this the atomic free→busy step.

    On PostgreSQL a failed insert aborts the transaction, so the caller must treat
    AlreadyBusy as the end of its transaction (it raises out of `Store.tx`)."""
    try:
        await conn.execute(
            insert(busy_marks).values(
                account_sid=account_sid,
                contact_uri=contact_uri,
                call_sid=call_sid,
                owner_node=owner_node,
                created_at=now,
            )
        )
    except IntegrityError as exc:
        if is_unique_violation(exc):
            raise AlreadyBusy(contact_uri) from exc
        raise


async def busy_uris(conn: AsyncConnection, account_sid: str, uris: Sequence[str]) -> dict[str, str]:
    """Which of `uris` are busy now, mapped to the call that holds them."""
    if not uris:
        return {}
    rows = await conn.execute(
        select(busy_marks.c.contact_uri, busy_marks.c.call_sid).where(
            busy_marks.c.account_sid == account_sid, busy_marks.c.contact_uri.in_(list(uris))
        )
    )
    return {r[0]: r[1] for r in rows}


async def release_marks_of_dead_owners(conn: AsyncConnection) -> list[tuple[str, str]]:
    """Delete marks whose owner node is unknown or declared dead and whose call is no longer
    active; returns the pairs freed.

    A mark whose call is still active stays: the writer that ends that call (fenced, on any
    node) frees it in the same commit, so an agent is never admitted to a new call while the
    dead node's call is still live in the database. One statement, so a node that registers
    meanwhile never loses a mark: it commits its own node row before it can commit a mark."""
    owner_live = exists().where(
        and_(nodes.c.id == busy_marks.c.owner_node, nodes.c.dead_at.is_(None))
    )
    call_active = exists().where(
        and_(calls.c.sid == busy_marks.c.call_sid, calls.c.state == CallState.ACTIVE.value)
    )
    result = await conn.execute(
        delete(busy_marks)
        .where(~owner_live, ~call_active)
        .returning(busy_marks.c.account_sid, busy_marks.c.contact_uri)
    )
    return [(r[0], r[1]) for r in result]


async def release_marks_of_calls(
    conn: AsyncConnection, call_sids: Sequence[str], now: datetime
) -> list[tuple[str, str]]:
    """Free every mark these (ended) calls hold, apply the availability changes their agents
    deferred, and record when those agents became idle (longest-idle routing counts every kind
    of call). Returns the (account_sid, contact_uri) pairs freed."""
    if not call_sids:
        return []
    freed = [
        (r[0], r[1])
        for r in await conn.execute(
            delete(busy_marks)
            .where(busy_marks.c.call_sid.in_(list(call_sids)))
            .returning(busy_marks.c.account_sid, busy_marks.c.contact_uri)
        )
    ]
    await after_marks_freed(conn, freed, now)
    return freed


async def after_marks_freed(
    conn: AsyncConnection, freed: Sequence[tuple[str, str]], now: datetime
) -> None:
    """Apply deferred availability changes and idle times of agents whose marks were freed."""
    by_account: dict[str, list[str]] = {}
    for account_sid, uri in freed:
        by_account.setdefault(account_sid, []).append(uri)
    for account_sid, uris in by_account.items():
        await user_store.apply_pending_availability(conn, account_sid, uris, now)
        await conn.execute(
            update(users)
            .where(
                users.c.id.in_(
                    select(devices.c.user_id).where(
                        devices.c.account_sid == account_sid, devices.c.contact_uri.in_(uris)
                    )
                )
            )
            .values(last_call_ended_at=now)
        )
