"""End to end: `callbridge serve` as a real process with a config file, driven over HTTP, with
a real callback receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ..users.servers import Server, basic, demo_server, set_phone
from ..webhooks.helpers import Receiver

AUTH = basic("k_live_1", "t_live_1")
AGENT, CUSTOMER = "+919900000001", "+919800000001"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with demo_server("e2e", tmp_path, env={"CALLBRIDGE_LOG_LEVEL": "INFO"}) as proc:
        yield proc


async def wait_terminal(client: httpx.AsyncClient, url: str, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        details = (await client.get(url, headers=AUTH)).json()["response"]["call_details"]
        if details["state"] == "terminal":
            return details  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError("call did not end in time")


async def test_click_to_call_over_http_with_callbacks(server: Server, receiver: Receiver) -> None:
    base = server.base_url
    async with httpx.AsyncClient(timeout=10) as client:
        await set_phone(client, server, AGENT, AUTH, outcome="answer", answer_after=0.2)
        await set_phone(
            client, server, CUSTOMER, AUTH, outcome="answer", answer_after=0.3, hangup_after=1
        )
        r = await client.post(
            f"{base}/v3/accounts/acme/calls",
            headers=AUTH,
            json={
                "from": {"contact_uri": "09900000001"},
                "to": {"contact_uri": CUSTOMER},
                "virtual_number": "02241499102",
                "custom_field": "e2e",
                "status_callback": [
                    {"event": "answered", "url": receiver.url("/cb?tok=cb-url-token-7")},
                    {"event": "terminal", "url": receiver.url("/cb?tok=cb-url-token-7")},
                ],
            },
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == r.json()["request_id"]
        sid = r.json()["response"]["call_details"]["sid"]
        busy = await client.post(
            f"{base}/v3/accounts/acme/calls",
            headers=AUTH,
            json={
                "from": {"contact_uri": AGENT},
                "to": {"contact_uri": "+919800000077"},
                "virtual_number": "+912241499102",
            },
        )
        assert busy.json()["response"]["error_data"]["code"] == 10706
        details = await wait_terminal(client, f"{base}/v3/accounts/acme/calls/{sid}")
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 1
        assert details["custom_field"] == "e2e"
        legs = (await client.get(f"{base}/v3/accounts/acme/calls/{sid}/legs", headers=AUTH)).json()[
            "response"
        ]["leg_details"]
        assert [leg["status"] for leg in legs["from"]] == ["completed"]
        assert [leg["status"] for leg in legs["to"]] == ["completed"]
        await receiver.wait_for(2, timeout_s=10)
        events = [json.loads(x.body)["event_details"]["event_type"] for x in receiver.requests]
        assert events == ["answered", "terminal"]
        terminal = json.loads(receiver.requests[1].body)["call_details"]
        assert terminal["status"] == "completed"
        assert terminal["sid"] == sid
        again = await client.post(
            f"{base}/v3/accounts/acme/calls",
            headers=AUTH,
            json={
                "from": {"contact_uri": AGENT},
                "to": {"contact_uri": "+919800000077"},
                "virtual_number": "+912241499102",
            },
        )
        assert again.status_code == 200
    log = server.log_tail(200_000)
    assert "t_live_1" not in log
    assert "cb-url-token-7" not in log  # a callback URL's query is not logged either
    assert sid in log
    assert "request_id" in log


async def test_idle_keep_alive_connection_outlives_a_client_pool(server: Server) -> None:
    """A connection left idle longer than common client pools keep one (5 s) is still open,
    so a pooled client's next request never races the server closing it."""
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        await _get_healthz(reader, writer, request)
        await asyncio.sleep(6)  # real idle time: what is tested is the server's own timer
        await _get_healthz(reader, writer, request)
    finally:
        writer.close()


async def _get_healthz(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
