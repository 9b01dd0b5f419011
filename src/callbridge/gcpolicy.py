"""Keeps Python's cyclic garbage collector from pausing the event loop for long.

With thousands of live calls a full (generation 2) collection walks millions of objects and
stops every call's timers for hundreds of milliseconds. Calls free their objects by reference
counting (the engine keeps no reference cycles), so the policy is: move everything that has
survived a few seconds into the permanent generation (`gc.freeze`), where the collector never
looks, and run one full collection over everything at a long, configurable interval.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from callbridge.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class GcPolicy:
    def __init__(self, *, freeze_interval_s: float = 2.0, full_interval_s: float = 3600.0) -> None:
        self.freeze_interval_s = freeze_interval_s
        self.full_interval_s = full_interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gc-policy")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        gc.unfreeze()

    async def _run(self) -> None:
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(self.freeze_interval_s)
            if time.monotonic() - last_full >= self.full_interval_s:
                started = time.perf_counter()
                gc.unfreeze()
                collected = gc.collect()
                gc.freeze()
                last_full = time.monotonic()
                log.info(
                    "full garbage collection",
                    extra={
                        "collected": collected,
                        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
                    },
                )
            else:
                gc.freeze()
