"""No log level prints a credential: `callbridge serve --log-level DEBUG` (a real process) runs
a call that streams to a real WebSocket bot with credentials in its URL (userinfo and a
`?token=`) and posts a status callback to a URL with a token in its query; the log holds none
of those secrets, nor the API token, the webhook secret or a guessed token, and still says
what happened."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from ..media.support import Bot
from ..users.servers import Server, basic, demo_server, set_phone
from ..webhooks.helpers import Receiver

AUTH = basic("k_live_1", "t_live_1")
AGENT, CUSTOMER = "+919900000001", "+919800000001"
BOT_USER, BOT_PASSWORD = "botuser", "bot-pass-5521"
STREAM_TOKEN = "stream-tok-8812"
CALLBACK_TOKEN = "cb-tok-3391"
GUESSED_TOKEN = "guess-tok-7777"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with demo_server("debug", tmp_path, env={"CALLBRIDGE_LOG_LEVEL": "DEBUG"}) as proc:
        yield proc


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_debug_log_of_a_streamed_call_with_callbacks_holds_no_secret(
    server: Server,
) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        async with Bot() as bot, httpx.AsyncClient(timeout=10) as client:
            base = server.base_url
            await set_phone(client, server, AGENT, AUTH, outcome="answer", answer_after=0.2)
            await set_phone(
                client, server, CUSTOMER, AUTH, outcome="answer", answer_after=0.2, hangup_after=2
            )
            stream_url = (
                f"ws://{BOT_USER}:{BOT_PASSWORD}@127.0.0.1:{bot.port}/bot"
                f"?token={STREAM_TOKEN}&lang=en"
            )
            r = await client.post(
                f"{base}/v3/accounts/acme/calls",
                headers=AUTH,
                json={
                    "from": {"contact_uri": AGENT},
                    "to": {"contact_uri": CUSTOMER},
                    "virtual_number": "+912241499102",
                    "streaming": {"url": stream_url},
                    "status_callback": [
                        {"event": "terminal", "url": receiver.url(f"/cb?token={CALLBACK_TOKEN}")}
                    ],
                },
            )
            assert r.status_code == 200, r.text
            sid = r.json()["response"]["call_details"]["sid"]

            async def ended() -> bool:
                url = f"{base}/v3/accounts/acme/calls/{sid}"
                details = (await client.get(url, headers=AUTH)).json()["response"]
                return bool(details["call_details"]["state"] == "terminal")

            await wait_until(ended)
            await receiver.wait_for(1, timeout_s=15)

            async def stream_stopped() -> bool:
                return bool(bot.events("stop"))

            await wait_until(stream_stopped)
            secret = await client.get(f"{base}/v3/accounts/acme/webhook-secret", headers=AUTH)
            webhook_secret = secret.json()["response"]["webhook_secret"]["current"]
            guess = await client.get(
                f"{base}/v3/accounts/acme/calls/{sid}", headers=basic("k_live_1", GUESSED_TOKEN)
            )
            assert guess.status_code == 401
    finally:
        await receiver.stop()
    # The secrets really went out: their absence from the log means something.
    bot_credentials = base64.b64encode(f"{BOT_USER}:{BOT_PASSWORD}".encode()).decode()
    assert bot.auth_headers == [f"Basic {bot_credentials}"]
    start = bot.events("start")[0]
    assert start["start"]["custom_parameters"]["token"] == STREAM_TOKEN
    assert receiver.requests[0].query["token"] == [CALLBACK_TOKEN]
    server.kill(15)  # a graceful stop flushes the whole log
    log = server.log_path.read_text(errors="replace")
    secrets = {
        "stream URL password": BOT_PASSWORD,
        "stream Basic credentials": bot_credentials,
        "stream URL token": STREAM_TOKEN,
        "callback URL token": CALLBACK_TOKEN,
        "API token": "t_live_1",
        "API Basic credentials": AUTH["Authorization"].split()[1],
        "webhook secret": webhook_secret,
        "guessed token": GUESSED_TOKEN,
        "guessed Basic credentials": basic("k_live_1", GUESSED_TOKEN)["Authorization"].split()[1],
    }
    leaked = {name: _line_with(log, value) for name, value in secrets.items() if value in log}
    assert not leaked, leaked
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line["level"] == "debug" for line in lines)  # DEBUG was really on
    assert any(line.get("call_sid") == sid for line in lines)
    assert any(line["msg"] == "request" and line.get("status") == 401 for line in lines)
    assert any("websockets" in line["logger"] for line in lines), "the stream client says nothing"


def _line_with(log: str, value: str) -> str:
    return next(line for line in log.splitlines() if value in line)[:300]
