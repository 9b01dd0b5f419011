"""The status-callback delivery worker: claims due outbox rows, sends them concurrently, and
writes each attempt's outcome back in batched transactions.

All scheduling time comes from the injected Clock. `wake()` (called after a commit that enqueued
events) makes fresh events go out at once; otherwise the worker polls every few hundred ms.
Recording URLs in a payload are turned into signed links as each attempt is sent, so a retry
carries a link that is fresh then; the stored payload keeps the credentialled URL.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.clock import Clock
from callbridge.domain.options import CallbackContentType, CallbackMethod
from callbridge.media.links import RecordingLinks
from callbridge.settings import Settings
from callbridge.store.outbox import OutboxRow
from callbridge.store.outbox_delivery import Action, AttemptOutcome, claim_due, record_outcomes
from callbridge.webhooks.schedule import MAX_ATTEMPTS, Uniform, Verdict, next_delay
from callbridge.webhooks.secrets import SecretLookup, make_secret_lookup
from callbridge.webhooks.sender import AttemptResult, Delivery, build_client, send
from callbridge.webhooks.ssrf import UrlGuard

logger = logging.getLogger(__name__)

ClientFactory = Callable[[], httpx.AsyncClient]

_FLUSH_RETRY_S = 1.0
_FLUSH_WINDOW_S = 0.003
_SECRET_CACHE_MAX = 10_000
_FLUSH_RETRIES_ON_CLOSE = 3


@dataclass(frozen=True, slots=True)
class WorkerStats:
    attempts: int
    delivered: int
    retried: int
    dead: int
    claims: int  # claim statements that returned rows
    flushes: int  # write-back transactions


class DeliveryWorker:
    """Delivers outbox rows; one per process (server or `callbridge worker`), many per database.

    `run()` loops until `stop()`; tests drive it step by step with `drain_once()` instead.
    At most `concurrency` requests are in flight; a claim lease of `lease_s` must outlast one
    attempt plus its write-back, after which another node may take the row over.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        node_id: str,
        *,
        secret_lookup: SecretLookup,
        guard: UrlGuard,
        client_factory: ClientFactory | None = None,
        concurrency: int = 64,
        timeout_s: float = 10.0,
        poll_interval_s: float = 0.5,
        lease_s: float | None = None,
        claim_batch: int = 256,
        secret_cache_s: float = 1.0,
        rng: Uniform | None = None,
        links: RecordingLinks | None = None,
    ) -> None:
        if concurrency < 1 or claim_batch < 1:
            raise ValueError("concurrency and claim_batch must be at least 1")
        self._engine = engine
        self._clock = clock
        self._node_id = node_id
        self._secret_lookup = secret_lookup
        self._guard = guard
        self._client_factory = client_factory or (
            lambda: build_client(guard, timeout_s=timeout_s, max_connections=concurrency)
        )
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._poll_interval_s = poll_interval_s
        self._lease_s = lease_s if lease_s is not None else 3 * timeout_s + 30.0
        self._claim_batch = claim_batch
        self._rng: Uniform = rng or random.Random()
        self._secret_cache_s = secret_cache_s
        self._secret_cache: dict[str, tuple[float, list[str]]] = {}
        self._links = links

        self._client: httpx.AsyncClient | None = None
        self._wake_event = asyncio.Event()
        self._flush_needed = asyncio.Event()
        self._results: list[AttemptOutcome] = []
        self._sending: set[asyncio.Task[None]] = set()  # claimed, being sent or waiting to be
        self._http_slots = asyncio.Semaphore(concurrency)
        self._running = False
        self._stopping = False
        self._closing = False
        self._stopped = asyncio.Event()
        self._attempts = self._delivered = self._retried = self._dead = 0
        self.on_attempt: Callable[[str, float], None] | None = None
        """Told each attempt's outcome and latency in seconds (metrics)."""
        self._claims = self._flushes = 0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        engine: AsyncEngine,
        clock: Clock,
        node_id: str,
        *,
        secret_lookup: SecretLookup | None = None,
        guard: UrlGuard | None = None,
        client_factory: ClientFactory | None = None,
        links: RecordingLinks | None = None,
    ) -> DeliveryWorker:
        """`links` signs recording URLs; without it, a worker whose settings name a
        `signing_key` signs with that (a key of its own would make links no server accepts)."""
        if links is None and settings.signing_key is not None:
            links = RecordingLinks.from_settings(
                settings, settings.signing_key.get_secret_value().encode()
            )
        return cls(
            engine,
            clock,
            node_id,
            secret_lookup=secret_lookup or make_secret_lookup(engine),
            guard=guard or UrlGuard(settings.allow_private_urls),
            client_factory=client_factory,
            concurrency=settings.callback_concurrency,
            timeout_s=settings.callback_timeout_s,
            poll_interval_s=settings.callback_poll_interval_s,
            lease_s=settings.callback_lease_s,
            links=links,
        )

    @property
    def stats(self) -> WorkerStats:
        return WorkerStats(
            self._attempts, self._delivered, self._retried, self._dead, self._claims, self._flushes
        )

    def wake(self) -> None:
        """Look for due rows now (call after committing a transaction that enqueued events)."""
        self._wake_event.set()

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until `stop()`; in-flight attempts finish and are recorded before it returns."""
        if self._running:
            raise RuntimeError("the delivery worker is already running")
        self._running, self._stopping, self._closing = True, False, False
        self._stopped.clear()
        flusher = asyncio.create_task(self._flush_loop())
        try:
            while not self._stopping:
                self._wake_event.clear()
                # Claim up to twice the HTTP concurrency, so sends continue while the previous
                # batch is written back and the next one claimed.
                want = min(2 * self._concurrency - len(self._sending), self._claim_batch)
                full_batch = want > 0 and await self._claim_and_start(want) == want
                if full_batch and len(self._sending) < 2 * self._concurrency:
                    continue  # more may be due right now
                await self._wait()
            if self._sending:
                await asyncio.gather(*self._sending, return_exceptions=True)
        except asyncio.CancelledError:
            for task in self._sending:
                task.cancel()  # unrecorded rows are re-sent once their lease expires
            raise
        finally:
            self._closing = True
            self._flush_needed.set()
            await asyncio.shield(flusher)
            await self.aclose()
            self._running = False
            self._stopped.set()

    async def stop(self) -> None:
        """Stop claiming, let in-flight attempts finish, record them; returns when `run` ended."""
        self._stopping = True
        self._wake_event.set()
        if self._running:
            await self._stopped.wait()
        else:
            await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _wait(self) -> None:
        timer = self._clock.call_later(self._poll_interval_s, self._wake_event.set)
        try:
            await self._wake_event.wait()
        finally:
            timer.cancel()

    async def _claim_and_start(self, want: int) -> int:
        try:
            rows = await self._claim(want)
        except Exception:
            logger.exception("callback outbox claim failed", extra={"node_id": self._node_id})
            return 0
        if rows:
            self._claims += 1
            secrets = await self._secrets_for(rows)
            for row in rows:
                task = asyncio.create_task(self._deliver_bounded(row, secrets.get(row.account_sid)))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        return len(rows)

    async def _flush_loop(self) -> None:
        failures = 0
        while True:
            await self._flush_needed.wait()
            if self._sending and not self._closing and len(self._results) < self._claim_batch:
                # Let results that complete together share one transaction. Real time on
                # purpose: a few ms of I/O batching, not a schedule (tests' clocks need not move).
                await asyncio.sleep(_FLUSH_WINDOW_S)
            self._flush_needed.clear()
            if self._results:
                self._flushes += 1
                batch, self._results = self._results, []
                if await self._write(batch):
                    failures = 0
                    self._wake_event.set()  # rows settled: successors may be due, slots are free
                else:
                    self._results[:0] = batch
                    failures += 1
                    if self._closing and failures >= _FLUSH_RETRIES_ON_CLOSE:
                        logger.error(
                            "dropping unrecorded callback outcomes; their leases will expire "
                            "and they will be sent again",
                            extra={"count": len(self._results)},
                        )
                        self._results = []
                        return
                    await self._clock.sleep(_FLUSH_RETRY_S)
                    self._flush_needed.set()
                    continue
            if self._closing and not self._results:
                return

    # --- one pass, for tests and tools ---------------------------------------------------

    async def drain_once(self, limit: int | None = None) -> int:
        """Claim what is due now, attempt it all, record the outcomes; returns rows attempted."""
        if self._running:
            raise RuntimeError("drain_once cannot be used while run() is active")
        rows = await self._claim(limit or self._claim_batch)
        if not rows:
            return 0
        secrets = await self._secrets_for(rows)
        slots = asyncio.Semaphore(self._concurrency)

        async def one(row: OutboxRow) -> None:
            async with slots:
                await self._deliver(row, secrets.get(row.account_sid))

        await asyncio.gather(*(one(r) for r in rows))
        batch, self._results = self._results, []
        if not await self._write(batch):
            raise RuntimeError("could not record callback outcomes")
        return len(rows)

    async def drain(self, max_rounds: int = 1000) -> int:
        """`drain_once` until nothing is due now (e.g. to flush successors of delivered rows)."""
        total = 0
        for _ in range(max_rounds):
            n = await self.drain_once()
            if n == 0:
                break
            total += n
        return total

    # --- internals -----------------------------------------------------------------------

    async def _claim(self, limit: int) -> list[OutboxRow]:
        return await claim_due(
            self._engine,
            node_id=self._node_id,
            now=self._clock.now(),
            limit=limit,
            lease_s=self._lease_s,
        )

    async def _secrets_for(self, rows: Sequence[OutboxRow]) -> Mapping[str, list[str] | None]:
        """Secrets per account for one claimed batch; None marks a failed lookup.

        Lookups are cached for `secret_cache_s`, so a rotation is used within that time.
        """
        found: dict[str, list[str] | None] = {}
        now = self._clock.monotonic()
        for account_sid in {r.account_sid for r in rows}:
            cached = self._secret_cache.get(account_sid)
            if cached is not None and now - cached[0] < self._secret_cache_s:
                found[account_sid] = cached[1]
                continue
            try:
                secrets = list(await self._secret_lookup(account_sid))
            except Exception:
                logger.exception("webhook secret lookup failed", extra={"account_sid": account_sid})
                found[account_sid] = None
                continue
            found[account_sid] = secrets
            if len(self._secret_cache) >= _SECRET_CACHE_MAX:
                self._secret_cache.clear()
            self._secret_cache[account_sid] = (now, secrets)
        return found

    def _client_now(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    async def _deliver_bounded(self, row: OutboxRow, secrets: list[str] | None) -> None:
        async with self._http_slots:
            await self._deliver(row, secrets)

    async def _deliver(self, row: OutboxRow, secrets: list[str] | None) -> None:
        started = self._clock.now()
        try:
            if row.attempts > MAX_ATTEMPTS:
                # A node died during the final attempt; its lease expired. Never silently drop.
                result = AttemptResult(None, 0.0, "lease expired during the final attempt", None)
                self._settle(row, started, result, give_up=True)
                return
            if secrets is None:
                result = AttemptResult(None, 0.0, "webhook secret lookup failed", None)
            else:
                if not secrets:
                    logger.warning(
                        "account has no webhook secret; sending unsigned",
                        extra={"account_sid": row.account_sid, "event_sid": row.event_sid},
                    )
                payload = row.payload
                if self._links is not None:
                    payload = self._links.sign_all(payload, row.account_sid)
                delivery = Delivery(
                    event_sid=row.event_sid,
                    url=row.url,
                    method=CallbackMethod(row.method),
                    content_type=CallbackContentType(row.content_type),
                    payload=payload,
                )
                result = await send(
                    self._client_now(),
                    delivery,
                    secrets=secrets,
                    now=started,
                    timeout_s=self._timeout_s,
                )
            self._settle(row, started, result)
        except Exception:
            logger.exception(
                "callback attempt failed internally",
                extra={"event_sid": row.event_sid, "call_sid": row.call_sid},
            )
            self._settle(row, started, AttemptResult(None, 0.0, "internal error", None))

    def _settle(
        self, row: OutboxRow, started: datetime, result: AttemptResult, *, give_up: bool = False
    ) -> None:
        finished = self._clock.now()
        verdict = result.verdict
        next_at: datetime | None = None
        error = result.error
        action: Action
        if give_up:
            action = "dead"
        elif verdict is Verdict.DELIVERED:
            action = "delivered"
        elif verdict is Verdict.GONE:
            action = "gone"
        elif verdict is Verdict.FAIL:
            action = "dead"
        else:
            delay = next_delay(row.attempts, self._rng, result.retry_after_s)
            if delay is None:
                action = "dead"
                error = f"{error} (gave up after {row.attempts} attempts)"
            else:
                action = "retry"
                next_at = finished + timedelta(seconds=delay)
        self._attempts += 1
        if self.on_attempt is not None:
            self.on_attempt(action, result.latency_ms / 1000)
        log_extra = {
            "event_sid": row.event_sid,
            "call_sid": row.call_sid,
            "attempt": row.attempts,
            "status_code": result.status_code,
            "latency_ms": round(result.latency_ms, 1),
        }
        if action == "delivered":
            self._delivered += 1
            logger.debug("callback delivered", extra=log_extra)
        elif action == "retry":
            self._retried += 1
            logger.info("callback attempt failed; will retry", extra=log_extra | {"error": error})
        else:
            self._dead += 1
            logger.warning("callback dead-lettered", extra=log_extra | {"error": error})
        self._results.append(
            AttemptOutcome(
                outbox_id=row.id,
                call_sid=row.call_sid,
                url=row.url,
                attempt=row.attempts,
                started_at=started,
                finished_at=finished,
                status_code=result.status_code,
                latency_ms=result.latency_ms,
                error=error,
                action=action,
                next_attempt_at=next_at,
            )
        )
        self._flush_needed.set()

    async def _write(self, batch: list[AttemptOutcome]) -> bool:
        if not batch:
            return True
        try:
            async with self._engine.begin() as conn:
                await record_outcomes(conn, batch, node_id=self._node_id)
        except Exception:
            logger.exception("recording callback outcomes failed", extra={"count": len(batch)})
            return False
        return True
