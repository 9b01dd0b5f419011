"""v1 bulk call details (`GET /v1/Accounts/{sid}/Calls`): Exotel's filters read into a search,
one page walked with keyset paging, and Exotel's paging metadata (`PageSize`, `FirstPageUri`,
`PrevPageUri`, `NextPageUri`, with `Before`/`After` cursors).

`Status` is v1's overall status, which depends on a call's legs: rows are narrowed in SQL and
checked exactly here. A page examines at most MAX_SCANNED calls; a sparse match may therefore
answer a short page whose `NextPageUri` goes on from where it stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from callbridge.domain.calls import Call, CallStatus, Leg
from callbridge.domain.v1_views import v1_status
from callbridge.errors import ValidationFailed
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.store.accounts import Account
from callbridge.store.call_search import (
    BadCursor,
    CallSearch,
    Cursor,
    continue_from,
    search_calls,
)
from callbridge.store.calls import legs_of_calls
from callbridge.store.repo import Store

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50
MAX_SCANNED = 2000
_BATCH = 200
MAX_SIDS = 100
MAX_NUMBERS = 5
_ACTIVE = frozenset({"queued", "ringing", "in-progress"})
_TERMINAL = frozenset({"completed", "failed", "busy", "no-answer"})
_SID = re.compile(r"\A[0-9A-Za-z]{1,64}\Z")
_BOUND = re.compile(r"\A(gte|lte):(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\Z")


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The query parameters of a bulk call details request, as sent."""

    page_size: int = DEFAULT_PAGE_SIZE
    sort_by: str | None = None
    before: str | None = None
    after: str | None = None
    sid: str | None = None
    date_created: str | None = None
    status: str | None = None
    from_: str | None = None
    to: str | None = None

    def filters(self) -> dict[str, str]:
        """The filters, to repeat in page links."""
        named = {
            "Sid": self.sid,
            "DateCreated": self.date_created,
            "Status": self.status,
            "From": self.from_,
            "To": self.to,
            "SortBy": self.sort_by,
        }
        return {k: v for k, v in named.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Page:
    items: list[tuple[Call, list[Leg]]]
    next_cursor: str | None
    prev_cursor: str | None


def _listed(raw: str | None, field: str, most: int) -> list[str]:
    if raw is None:
        return []
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if len(values) > most:
        raise ValidationFailed(f"{field}: at most {most} comma-separated values")
    return values


def _numbers(raw: str | None, field: str, region: str) -> tuple[str, ...]:
    found: list[str] = []
    for value in _listed(raw, field, MAX_NUMBERS):
        try:
            found.append(normalise(value, region).uri)
        except InvalidContactUri as exc:
            raise ValidationFailed(f"{field}: {exc}") from exc
    return tuple(found)


def _created_range(raw: str | None, tz_name: str) -> tuple[datetime | None, datetime | None]:
    """`gte:2019-01-01 00:00:00;lte:2019-01-31 23:59:59`, in the account's timezone, as
    (from, before). Times are shown to the second, so `lte` takes in its whole second."""
    if raw is None:
        return None, None
    bounds: dict[str, datetime] = {}
    for part in raw.split(";"):
        match = _BOUND.match(part.strip())
        if match is None:
            raise ValidationFailed(
                "DateCreated: must be gte:YYYY-MM-DD HH:MM:SS and/or lte:… joined by ';'"
            )
        try:
            local = datetime.strptime(match.group(2), "%Y-%m-%d %H:%M:%S")
            # In UTC now, so a time at the edge of the calendar fails here, as a 400.
            bounds[match.group(1)] = local.replace(tzinfo=ZoneInfo(tz_name)).astimezone(UTC)
        except ValueError as exc:
            raise ValidationFailed(f"DateCreated: {exc}") from exc
        except OverflowError as exc:
            raise ValidationFailed("DateCreated: out of range") from exc
    last = bounds.get("lte")
    try:
        before = last + timedelta(seconds=1) if last is not None else None
    except OverflowError as exc:
        raise ValidationFailed("DateCreated: out of range") from exc
    return bounds.get("gte"), before


def _statuses(raw: str | None) -> frozenset[str] | None:
    words = frozenset(w.lower() for w in _listed(raw, "Status", 10))
    if not words:
        return None
    unknown = words - _ACTIVE - _TERMINAL
    if unknown:
        raise ValidationFailed(
            f"Status: must be one of queued, ringing, in-progress, completed, failed, busy, "
            f"no-answer, not {sorted(unknown)[0][:32]!r}"
        )
    return words


def build_search(account: Account, query: ListQuery) -> tuple[CallSearch, frozenset[str] | None]:
    """The search a query asks for and the exact v1 statuses to keep (None: all)."""
    sort = (query.sort_by or "DateCreated:desc").strip().lower()
    if sort not in ("datecreated:desc", "datecreated:asc"):
        raise ValidationFailed("SortBy: must be DateCreated:asc or DateCreated:desc")
    if query.before is not None and query.after is not None:
        raise ValidationFailed("Before and After: give one cursor, not both")
    sids = _listed(query.sid, "Sid", MAX_SIDS)
    for sid in sids:
        if not _SID.match(sid):
            raise ValidationFailed(f"Sid: {sid[:64]!r} is not a call sid")
    created_from, created_before = _created_range(query.date_created, account.timezone)
    wanted = _statuses(query.status)
    search = CallSearch(
        account_sid=account.sid,
        sids=tuple(sids),
        from_uris=_numbers(query.from_, "From", account.region),
        to_uris=_numbers(query.to, "To", account.region),
        created_from=created_from,
        created_before=created_before,
        ascending=sort.endswith("asc"),
    )
    if wanted is not None and wanted <= _ACTIVE:
        search = replace(search, active=True)
    elif wanted is not None and wanted <= _TERMINAL:
        search = replace(search, active=False)
        if "completed" not in wanted:
            # A call whose first leg answered a flow is "completed" whatever its v3 status.
            search = replace(
                search, statuses=tuple(s for s in CallStatus if s.value != "completed")
            )
    cursor = query.before or query.after
    if cursor is not None:
        try:
            position = Cursor.decode(cursor)
        except BadCursor as exc:
            field = "Before" if query.before is not None else "After"
            raise ValidationFailed(f"{field}: {exc}") from exc
        search = replace(search, after=position, backwards=query.before is not None)
    return search, wanted


async def list_page(
    store: Store, search: CallSearch, page_size: int, wanted: frozenset[str] | None
) -> Page:
    """One page of calls with their legs, in the listing's order, and the cursors around it."""
    items: list[tuple[Call, list[Leg]]] = []
    frontier: Call | None = None
    exhausted = False
    walk = search
    scanned = 0
    async with store.read() as conn:
        while len(items) < page_size and scanned < MAX_SCANNED:
            # One more row than needed tells whether anything follows the page.
            limit = _BATCH if wanted is not None else page_size - len(items) + 1
            batch = await search_calls(conn, walk, limit)
            found = await legs_of_calls(conn, [call.sid for call in batch])
            for call in batch:
                if len(items) == page_size:
                    break
                scanned += 1
                frontier = call
                if wanted is None or v1_status(call, found[call.sid]) in wanted:
                    items.append((call, found[call.sid]))
            if len(batch) < limit and (not batch or frontier is batch[-1]):
                exhausted = True
                break
            if frontier is not None:
                walk = continue_from(search, frontier)
    if search.backwards:
        items.reverse()
    more = None if exhausted or frontier is None else Cursor.of(frontier).encode()
    given = search.after.encode() if search.after is not None else None
    if search.backwards:
        later = Cursor.of(items[-1][0]).encode() if items else None
        return Page(items, next_cursor=later, prev_cursor=more)
    earlier = Cursor.of(items[0][0]).encode() if items else given
    return Page(items, next_cursor=more, prev_cursor=earlier if given is not None else None)


def page_metadata(path: str, query: ListQuery, page: Page) -> dict[str, object]:
    """Exotel's paging metadata; the URIs repeat the filters and page size."""
    base = {**query.filters(), "PageSize": str(query.page_size)}

    def uri(extra: dict[str, str]) -> str:
        return f"{path}?{urlencode({**base, **extra})}"

    return {
        "PageSize": query.page_size,
        "FirstPageUri": uri({}),
        "PrevPageUri": uri({"Before": page.prev_cursor}) if page.prev_cursor else None,
        "NextPageUri": uri({"After": page.next_cursor}) if page.next_cursor else None,
    }
