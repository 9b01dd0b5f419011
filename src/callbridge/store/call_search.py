"""Searching an account's calls for bulk call details: filters, and keyset paging on
(created_at, sid) so a page boundary never skips or repeats a call while calls are added."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.calls import Call, CallState, CallStatus
from callbridge.store.calls import call_from_row
from callbridge.store.tables import calls

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"\A(\d{1,20})_([0-9A-Za-z]{1,64})\Z")


class BadCursor(ValueError):
    """A paging cursor that this server did not hand out."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the listing: the (created_at, sid) of one call."""

    created_at: datetime
    sid: str

    @classmethod
    def of(cls, call: Call) -> Cursor:
        return cls(call.created_at, call.sid)

    def encode(self) -> str:
        micros = (self.created_at - _EPOCH) // timedelta(microseconds=1)
        return f"{micros}_{self.sid}"

    @classmethod
    def decode(cls, raw: str) -> Cursor:
        match = _CURSOR.match(raw.strip())
        if match is None:
            raise BadCursor("not a cursor from a page link")
        try:
            created = _EPOCH + timedelta(microseconds=int(match.group(1)))
        except OverflowError as exc:
            raise BadCursor("not a cursor from a page link") from exc
        return cls(created, match.group(2))


@dataclass(frozen=True, slots=True)
class CallSearch:
    """Which calls, in which order, from where. `statuses`/`active` narrow the rows in SQL; an
    exact status check (which needs the legs) is the caller's."""

    account_sid: str
    sids: tuple[str, ...] = ()
    from_uris: tuple[str, ...] = ()
    to_uris: tuple[str, ...] = ()
    created_from: datetime | None = None
    """Calls created at or after this."""
    created_before: datetime | None = None
    """Calls created before this."""
    active: bool | None = None
    statuses: tuple[CallStatus, ...] = ()
    ascending: bool = False
    after: Cursor | None = None
    """Calls after this one in the listing's order."""
    backwards: bool = False
    """Walk towards the start of the listing from `after` instead (a previous page)."""


async def search_calls(conn: AsyncConnection, search: CallSearch, limit: int) -> list[Call]:
    """Up to `limit` calls in walking order (the listing's order, or its reverse when walking
    backwards)."""
    query = select(calls).where(calls.c.account_sid == search.account_sid)
    if search.sids:
        query = query.where(calls.c.sid.in_(search.sids))
    if search.from_uris:
        query = query.where(calls.c.from_uri.in_(search.from_uris))
    if search.to_uris:
        query = query.where(calls.c.to_uri.in_(search.to_uris))
    if search.created_from is not None:
        query = query.where(calls.c.created_at >= search.created_from.astimezone(UTC))
    if search.created_before is not None:
        query = query.where(calls.c.created_at < search.created_before.astimezone(UTC))
    if search.active is not None:
        state = CallState.ACTIVE if search.active else CallState.TERMINAL
        query = query.where(calls.c.state == state.value)
    if search.statuses:
        query = query.where(calls.c.status.in_([s.value for s in search.statuses]))
    # Walking forward in an ascending listing, or backward in a descending one, goes up.
    upward = search.ascending != search.backwards
    if search.after is not None:
        at, sid = search.after.created_at, search.after.sid
        if upward:
            beyond = or_(calls.c.created_at > at, and_(calls.c.created_at == at, calls.c.sid > sid))
        else:
            beyond = or_(calls.c.created_at < at, and_(calls.c.created_at == at, calls.c.sid < sid))
        query = query.where(beyond)
    if upward:
        query = query.order_by(calls.c.created_at.asc(), calls.c.sid.asc())
    else:
        query = query.order_by(calls.c.created_at.desc(), calls.c.sid.desc())
    rows = await conn.execute(query.limit(limit))
    return [call_from_row(r) for r in rows]


def continue_from(search: CallSearch, call: Call) -> CallSearch:
    """The same search, resuming after `call` in walking order."""
    return replace(search, after=Cursor.of(call))
