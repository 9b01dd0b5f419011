"""A node lease for benchmarks that build a `CallEngine` directly, renewed on its own task as
`callbridge serve` renews it: admissions need a live lease."""

from __future__ import annotations

from callbridge.clock import Clock
from callbridge.engine.core import CallEngine
from callbridge.engine.lease import NodeLease
from callbridge.store.repo import Store


async def hold_lease(engine: CallEngine, store: Store, clock: Clock) -> NodeLease:
    """Register the engine's node with the default lease settings and keep renewing it; a
    lease lost under the benchmark's load ends every call, as it would in a server."""
    lease = NodeLease(store=store, clock=clock, ttl_s=8.0, interval_s=2.0, node_id=engine.node_id)
    lease.on_lost = engine.end_all_calls
    engine.lease = lease
    await lease.register()
    lease.start()
    return lease
