"""Prometheus metrics of one server process: counters fed by small hooks where things happen,
gauges read from the engine, the driver and the database when `/metrics` is scraped.

Labels stay bounded: account sids, route templates, statuses and Exotel codes; never call sids,
numbers, URLs or anything secret. Each app has its own registry (no process-global state).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from sqlalchemy import func, select
from starlette.types import Scope

from callbridge.domain.calls import Call, CallState
from callbridge.errors import CallbridgeError
from callbridge.store.nodes import lease_states
from callbridge.store.repo import utc
from callbridge.store.tables import busy_marks, outbox

if TYPE_CHECKING:
    from callbridge.api.services import Services
    from callbridge.media.stream import StreamSession

log = logging.getLogger(__name__)

SCRAPE_DB_TIMEOUT_S = 2.0
"""Bound on the database reads of one scrape; past it the database gauges are left out."""
COUNTED_CALLS = 50_000
"""Ended calls remembered so that a call committed twice in its final state counts once."""
TRACKED_STREAMS = 1024
"""Ended stream sessions are folded into the totals at the latest when this many are tracked."""
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CALLBACK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric of one app, in its own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Histogram(
            "callbridge_http_request_duration_seconds",
            "HTTP requests by method, route template and status, and how long they took",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS_S,
            registry=r,
        )
        self.calls = Counter(
            "callbridge_calls",
            "Calls this process ended, by terminal status",
            ["account_sid", "direction", "status"],
            registry=r,
        )
        self.admissions = Counter(
            "callbridge_call_admissions",
            "Click-to-call requests (after authentication): admitted, or refused by Exotel code",
            ["account_sid", "api", "result", "code"],
            registry=r,
        )
        self.callback_attempts = Counter(
            "callbridge_callback_attempts",
            "Status-callback delivery attempts by outcome (delivered, retry, dead, gone)",
            ["outcome"],
            registry=r,
        )
        self.callback_latency = Histogram(
            "callbridge_callback_latency_seconds",
            "Time from sending a status callback to the receiver's answer",
            buckets=CALLBACK_BUCKETS_S,
            registry=r,
        )
        self.stream_sessions = Counter(
            "callbridge_stream_sessions", "Media streams started", registry=r
        )
        self.stream_bytes = Counter(
            "callbridge_stream_bytes",
            "Stream audio bytes: to_bot (sent) and from_bot (played into the call)",
            ["direction"],
            registry=r,
        )
        self.streams_active = Gauge(
            "callbridge_stream_sessions_active", "Media streams open now", registry=r
        )
        self.ready = Gauge("callbridge_ready", "1 while the server can serve (/readyz)", registry=r)
        self.active_calls = Gauge(
            "callbridge_active_calls", "Calls this process is running", registry=r
        )
        self.active_legs = Gauge(
            "callbridge_active_legs", "Legs of the calls this process is running", registry=r
        )
        # Labelled by driver so that they are absent, not 0, for a driver without a pool.
        self.driver_free_slots = Gauge(
            "callbridge_driver_free_slots",
            "Legs the telephony driver can still take (the SIP worker pool)",
            ["driver"],
            registry=r,
        )
        self.sip_workers = Gauge(
            "callbridge_sip_workers_alive", "Live SIP worker processes", ["driver"], registry=r
        )
        self.database_up = Gauge(
            "callbridge_database_up", "1 when the last scrape could read the database", registry=r
        )
        self.busy_agents = Gauge(
            "callbridge_busy_agents",
            "Contact URIs marked busy (agents on a call), all nodes",
            ["account_sid"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "callbridge_outbox_pending",
            "Status-callback events waiting to be delivered",
            registry=r,
        )
        self.outbox_oldest_pending_age = Gauge(
            "callbridge_outbox_oldest_pending_age_seconds",
            "Age of the oldest undelivered status-callback event (0 when none)",
            registry=r,
        )
        self.outbox_dead = Gauge(
            "callbridge_outbox_dead", "Status-callback events dead-lettered", registry=r
        )
        self.nodes = Gauge(
            "callbridge_nodes",
            "Server processes by lease: live, or expired (silent past the TTL or declared dead)",
            ["state"],
            registry=r,
        )
        self._counted: OrderedDict[str, None] = OrderedDict()
        self._templates: dict[object, str] = {}
        self._request_series: dict[tuple[str, str, int], Histogram] = {}
        self._streams: dict[int, tuple[StreamSession, int, int]] = {}

    # -- hooks, called where things happen --------------------------------------------------

    def learn_routes(self, routes: Iterable[object]) -> None:
        """Remember each endpoint's path template, to label requests by route."""
        for route in routes:
            endpoint, path = getattr(route, "endpoint", None), getattr(route, "path", None)
            if endpoint is not None and isinstance(path, str):
                self._templates.setdefault(endpoint, path)

    def observe_request(self, scope: Scope, status: int | None, elapsed_s: float) -> None:
        """Count one finished request by method, route template and status. The template, not
        the path, so labels cannot grow with sids; `unmatched` when no route took it. The
        matched route names it (one handler may serve several paths); the endpoint's learnt
        template is the fallback."""
        method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
        route = getattr(scope.get("route"), "path", None)
        if not isinstance(route, str):
            route = self._templates.get(scope.get("endpoint"), "unmatched")
        key = (method, route, status or 0)
        child = self._request_series.get(key)
        if child is None:
            # labels() costs more than the observation itself: keep each series' child.
            child = self._request_series[key] = self.requests.labels(method, route, str(key[2]))
        child.observe(elapsed_s)

    def observe_call(self, call: Call) -> None:
        """An engine listener: counts each call once, when it is first seen ended."""
        if call.state is not CallState.TERMINAL or call.sid in self._counted:
            return
        self._counted[call.sid] = None
        if len(self._counted) > COUNTED_CALLS:
            self._counted.popitem(last=False)
        status = call.status.value if call.status is not None else "ended"
        self.calls.labels(call.account_sid, call.direction.value, status).inc()

    @contextmanager
    def admission(self, account_sid: str, api: str) -> Iterator[None]:
        """Counts the click-to-call request run inside: admitted, or refused with its code."""
        try:
            yield
        except CallbridgeError as exc:
            self.admissions.labels(account_sid, api, "refused", str(exc.code)).inc()
            raise
        except Exception:
            self.admissions.labels(account_sid, api, "refused", "1100").inc()
            raise
        self.admissions.labels(account_sid, api, "admitted", "200").inc()

    def callback_attempt(self, outcome: str, latency_s: float) -> None:
        self.callback_attempts.labels(outcome).inc()
        if latency_s > 0:
            self.callback_latency.observe(latency_s)

    def track_stream(self, session: StreamSession) -> None:
        self.stream_sessions.inc()
        self._streams[id(session)] = (session, 0, 0)
        if len(self._streams) > TRACKED_STREAMS:
            self._harvest_streams()

    # -- read when scraped -------------------------------------------------------------------

    async def render(self, svc: Services | None) -> bytes:
        """The text exposition, after reading the gauges' current values."""
        self._harvest_streams()
        if svc is None:
            # Still waiting for the database at start.
            self.ready.set(0)
            self.database_up.set(0)
        else:
            self._read_process(svc)
            await self._read_database(svc)
        return generate_latest(self.registry)

    def _harvest_streams(self) -> None:
        """Add what each tracked stream moved since the last look; forget ended streams."""
        active = 0
        for key, (session, sent, played) in list(self._streams.items()):
            stats = session.stats
            self.stream_bytes.labels("to_bot").inc(max(0, stats.bytes_sent - sent))
            self.stream_bytes.labels("from_bot").inc(max(0, stats.bytes_played - played))
            if session.done:
                del self._streams[key]
            else:
                active += 1
                self._streams[key] = (session, stats.bytes_sent, stats.bytes_played)
        self.streams_active.set(active)

    def _read_process(self, svc: Services) -> None:
        self.ready.set(1 if svc.ready else 0)
        self.active_calls.set(svc.engine.active_calls)
        self.active_legs.set(svc.engine.active_legs)
        free = svc.driver.capacity()
        if free is not None:
            self.driver_free_slots.labels(svc.driver.name).set(free)
        worker_pids = getattr(svc.driver, "worker_pids", None)
        if callable(worker_pids):
            self.sip_workers.labels(svc.driver.name).set(len(worker_pids()))

    async def _read_database(self, svc: Services) -> None:
        now = svc.clock.now()
        try:
            async with asyncio.timeout(SCRAPE_DB_TIMEOUT_S), svc.store.read() as conn:
                busy = (
                    await conn.execute(
                        select(busy_marks.c.account_sid, func.count()).group_by(
                            busy_marks.c.account_sid
                        )
                    )
                ).all()
                pending, oldest = (
                    await conn.execute(
                        select(func.count(), func.min(outbox.c.created_at)).where(
                            outbox.c.status == "pending"
                        )
                    )
                ).one()
                dead = (
                    await conn.execute(
                        select(func.count()).select_from(outbox).where(outbox.c.status == "dead")
                    )
                ).scalar_one()
                live, expired = await lease_states(conn, now, svc.settings.lease_ttl_s)
        except Exception as exc:
            log.warning("metrics: database not readable", extra={"error": type(exc).__name__})
            self.database_up.set(0)
            for gauge in (self.busy_agents, self.nodes):
                gauge.clear()
            return
        self.database_up.set(1)
        self.busy_agents.clear()
        for account_sid, count in busy:
            self.busy_agents.labels(account_sid).set(count)
        self.outbox_pending.set(pending)
        self.outbox_oldest_pending_age.set(_age_s(oldest, now))
        self.outbox_dead.set(dead)
        self.nodes.labels("live").set(len(live))
        self.nodes.labels("expired").set(len(expired))


def _age_s(oldest: datetime | None, now: datetime) -> float:
    at = utc(oldest)
    return 0.0 if at is None else max(0.0, (now - at).total_seconds())
