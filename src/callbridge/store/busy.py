"""The busy registry: compare-and-set busy marks keyed by (account, normalised contact URI)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.store.repo import is_unique_violation
from callbridge.store.tables import busy_marks


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


async def release_call_marks(conn: AsyncConnection, call_sid: str) -> list[tuple[str, str]]:
    """Delete every mark of a call; returns the (account_sid, contact_uri) pairs freed."""
    rows = (
        await conn.execute(
            select(busy_marks.c.account_sid, busy_marks.c.contact_uri).where(
                busy_marks.c.call_sid == call_sid
            )
        )
    ).all()
    if rows:
        await conn.execute(delete(busy_marks).where(busy_marks.c.call_sid == call_sid))
    return [(r[0], r[1]) for r in rows]


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


async def release_orphan_marks(
    conn: AsyncConnection, live_nodes: Sequence[str]
) -> list[tuple[str, str]]:
    """Delete marks whose owner node is gone (its lease expired); returns the pairs freed."""
    owner_gone = busy_marks.c.owner_node.not_in(list(live_nodes)) if live_nodes else None
    query = select(busy_marks.c.account_sid, busy_marks.c.contact_uri)
    if owner_gone is not None:
        query = query.where(owner_gone)
    freed = [(r[0], r[1]) for r in (await conn.execute(query)).all()]
    if freed:
        removal = delete(busy_marks)
        if owner_gone is not None:
            removal = removal.where(owner_gone)
        await conn.execute(removal)
    return freed
