"""One attempt against a real receiver on 127.0.0.1: headers, encodings and every failure mode."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from standardwebhooks import Webhook

from callbridge.domain.callbacks import build_payload
from callbridge.domain.options import CallbackContentType, CallbackMethod
from callbridge.webhooks.schedule import FailureKind, Verdict
from callbridge.webhooks.sender import Delivery, build_client, send
from callbridge.webhooks.signing import new_secret
from callbridge.webhooks.ssrf import UrlGuard

from .helpers import Receiver, Reply
from .test_callbacks import parse_multipart

SECRET = new_secret()
PAYLOAD = build_payload("terminal", {"sid": "c" * 32, "status": "completed", "duration": 7})


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(UrlGuard(True), timeout_s=2.0) as c:
        yield c


def delivery(
    url: str,
    method: CallbackMethod = CallbackMethod.POST,
    content_type: CallbackContentType = CallbackContentType.JSON,
) -> Delivery:
    return Delivery("e" * 32, url, method, content_type, PAYLOAD)


def now() -> datetime:
    return datetime.now(UTC)


def webhook_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("webhook-")}


async def test_json_post_carries_event_sid_and_a_verifiable_signature(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    result = await send(client, delivery(receiver.url()), secrets=[SECRET], now=now())
    assert result.verdict is Verdict.DELIVERED
    assert result.status_code == 200 and result.error is None and result.latency_ms > 0
    (got,) = receiver.requests
    assert got.method == "POST" and got.path == "/hook"
    assert got.headers["x-exotel-event-sid"] == "e" * 32
    assert got.headers["webhook-id"] == "e" * 32
    assert got.headers["content-type"] == "application/json"
    assert json.loads(got.body) == PAYLOAD
    assert Webhook(SECRET).verify(got.body, webhook_headers(got.headers)) == PAYLOAD


async def test_multipart_post_parses_back_and_verifies(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    d = delivery(receiver.url(), content_type=CallbackContentType.MULTIPART)
    await send(client, d, secrets=[SECRET], now=now())
    (got,) = receiver.requests
    fields = parse_multipart(got.body, got.headers["content-type"])
    assert json.loads(fields["call_details"]) == PAYLOAD["call_details"]
    assert json.loads(fields["event_details"]) == {"event_type": "terminal"}
    Webhook(SECRET).verify(got.body, webhook_headers(got.headers), json_parse=False)


async def test_get_sends_query_params_keeps_existing_ones_and_signs_an_empty_body(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    d = delivery(receiver.url("/hook?token=abc"), method=CallbackMethod.GET)
    await send(client, d, secrets=[SECRET], now=now())
    (got,) = receiver.requests
    assert got.method == "GET" and got.body == b""
    assert "content-type" not in got.headers
    assert got.query["token"] == ["abc"]
    assert json.loads(got.query["call_details"][0]) == PAYLOAD["call_details"]
    assert json.loads(got.query["event_details"][0]) == {"event_type": "terminal"}
    Webhook(SECRET).verify(b"", webhook_headers(got.headers), json_parse=False)


async def test_rotation_signs_with_both_secrets(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    old = new_secret()
    await send(client, delivery(receiver.url()), secrets=[SECRET, old], now=now())
    headers = webhook_headers(receiver.requests[0].headers)
    Webhook(SECRET).verify(receiver.requests[0].body, headers)
    Webhook(old).verify(receiver.requests[0].body, headers)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (408, Verdict.RETRY),
        (400, Verdict.FAIL),
        (404, Verdict.FAIL),
        (410, Verdict.GONE),
        (204, Verdict.DELIVERED),
    ],
)
async def test_status_codes_map_to_verdicts(
    receiver: Receiver, client: httpx.AsyncClient, status: int, verdict: Verdict
) -> None:
    receiver.replies = [Reply(status, body=b"" if status == 204 else b"x")]
    result = await send(client, delivery(receiver.url()), secrets=[SECRET], now=now())
    assert result.status_code == status
    assert result.verdict is verdict
    assert (result.error is None) == (verdict is Verdict.DELIVERED)


async def test_redirect_is_a_failure_and_is_not_followed(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.replies = [Reply(307, {"Location": receiver.url("/elsewhere")})]
    result = await send(client, delivery(receiver.url()), secrets=[SECRET], now=now())
    assert result.verdict is Verdict.FAIL
    assert result.error == "HTTP 307: redirects are not followed"
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_retry_after_seconds_and_date(receiver: Receiver, client: httpx.AsyncClient) -> None:
    at = now()
    receiver.replies = [
        Reply(429, {"Retry-After": "30"}),
        Reply(503, {"Retry-After": format_datetime(at + timedelta(seconds=90), usegmt=True)}),
        Reply(500, {"Retry-After": "garbage"}),
    ]
    results = [
        await send(client, delivery(receiver.url()), secrets=[SECRET], now=at) for _ in range(3)
    ]
    assert results[0].retry_after_s == 30
    assert results[1].retry_after_s is not None and 89 <= results[1].retry_after_s <= 90
    assert results[2].retry_after_s is None


async def test_connection_refused_is_a_retryable_connect_failure(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    url = receiver.url()
    await receiver.stop()
    result = await send(client, delivery(url), secrets=[SECRET], now=now())
    assert result.status_code is None
    assert result.failure is FailureKind.CONNECT
    assert result.verdict is Verdict.RETRY
    assert result.error and "ConnectError" in result.error


async def test_a_slow_receiver_times_out(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.replies = [Reply(200, delay_s=1.0)]
    started = time.perf_counter()
    result = await send(
        client,
        delivery(receiver.url()),
        secrets=[SECRET],
        now=now(),
        timeout_s=0.2,
    )
    assert time.perf_counter() - started < 0.9
    assert result.failure is FailureKind.TIMEOUT
    assert result.verdict is Verdict.RETRY


async def test_a_huge_response_body_is_not_read(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.replies = [Reply(200, body=b"x" * (8 * 1024 * 1024))]
    result = await send(client, delivery(receiver.url()), secrets=[SECRET], now=now())
    assert result.verdict is Verdict.DELIVERED


async def test_private_target_is_refused_before_any_request(receiver: Receiver) -> None:
    async with build_client(UrlGuard(False)) as strict:
        result = await send(strict, delivery(receiver.url()), secrets=[SECRET], now=now())
    assert result.failure is FailureKind.UNSAFE_URL
    assert result.verdict is Verdict.FAIL
    assert result.error and "non-public" in result.error
    assert receiver.requests == []


async def test_unsigned_when_the_account_has_no_secret(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    await send(client, delivery(receiver.url()), secrets=[], now=now())
    headers = receiver.requests[0].headers
    assert "webhook-signature" not in headers
    assert headers["webhook-id"] == headers["x-exotel-event-sid"]
