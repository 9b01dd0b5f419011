"""The call engine: routes driver events to per-call runners, owns their timers and persistence.

Each active call is a `CallRunner` with its own message queue, so a call's events are
handled strictly in order while calls run concurrently. Runners never touch the database
directly: they hand a `Change` (call, legs, marks to free, callback events) to the engine,
which commits it in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.clock import Clock, Timer
from callbridge.domain.calls import Call, CallState
from callbridge.domain.options import CallOptions
from callbridge.store.repo import Store
from callbridge.store.writer import BatchWriter
from callbridge.telephony.base import CapacityReserving, LegEvent, TelephonyDriver

from .lease import NodeLease
from .writes import ADMIT, CHANGE, CallTakenOver, Change, admit_batch, apply_changes

__all__ = [
    "CallEngine",
    "CallRunner",
    "CallTakenOver",
    "Change",
    "Message",
    "Shutdown",
    "TimerFired",
]

TXN = "transaction"
T = TypeVar("T")

RECENT_CALLS = 20_000
"""Terminal call snapshots kept in memory for fast GETs (terminal calls never change)."""

log = logging.getLogger(__name__)

PERSIST_ATTEMPTS = 5


class MediaSession(Protocol):
    """Per-call media work (wait audio, playback, recording, streaming); never raises."""

    async def from_leg_answered(self, from_leg_sid: str) -> None: ...

    async def to_leg_ringing(self, to_leg_sid: str) -> None: ...

    async def bridged(self, from_leg_sid: str, to_leg_sid: str) -> None: ...

    async def dtmf(self, leg_sid: str, digits: str) -> None: ...

    async def finish(self) -> list[Any]: ...


MediaFactory = Callable[[Call, CallOptions], MediaSession | None]


@dataclass(frozen=True, slots=True)
class TimerFired:
    name: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    reason: str


Message = LegEvent | TimerFired | Shutdown


class CallRunner:
    """Base of outbound and inbound runners: a queue, timers and helpers to persist."""

    def __init__(self, engine: CallEngine, call: Call, options: CallOptions, tz_name: str) -> None:
        self.engine = engine
        self.call = call
        self.options = options
        self.tz_name = tz_name
        self.clock = engine.clock
        self.driver = engine.driver
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._timers: dict[str, Timer] = {}
        self._legs: set[str] = set()
        self.media: MediaSession | None = None
        self.bridged_at: float | None = None
        """Monotonic time the parties were connected, once they are."""
        self._task: asyncio.Task[None] | None = None
        self.finished = False

    # -- lifecycle -----------------------------------------------------------------------

    def launch(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"call-{self.call.sid}")

    def post(self, message: Message) -> None:
        self.engine._inflight_up()
        self._queue.put_nowait(message)

    async def _run(self) -> None:
        try:
            await self.begin()
        except CallTakenOver:
            pass
        except Exception:
            log.exception("call start failed", extra={"call_sid": self.call.sid})
            await self.abort("start failed")
        finally:
            self.engine._inflight_down()
        while not self.finished:
            message = await self._queue.get()
            try:
                await self.handle(message)
            except CallTakenOver:
                break
            except Exception:
                log.exception("call event failed", extra={"call_sid": self.call.sid})
                await self.abort("internal error")
            finally:
                self.engine._inflight_down()
        self.cancel_all_timers()
        while not self._queue.empty():
            self._queue.get_nowait()
            self.engine._inflight_down()
        self.engine._forget(self)

    async def begin(self) -> None:
        raise NotImplementedError

    async def handle(self, message: Message) -> None:
        raise NotImplementedError

    async def abort(self, reason: str) -> None:
        """End the call at once after an internal failure; must not raise."""
        raise NotImplementedError

    # -- timers --------------------------------------------------------------------------

    def start_timer(self, name: str, delay_s: float) -> None:
        self.cancel_timer(name)
        self._timers[name] = self.clock.call_later(delay_s, lambda: self.post(TimerFired(name)))

    def cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def cancel_all_timers(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def now(self) -> datetime:
        return self.clock.now()

    # -- driver / persistence helpers -----------------------------------------------------

    def own_leg(self, leg_sid: str) -> None:
        self.engine._leg_owner[leg_sid] = self
        self._legs.add(leg_sid)

    def disown_leg(self, leg_sid: str) -> None:
        self.engine._leg_owner.pop(leg_sid, None)
        self._legs.discard(leg_sid)

    async def hangup_quietly(self, leg_sid: str) -> None:
        self.disown_leg(leg_sid)
        try:
            await self.driver.hangup(leg_sid)
        except Exception:
            log.warning("hangup failed", extra={"call_sid": self.call.sid, "leg": leg_sid})

    def talk_time_s(self) -> float:
        if self.bridged_at is None:
            return 0.0
        return max(0.0, self.clock.monotonic() - self.bridged_at)

    async def finish_media(self) -> tuple[str, ...]:
        """Stop the call's media and store its recordings; returns their ids (never raises)."""
        if self.media is None:
            return ()
        results = await self.media.finish()
        if not results or self.engine.save_recordings is None:
            return ()
        try:
            return tuple(await self.engine.save_recordings(self.call, results))
        except Exception:
            log.exception("saving recordings failed", extra={"call_sid": self.call.sid})
            return ()

    async def commit(self, change: Change) -> None:
        self.call = change.call
        try:
            await self.engine.commit(change, self.options, self.tz_name)
        except CallTakenOver:
            await self._taken_over()
            raise

    async def _taken_over(self) -> None:
        """Another node ended this call while our lease had lapsed: let go of it quietly —
        hang up every leg, stop its media (its recordings can no longer be attached)."""
        log.warning("call was ended by another node; letting go", extra={"call_sid": self.call.sid})
        self.finished = True
        self.cancel_all_timers()
        for leg_sid in list(self._legs):
            await self.hangup_quietly(leg_sid)
        media, self.media = self.media, None
        if media is not None:
            await media.finish()
        self.engine.forget_snapshot(self.call.sid)


class CallEngine:
    """Runs every call this node owns."""

    def __init__(
        self,
        *,
        store: Store,
        driver: TelephonyDriver,
        clock: Clock,
        lease: NodeLease,
        media_factory: MediaFactory | None = None,
        save_recordings: Callable[[Call, list[Any]], Any] | None = None,
        recording_url: Callable[[str, str], str] | None = None,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.driver = driver
        self.clock = clock
        self.lease = lease
        """The node's lease: its id owns new calls and it must allow admissions."""
        self.media_factory = media_factory
        self.save_recordings = save_recordings
        self.recording_url = recording_url
        self.on_committed = on_committed
        self._runners: dict[str, CallRunner] = {}
        self._leg_owner: dict[str, CallRunner] = {}
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._listeners: list[Callable[[Call], None]] = []
        self._recent: OrderedDict[str, Call] = OrderedDict()
        self.writer = BatchWriter(store)
        self.writer.register(ADMIT, admit_batch)
        self.writer.register(CHANGE, apply_changes)
        self.writer.register(TXN, _run_in_order)

    async def start(self) -> None:
        self.writer.start()
        await self.driver.start(self.on_leg_event)

    async def stop(self, reason: str = "shutdown") -> None:
        """End every call this node runs (agents are freed), then stop the driver."""
        await self.end_all_calls(reason)
        await self.driver.stop()
        await self.writer.stop()

    @property
    def node_id(self) -> str:
        """The id that owns the calls this node starts now (it changes when the node rejoins
        after losing its lease)."""
        return self.lease.node_id

    def check_admitting(self) -> None:
        """Raise 503 unless this node may start a new call now (see `engine/lease.py`)."""
        self.lease.check_admitting()

    async def end_all_calls(self, reason: str) -> None:
        """End every call this node runs, hanging up their legs; the driver keeps running.

        Each end is a normal, fenced commit: a call another node already ended is let go."""
        for runner in list(self._runners.values()):
            runner.post(Shutdown(reason))
        await self.settle()

    # -- runners ------------------------------------------------------------------------

    def launch(self, runner: CallRunner) -> None:
        self._runners[runner.call.sid] = runner
        self._inflight_up()
        runner.launch()

    def _forget(self, runner: CallRunner) -> None:
        self._runners.pop(runner.call.sid, None)
        if isinstance(self.driver, CapacityReserving):
            self.driver.release(runner.call.sid)
        for leg_sid in runner._legs:
            if self._leg_owner.get(leg_sid) is runner:
                del self._leg_owner[leg_sid]
        runner._legs.clear()

    def runner(self, call_sid: str) -> CallRunner | None:
        return self._runners.get(call_sid)

    def snapshot(self, account_sid: str, call_sid: str) -> Call | None:
        """The last committed state of a call this node runs or recently ended, if known."""
        call = self._recent.get(call_sid)
        if call is None or call.account_sid != account_sid:
            return None
        return call

    async def transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `work` inside the writer's next shared transaction (committed when this returns).

        For engine writes that are not a call Change (inbound agent reservations, releases).
        If `work` raises, its batch is retried job by job, so it fails alone."""
        result: T = await self.writer.submit(TXN, work)
        return result

    def forget_snapshot(self, call_sid: str) -> None:
        self._recent.pop(call_sid, None)

    def remember(self, call: Call) -> None:
        self._recent[call.sid] = call
        self._recent.move_to_end(call.sid)
        if len(self._recent) > RECENT_CALLS + len(self._runners):
            for sid in list(self._recent)[:1000]:
                if self._recent[sid].state is CallState.TERMINAL:
                    del self._recent[sid]

    @property
    def active_calls(self) -> int:
        return len(self._runners)

    @property
    def active_legs(self) -> int:
        return len(self._leg_owner)

    def on_leg_event(self, event: LegEvent) -> None:
        runner = self._leg_owner.get(event.leg_sid)
        if runner is None:
            log.debug("event for unknown leg", extra={"leg": event.leg_sid, "kind": event.kind})
            return
        runner.post(event)

    def add_listener(self, listener: Callable[[Call], None]) -> None:
        """Called with every committed call snapshot (dashboard, tests)."""
        self._listeners.append(listener)

    # -- settling (tests and graceful stop) ----------------------------------------------

    def _inflight_up(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _inflight_down(self) -> None:
        self._inflight -= 1
        if self._inflight <= 0:
            self._inflight = 0
            self._idle.set()

    async def settle(self) -> None:
        """Wait until every queued message of every call has been handled."""
        while self._inflight:
            await self._idle.wait()
            for _ in range(2):
                await asyncio.sleep(0)

    # -- persistence ---------------------------------------------------------------------

    async def commit(self, change: Change, options: CallOptions, tz_name: str) -> None:
        """Commit a call's change, its legs, freed marks and callback events atomically."""
        change.options = options
        change.tz_name = tz_name
        if change.event is not None:
            change.recording_url = self._recording_url_for(change.call)
        for attempt in range(1, PERSIST_ATTEMPTS + 1):
            try:
                await self.writer.submit(CHANGE, change)
                break
            except CallTakenOver:
                raise
            except Exception:
                if attempt == PERSIST_ATTEMPTS:
                    raise
                log.warning(
                    "commit failed; retrying",
                    extra={"call_sid": change.call.sid, "attempt": attempt},
                    exc_info=True,
                )
                await self.clock.sleep(0.05 * attempt)
        self.remember(change.call)
        if change.event is not None and options.status_callbacks and self.on_committed is not None:
            # Only a change that queued callback events gives the delivery worker work.
            self.on_committed()
        self.notify(change.call)

    def notify(self, call: Call) -> None:
        """Tell listeners (the live view) about a committed call snapshot."""
        for listener in self._listeners:
            try:
                listener(call)
            except Exception:
                log.exception("call listener failed", extra={"call_sid": call.sid})

    def _recording_url_for(self, call: Call) -> Callable[[str], str] | None:
        render = self.recording_url
        if render is None:
            return None
        return lambda rid: render(call.account_sid, rid)


async def _run_in_order(
    conn: AsyncConnection, jobs: Sequence[Callable[[AsyncConnection], Awaitable[Any]]]
) -> list[Any]:
    return [await job(conn) for job in jobs]
