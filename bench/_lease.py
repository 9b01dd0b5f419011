"""A node lease for benchmarks that build a `CallEngine` directly, renewed on its own task as
`callbridge serve` renews it: admissions need a live lease."""

from __future__ import annotations

from callbridge.clock import Clock
from callbridge.engine.core import CallEngine
from callbridge.engine.lease import NodeLease
from callbridge.store.repo import Store


def bench_lease(store: Store, clock: Clock, node_id: str) -> NodeLease:
    """A lease with the default settings, for the engine to be built with."""
    return NodeLease(store=store, clock=clock, ttl_s=8.0, interval_s=2.0, node_id=node_id)


async def hold_lease(engine: CallEngine) -> NodeLease:
    """Register the engine's node and keep renewing its lease; a lease lost under the
    benchmark's load ends every call, as it would in a server."""
    lease = engine.lease
    lease.on_lost = engine.end_all_calls
    await lease.register()
    lease.start()
    return lease
