"""`GET /metrics`: Prometheus text that prometheus_client's own parser reads, counters and gauges
that move with real calls through the simulated carrier, bounded labels, and its settings."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from callbridge.clock import ManualClock
from callbridge.settings import Settings
from callbridge.store.repo import Store
from callbridge.webhooks.worker import DeliveryWorker

from ..harness import ACCOUNT, AGENT, CUSTOMER, Harness, running_app
from ..media.calls_support import media_app
from ..media.support import Bot, tone, wait_for
from ..webhooks.helpers import Receiver

CALLS = "/v3/accounts/{account_sid}/calls"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def clock() -> ManualClock:
    """Callback signatures carry the clock's time; receivers compare it with theirs."""
    return ManualClock(start=datetime.now(UTC))


def parse(text: str) -> Samples:
    """Every sample by (name, labels), read with prometheus_client's own parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(h: Harness) -> Samples:
    r = await h.client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return parse(r.text)


async def test_counters_and_gauges_move_with_a_call_through_the_sim(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    async with running_app(store, clock) as h:
        before = await scrape(h)
        assert value(before, "callbridge_ready") == 1
        assert value(before, "callbridge_database_up") == 1
        assert value(before, "callbridge_nodes", state="live") == 1
        assert value(before, "callbridge_active_calls") == 0

        h.phone(CUSTOMER, "answer", answer_after_s=2, hangup_after_s=10)
        hook = [{"event": "terminal", "url": receiver.url()}]
        r = await h.create_call(status_callback=hook)
        assert r.status_code == 200
        refused = await h.create_call()  # the agent is busy now
        assert refused.status_code == 409
        await h.advance(4)  # both legs answered and talking

        during = await scrape(h)
        admitted = {"account_sid": ACCOUNT, "api": "v3"}
        assert (
            value(
                during,
                "callbridge_call_admissions_total",
                **admitted,
                result="admitted",
                code="200",
            )
            == 1
        )
        assert (
            value(
                during,
                "callbridge_call_admissions_total",
                **admitted,
                result="refused",
                code="10706",
            )
            == 1
        )
        assert value(during, "callbridge_active_calls") == 1
        assert value(during, "callbridge_active_legs") == 2
        assert value(during, "callbridge_busy_agents", account_sid=ACCOUNT) == 1
        assert value(during, "callbridge_outbox_pending") == 0

        await h.advance(20)  # the customer hangs up: the terminal callback is queued
        ended = await scrape(h)
        completed = {"account_sid": ACCOUNT, "direction": "outbound", "status": "completed"}
        assert value(ended, "callbridge_calls_total", **completed) == 1
        assert value(ended, "callbridge_active_calls") == 0
        assert value(ended, "callbridge_busy_agents", account_sid=ACCOUNT) == 0
        assert value(ended, "callbridge_outbox_pending") == 1
        assert value(ended, "callbridge_outbox_oldest_pending_age_seconds") >= 0

        worker: DeliveryWorker = h.services.extras["worker"]
        assert await worker.drain() == 1
        delivered = await scrape(h)
        assert value(delivered, "callbridge_callback_attempts_total", outcome="delivered") == 1
        assert value(delivered, "callbridge_callback_latency_seconds_count") == 1
        assert value(delivered, "callbridge_outbox_pending") == 0
        # A call ended once is counted once, however often its final state is seen.
        assert value(delivered, "callbridge_calls_total", **completed) == 1

        posts = {"method": "POST", "route": CALLS}
        assert (
            value(
                delivered, "callbridge_http_request_duration_seconds_count", **posts, status="200"
            )
            == 1
        )
        assert (
            value(
                delivered, "callbridge_http_request_duration_seconds_count", **posts, status="409"
            )
            == 1
        )
        get_call = {"method": "GET", "route": "/metrics", "status": "200"}
        assert value(delivered, "callbridge_http_request_duration_seconds_count", **get_call) == 3


async def test_labels_carry_templates_and_codes_never_sids_or_numbers(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        r = await h.create_call()
        sid = r.json()["response"]["call_details"]["sid"]
        await h.client.get(f"/v3/accounts/{ACCOUNT}/calls/{sid}", headers=h.auth)
        await h.client.get(f"/v3/accounts/{ACCOUNT}/calls/{'f' * 32}/legs", headers=h.auth)
        await h.client.get("/no/such/path/" + sid)
        # One handler serves both of these paths: each request is labelled with its own.
        numbers = f"/v2_beta/Accounts/{ACCOUNT}/IncomingPhoneNumbers"
        for path in (numbers, numbers + ".json", numbers + ".json"):
            assert (await h.client.get(path, headers=h.auth)).status_code == 200
        await h.client.request("BREW", "/metrics")
        await h.advance(30)
        samples = parse((await h.client.get("/metrics")).text)
        labels = {v for (_, pairs) in samples for (_, v) in pairs}
    assert "/v3/accounts/{account_sid}/calls/{call_sid}" in labels
    assert "/v3/accounts/{account_sid}/calls/{call_sid}/legs" in labels
    numbers = "/v2_beta/Accounts/{account_sid}/IncomingPhoneNumbers"
    requests = "callbridge_http_request_duration_seconds"
    assert value(samples, f"{requests}_count", method="GET", route=numbers, status="200") == 1
    json_route = numbers + ".json"
    assert value(samples, f"{requests}_count", method="GET", route=json_route, status="200") == 2
    assert {"unmatched", "other"} <= labels
    assert not any(re.search(r"[0-9a-f]{32}", v) for v in labels), labels
    assert not any(AGENT in v or CUSTOMER in v or "+91" in v for v in labels), labels


async def test_stream_sessions_and_bytes_follow_a_streamed_call(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    settings = Settings(allow_private_urls=True, log_level="WARNING", data_dir=tmp_path)
    async with Bot() as bot, media_app(store, clock, settings=settings) as h:
        h.phone(AGENT, "answer", answer_after_s=1)
        h.phone(CUSTOMER, "answer", answer_after_s=2, hangup_after_s=2)
        url = f"ws://127.0.0.1:{bot.port}/stream"
        r = await h.create_call(streaming={"url": url, "begin": "from_leg_connect"})
        sid = r.json()["response"]["call_details"]["sid"]
        await h.run(2.0)
        await wait_for(lambda: len(bot.events("media")) >= 9)
        during = await scrape(h)
        assert value(during, "callbridge_stream_sessions_total") == 1
        assert value(during, "callbridge_stream_sessions_active") == 1
        assert value(during, "callbridge_stream_bytes_total", direction="from_bot") == 0
        # The bot answers with 0.2 s of audio, played into the call.
        reply = tone(1000, 0.2)
        stream_sid = bot.events("start")[0]["stream_sid"]
        media = {"payload": base64.b64encode(reply).decode()}
        await bot.send({"event": "media", "stream_sid": stream_sid, "media": media})
        await h.run(0.5)
        await h.terminal(sid)
        await wait_for(lambda: bool(bot.events("stop")))
        await asyncio.sleep(0.05)
        after = await scrape(h)
    sent = sum(len(base64.b64decode(m["media"]["payload"])) for m in bot.events("media"))
    assert sent > 0
    assert value(after, "callbridge_stream_bytes_total", direction="to_bot") == sent
    assert value(after, "callbridge_stream_bytes_total", direction="from_bot") == len(reply)
    assert value(after, "callbridge_stream_sessions_total") == 1
    assert value(after, "callbridge_stream_sessions_active") == 0


async def test_a_metrics_token_requires_the_bearer_header(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    settings = Settings(
        log_level="WARNING", data_dir=tmp_path, metrics_token=SecretStr("scrape-s3cret")
    )
    async with running_app(store, clock, settings=settings) as h:
        for headers in ({}, {"Authorization": "Bearer wrong"}, h.auth):
            r = await h.client.get("/metrics", headers=headers)
            assert r.status_code == 401
            assert r.json()["response"]["error_data"]["code"] == 1010
            assert "scrape-s3cret" not in r.text
        r = await h.client.get("/metrics", headers={"Authorization": "Bearer scrape-s3cret"})
        assert r.status_code == 200
        assert "callbridge_ready 1.0" in r.text


async def test_metrics_can_be_turned_off(store: Store, clock: ManualClock, tmp_path: Path) -> None:
    settings = Settings(log_level="WARNING", data_dir=tmp_path, metrics_enabled=False)
    async with running_app(store, clock, settings=settings) as h:
        r = await h.client.get("/metrics")
        assert r.status_code == 404
        paths = (await h.client.get("/openapi.json")).json()["paths"]
        assert "/metrics" not in paths


async def test_openapi_lists_metrics_as_text(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        paths = (await h.client.get("/openapi.json")).json()["paths"]
    content = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert any(kind.startswith("text/plain") for kind in content)
