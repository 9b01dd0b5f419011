"""Send one status-callback attempt over httpx and report what happened, without raising.

Redirects are never followed, the response body is read only up to a few KB, and the whole
exchange is bounded by one timeout. Bodies, headers and URLs are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from callbridge.domain.callbacks import encode_request
from callbridge.domain.options import CallbackContentType, CallbackMethod
from callbridge.webhooks.schedule import FailureKind, Verdict, classify, parse_retry_after
from callbridge.webhooks.signing import signature_headers
from callbridge.webhooks.ssrf import PinnedTransport, UnresolvableUrl, UnsafeUrl, UrlGuard

logger = logging.getLogger(__name__)

USER_AGENT = "callbridge-webhooks/1"
EVENT_SID_HEADER = "X-Exotel-Event-Sid"
MAX_RESPONSE_BYTES = 4096
_ERROR_TEXT_LIMIT = 300


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event to one URL, as stored in the outbox."""

    event_sid: str
    url: str
    method: CallbackMethod
    content_type: CallbackContentType
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status_code: int | None
    latency_ms: float
    error: str | None
    retry_after_s: float | None
    failure: FailureKind | None = None

    @property
    def verdict(self) -> Verdict:
        return classify(self.status_code, self.failure)


def build_client(
    guard: UrlGuard, *, timeout_s: float = 10.0, max_connections: int = 100
) -> httpx.AsyncClient:
    """The callback HTTP client: SSRF-pinned transport, no redirects, no proxies from the env."""
    return httpx.AsyncClient(
        transport=PinnedTransport(guard, max_connections=max_connections),
        follow_redirects=False,
        timeout=httpx.Timeout(timeout_s),
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )


def build_headers(
    delivery: Delivery,
    body: bytes,
    content_type: str | None,
    secrets: Sequence[str],
    timestamp: int,
) -> dict[str, str]:
    headers = {EVENT_SID_HEADER: delivery.event_sid}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if secrets:
        headers.update(signature_headers(secrets, delivery.event_sid, timestamp, body))
    else:
        headers["webhook-id"] = delivery.event_sid
        headers["webhook-timestamp"] = str(timestamp)
    return headers


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return (f"{name}: {text}" if text else name)[:_ERROR_TEXT_LIMIT]


async def send(
    client: httpx.AsyncClient,
    delivery: Delivery,
    *,
    secrets: Sequence[str],
    now: datetime,
    timeout_s: float = 10.0,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
    timer: Callable[[], float] = time.perf_counter,
) -> AttemptResult:
    """Make one attempt; `now` stamps the signature and anchors an HTTP-date Retry-After.

    `timer` measures the latency of real I/O (a stopwatch, not a scheduler).
    """
    body, content_type, params = encode_request(
        delivery.payload, delivery.method, delivery.content_type
    )
    timestamp = int(now.timestamp())
    headers = build_headers(delivery, body, content_type, secrets, timestamp)
    started = timer()

    def elapsed_ms() -> float:
        return (timer() - started) * 1000.0

    try:
        async with asyncio.timeout(timeout_s):
            url = httpx.URL(delivery.url)
            if params:
                url = url.copy_merge_params(params)  # keep the URL's own query, add ours
            request = client.build_request(
                delivery.method.value,
                url,
                content=body if delivery.method is CallbackMethod.POST else None,
                headers=headers,
            )
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                received = 0
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received >= max_response_bytes:
                        break
            finally:
                await response.aclose()
    except UnresolvableUrl as exc:
        return AttemptResult(None, elapsed_ms(), f"dns: {exc}", None, FailureKind.NETWORK)
    except UnsafeUrl as exc:
        return AttemptResult(None, elapsed_ms(), f"unsafe url: {exc}", None, FailureKind.UNSAFE_URL)
    except (TimeoutError, httpx.TimeoutException) as exc:
        return AttemptResult(None, elapsed_ms(), _describe(exc), None, FailureKind.TIMEOUT)
    except httpx.ConnectError as exc:
        return AttemptResult(None, elapsed_ms(), _describe(exc), None, FailureKind.CONNECT)
    except (httpx.TransportError, OSError) as exc:
        return AttemptResult(None, elapsed_ms(), _describe(exc), None, FailureKind.NETWORK)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # a URL httpx cannot send
        return AttemptResult(None, elapsed_ms(), _describe(exc), None, FailureKind.UNSAFE_URL)

    status = response.status_code
    latency = elapsed_ms()
    verdict = classify(status, None)
    retry_after = None
    error: str | None = None
    if verdict is not Verdict.DELIVERED:
        error = f"HTTP {status}"
        if 300 <= status < 400:
            error += ": redirects are not followed"
        if verdict is Verdict.RETRY:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
    return AttemptResult(status, latency, error, retry_after)
