"""The live hub: fans committed call changes and agent states out to dashboard subscribers.

The engine calls `LiveHub.on_call` synchronously after every commit; that call only records
the newest snapshot of the call in its account's feed and wakes the feed's pump, so the
engine is never slowed by the number or speed of subscribers. One pump task per watched
account reads the legs (one query per batch of changed calls), renders each SSE frame once
and offers it to every subscriber's bounded buffer. A subscriber whose buffer is full is
dropped (its stream ends; the page reconnects and gets a fresh snapshot). The pump also
builds the snapshot a new subscriber starts with, so no change falls between the snapshot
and the first event, and re-reads the agents after each batch and every `agent_refresh_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from callbridge.clock import Clock
from callbridge.domain.calls import Call, CallState, Leg
from callbridge.store import busy as busy_store
from callbridge.store import calls as call_store
from callbridge.store import users as user_store
from callbridge.store.accounts import Account
from callbridge.store.repo import Store
from callbridge.store.tables import legs as legs_table

from .views import agent_view, call_view, epoch_ms, sse_frame

log = logging.getLogger(__name__)

QUEUE_FRAMES = 512
"""Frames buffered per subscriber before it counts as slow and is dropped."""
MAX_SUBSCRIBERS_PER_ACCOUNT = 8
AGENT_REFRESH_S = 5.0
"""Agents are re-read after every batch of call changes and at least this often (device
ON/OFF changes and other nodes' calls do not pass through this node's engine)."""
KEEPALIVE_S = 15.0
SNAPSHOT_ACTIVE_CALLS = 200
SNAPSHOT_ENDED_CALLS = 20
MAX_AGENTS = 200
LEGS_QUERY_CHUNK = 500


class SubscriptionClosed(Exception):
    """The hub ended this subscription; `reason` says why (e.g. `slow consumer`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TooManySubscribers(Exception):
    """The account already has the maximum number of live streams open."""


class Subscription:
    """One open stream: a bounded buffer of ready-made SSE frames."""

    def __init__(self, account_sid: str, limit: int) -> None:
        self.account_sid = account_sid
        self._limit = limit
        self._frames: deque[str] = deque()
        self._ready = asyncio.Event()
        self.closed_reason: str | None = None

    def offer(self, frame: str) -> bool:
        """Buffer a frame; a full buffer closes the subscription instead of waiting."""
        if self.closed_reason is not None:
            return False
        if len(self._frames) >= self._limit:
            self.close("slow consumer")
            return False
        self._frames.append(frame)
        self._ready.set()
        return True

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        self._frames.clear()
        self._ready.set()

    @property
    def buffered(self) -> int:
        return len(self._frames)

    async def next_frame(self, timeout_s: float) -> str | None:
        """The next frame, or None if none came within `timeout_s` (time for a keep-alive).

        Raises SubscriptionClosed once the hub has closed the subscription."""
        if not self._frames and self.closed_reason is None:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout_s)
        if self.closed_reason is not None:
            raise SubscriptionClosed(self.closed_reason)
        if not self._frames:
            return None
        return self._frames.popleft()


@dataclass
class _Feed:
    """Everything the hub keeps for one watched account."""

    account: Account
    subscribers: set[Subscription] = field(default_factory=set)
    joining: list[Subscription] = field(default_factory=list)
    """Waiting for their snapshot (the pump serves them in its next round)."""
    pending: dict[str, Call] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    agents_frame: str | None = None
    agents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def watched(self) -> bool:
        return bool(self.subscribers or self.joining)

    @property
    def count(self) -> int:
        return len(self.subscribers) + len(self.joining)


class LiveHub:
    """Subscribers per account, fed from the engine's commit listener."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        queue_frames: int = QUEUE_FRAMES,
        max_subscribers: int = MAX_SUBSCRIBERS_PER_ACCOUNT,
        agent_refresh_s: float = AGENT_REFRESH_S,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self.store = store
        self.clock = clock
        self.queue_frames = queue_frames
        self.max_subscribers = max_subscribers
        self.agent_refresh_s = agent_refresh_s
        self.keepalive_s = keepalive_s
        self.attached = False
        self._feeds: dict[str, _Feed] = {}
        self.dropped = 0
        """Subscribers dropped for being slow, since start (for logs and tests)."""

    # -- the engine side -------------------------------------------------------------------

    def on_call(self, call: Call) -> None:
        """Engine listener: O(1), never blocks, never raises."""
        feed = self._feeds.get(call.account_sid)
        if feed is None:
            return
        feed.pending[call.sid] = call
        feed.wake.set()

    # -- the subscriber side ---------------------------------------------------------------

    def subscribe(self, account: Account) -> Subscription:
        """Open a stream for `account`; its first frame will be the snapshot."""
        feed = self._feeds.get(account.sid)
        if feed is None:
            feed = self._feeds[account.sid] = _Feed(account)
        if feed.count >= self.max_subscribers:
            raise TooManySubscribers(account.sid)
        feed.account = account
        subscription = Subscription(account.sid, self.queue_frames)
        feed.joining.append(subscription)
        feed.wake.set()
        if feed.pump is None or feed.pump.done():
            feed.pump = asyncio.create_task(self._pump(feed), name=f"live-{account.sid}")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.close("closed")
        feed = self._feeds.get(subscription.account_sid)
        if feed is None:
            return
        feed.subscribers.discard(subscription)
        if subscription in feed.joining:
            feed.joining.remove(subscription)
        if not feed.watched:
            feed.wake.set()

    def subscriber_count(self, account_sid: str) -> int:
        feed = self._feeds.get(account_sid)
        return 0 if feed is None else feed.count

    def close_streams(self, reason: str = "server stopping") -> None:
        """End every open stream now (synchronous, so a server's exit hook can call it via
        `loop.call_soon_threadsafe`): each ends with a `closed` event and its pump stops."""
        for feed in list(self._feeds.values()):
            for subscription in [*feed.subscribers, *feed.joining]:
                subscription.close(reason)
            feed.subscribers.clear()
            feed.joining.clear()
            feed.wake.set()

    async def close(self) -> None:
        """End every stream and wait for the pumps to stop (app shutdown)."""
        self.close_streams()
        for feed in list(self._feeds.values()):
            if feed.pump is not None:
                feed.pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed.pump
        self._feeds.clear()

    # -- the pump --------------------------------------------------------------------------

    async def _pump(self, feed: _Feed) -> None:
        loop = asyncio.get_running_loop()
        next_agents_at = 0.0
        try:
            while feed.watched:
                feed.wake.clear()
                try:
                    refresh = loop.time() >= next_agents_at
                    await self._round(feed, refresh_agents=refresh)
                    if refresh:
                        next_agents_at = loop.time() + self.agent_refresh_s
                except Exception:
                    # The store failed: end the streams; the pages reconnect with backoff
                    # and start again from a fresh snapshot.
                    log.warning(
                        "live feed failed", extra={"account_sid": feed.account.sid}, exc_info=True
                    )
                    for subscription in [*feed.subscribers, *feed.joining]:
                        subscription.close("server error")
                    feed.subscribers.clear()
                    feed.joining.clear()
                    feed.pending.clear()
                    break
                if feed.watched and not feed.wake.is_set():
                    delay = max(0.0, next_agents_at - loop.time())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(feed.wake.wait(), delay)
        finally:
            if self._feeds.get(feed.account.sid) is feed and not feed.watched:
                del self._feeds[feed.account.sid]

    async def _round(self, feed: _Feed, *, refresh_agents: bool) -> None:
        changed, feed.pending = feed.pending, {}
        # Joiners stay in `feed.joining` until served: they count as watching meanwhile.
        joiners = list(feed.joining)
        now_ms = epoch_ms(self.clock.now())
        if changed:
            legs = await self._legs_of(list(changed))
            tz = feed.account.timezone
            for call in changed.values():
                view = call_view(call, legs.get(call.sid, ()), tz)
                self._fan_out(feed, sse_frame("call", {"server_ms": now_ms, "call": view}))
        if changed or refresh_agents or joiners:
            agents = await self._agents(feed.account)
            if agents != feed.agents or feed.agents_frame is None:
                feed.agents = agents
                feed.agents_frame = sse_frame("agents", {"server_ms": now_ms, "agents": agents})
                self._fan_out(feed, feed.agents_frame)
        if joiners:
            snapshot = await self._snapshot(feed)
            for subscription in joiners:
                if subscription in feed.joining:
                    feed.joining.remove(subscription)
                if subscription.offer(snapshot):
                    feed.subscribers.add(subscription)

    def _fan_out(self, feed: _Feed, frame: str) -> None:
        for subscription in list(feed.subscribers):
            if not subscription.offer(frame):
                feed.subscribers.discard(subscription)
                if subscription.closed_reason == "slow consumer":
                    self.dropped += 1
                    log.warning(
                        "live subscriber dropped: slow consumer",
                        extra={"account_sid": feed.account.sid},
                    )

    # -- reads -----------------------------------------------------------------------------

    async def _legs_of(self, call_sids: Sequence[str]) -> dict[str, list[Leg]]:
        found: dict[str, list[Leg]] = {}
        async with self.store.read() as conn:
            for start in range(0, len(call_sids), LEGS_QUERY_CHUNK):
                chunk = list(call_sids[start : start + LEGS_QUERY_CHUNK])
                rows = await conn.execute(
                    select(legs_table).where(legs_table.c.call_sid.in_(chunk))
                )
                for row in rows:
                    leg = call_store.leg_from_row(row)
                    found.setdefault(leg.call_sid, []).append(leg)
        return found

    async def _agents(self, account: Account) -> list[dict[str, Any]]:
        async with self.store.read() as conn:
            _, users = await user_store.list_users(conn, account.sid, limit=MAX_AGENTS)
            by_user = await user_store.devices_of(conn, [u.id for u in users])
            uris = [d.contact_uri for ds in by_user.values() for d in ds]
            busy = await busy_store.busy_uris(conn, account.sid, uris)
        return [agent_view(u, by_user.get(u.id, []), busy) for u in users]

    async def _snapshot(self, feed: _Feed) -> str:
        account = feed.account
        async with self.store.read() as conn:
            active = await call_store.list_calls(
                conn, account.sid, limit=SNAPSHOT_ACTIVE_CALLS, active_only=True
            )
            recent = await call_store.list_calls(
                conn, account.sid, limit=SNAPSHOT_ENDED_CALLS + len(active)
            )
        ended = [c for c in recent if c.state is CallState.TERMINAL][:SNAPSHOT_ENDED_CALLS]
        calls = [*active, *ended]
        legs = await self._legs_of([c.sid for c in calls])
        return sse_frame(
            "snapshot",
            {
                "account_sid": account.sid,
                "timezone": account.timezone,
                "server_ms": epoch_ms(self.clock.now()),
                "calls": [call_view(c, legs.get(c.sid, ()), account.timezone) for c in calls],
                "agents": feed.agents,
                "limits": {
                    "active_calls": SNAPSHOT_ACTIVE_CALLS,
                    "ended_calls": SNAPSHOT_ENDED_CALLS,
                    "agents": MAX_AGENTS,
                },
            },
        )
