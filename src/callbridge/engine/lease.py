"""This node's lease on its calls and busy marks: registration, a heartbeat on its own task,
and what the node does when the lease is in doubt or lost.

The lease is valid while the node renews it within `ttl_s`. The heartbeat runs on its own task
from the moment the node registers, so nothing else the node does (a long reconcile, a burst
of calls) delays it. When renewals fail for half the TTL the lease is in doubt and the node
admits no new call; when a peer has declared it dead (the heartbeat finds no live row), or no
renewal succeeded for the whole TTL (a peer may be declaring it dead right now), the node ends
every call it still runs, hanging up their legs (each end is fenced, so a call a peer already
ended is only let go), and joins again under a new node id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from enum import StrEnum

from callbridge.clock import Clock
from callbridge.errors import NodeNotLeased
from callbridge.store import nodes as node_store
from callbridge.store.repo import Store, describe_db_error
from callbridge.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def new_node_id() -> str:
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{os.urandom(3).hex()}"


class LeaseState(StrEnum):
    VALID = "valid"
    DOUBTFUL = "doubtful"
    """Renewals have failed for half the TTL: no new calls until one succeeds."""
    LOST = "lost"
    """Declared dead, or unrenewed for the whole TTL: calls are being ended, then we rejoin."""


OnLost = Callable[[str], Awaitable[None]]
"""Ends every call the node runs (the reason is logged); must not raise."""


class NodeLease:
    """Holds this node's lease and renews it on its own task."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        ttl_s: float,
        interval_s: float,
        node_id: str | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.node_id = node_id or new_node_id()
        self.on_lost: OnLost | None = None
        self.state = LeaseState.LOST
        self.renewed_at = 0.0
        """Monotonic time the last successful renewal started (what peers judge us by)."""
        self.rejoins = 0
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def register(self) -> None:
        """Insert this node's row; the lease is valid from the moment it commits."""
        started = self.clock.monotonic()
        async with self.store.tx() as conn:
            await node_store.register_node(
                conn, self.node_id, self.clock.now(), {"pid": os.getpid()}
            )
        self.renewed_at = started
        self.state = LeaseState.VALID

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="node-heartbeat")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        with contextlib.suppress(Exception):
            async with self.store.tx() as conn:
                await node_store.remove_node(conn, self.node_id)

    # -- admission -----------------------------------------------------------------------

    @property
    def admitting(self) -> bool:
        if self.state is not LeaseState.VALID:
            return False
        # With the heartbeat task running, an overdue renewal is itself a doubt: the task may be
        # starved (a stalled loop) and peers judge the lease by its age alone. A lease renewed
        # by hand (tests driving a ManualClock) is only as doubtful as its last renewal said.
        return self._task is None or self.age_s() < self.ttl_s / 2

    def check_admitting(self) -> None:
        """Raise 503 unless this node may start a new call now."""
        if self.admitting:
            return
        if self.state is LeaseState.LOST:
            raise NodeNotLeased()
        raise NodeNotLeased("this node cannot renew its lease on the database now; try again")

    def age_s(self) -> float:
        return self.clock.monotonic() - self.renewed_at

    # -- renewal -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.interval_s)
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease renewal failed", extra={"node": self.node_id})

    async def renew(self) -> None:
        """One heartbeat, and the state it leads to."""
        started = self.clock.monotonic()
        try:
            async with asyncio.timeout(self.ttl_s):
                async with self.store.lease_tx() as conn:
                    alive = await node_store.heartbeat(conn, self.node_id, self.clock.now())
        except Exception as exc:
            age = self.age_s()
            log.warning(
                "lease not renewed",
                extra={"node": self.node_id, "age_s": round(age, 3), "error": _describe(exc)},
            )
            if age >= self.ttl_s:
                await self._rejoin("lease expired unrenewed")
            elif age >= self.ttl_s / 2 and self.state is LeaseState.VALID:
                self.state = LeaseState.DOUBTFUL
            return
        if alive:
            self.renewed_at = started
            if self.state is LeaseState.DOUBTFUL:
                log.warning("lease renewed again", extra={"node": self.node_id})
            self.state = LeaseState.VALID
            return
        await self._rejoin("declared dead by a peer")

    async def _rejoin(self, reason: str) -> None:
        """End every call under the old id, then register again under a new one."""
        self.state = LeaseState.LOST
        old = self.node_id
        log.error("lease lost; ending this node's calls", extra={"node": old, "reason": reason})
        if self.on_lost is not None:
            await self.on_lost(reason)
        self.node_id = new_node_id()
        while True:
            try:
                await self.register()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "cannot rejoin yet", extra={"node": self.node_id, "error": _describe(exc)}
                )
                await self.clock.sleep(self.interval_s)
        self.rejoins += 1
        log.warning("rejoined under a new node id", extra={"node": self.node_id, "was": old})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return describe_db_error(exc)
