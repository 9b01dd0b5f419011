"""Injected time: a Clock gives wall time, monotonic time and timers.

Tests use a ManualClock and advance it."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall-clock time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` (a plain function, on the event loop) after `delay_s` seconds."""

    async def sleep(self, delay_s: float) -> None:
        """Suspend for `delay_s` seconds of this clock's time."""


class SystemClock:
    """Real time: `asyncio` timers on the running loop."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        # The event loop's own clock (asyncio's `loop.time()` is `time.monotonic()`).
        return time.monotonic()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, delay_s), callback)

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)


@dataclass(order=True)
class _ManualTimer:
    due: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that only moves when a test calls `advance`; timers fire in due order."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 15, 6, 30, 0, tzinfo=UTC)
        self._now_s = 0.0
        self._timers: list[_ManualTimer] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._now_s)

    def monotonic(self) -> float:
        return self._now_s

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer(self._now_s + max(0.0, delay_s), next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    async def sleep(self, delay_s: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        self.call_later(delay_s, wake)
        await future

    def next_due(self) -> float | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].due if self._timers else None

    def fire_due(self, until_s: float) -> bool:
        """Move to the first timer due at or before `until_s`, fire every timer due then.

        Returns False (and moves to `until_s`) when no timer is due by then."""
        due = self.next_due()
        if due is None or due > until_s:
            self._now_s = max(self._now_s, until_s)
            return False
        self._now_s = max(self._now_s, due)
        while self._timers and self._timers[0].due <= self._now_s:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()
        return True

    async def advance(self, seconds: float, settle: Callable[[], object] | None = None) -> None:
        """Advance time by `seconds`, firing timers in order; after each batch, await `settle`."""
        target = self._now_s + seconds
        # Work already queued (e.g. a call just launched) schedules its timers first.
        await _settle(settle)
        while True:
            fired = self.fire_due(target)
            await _settle(settle)
            if not fired:
                return


async def _settle(settle: Callable[[], object] | None) -> None:
    for _ in range(3):
        await asyncio.sleep(0)
    if settle is not None:
        result = settle()
        if asyncio.iscoroutine(result):
            await result
