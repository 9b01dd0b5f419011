"""`callbridge listen` receiving a real server's callbacks in all three encodings (JSON, form,
GET), each signature checked with the account's secret; a wrong secret is refused with 401,
which the server's delivery log records."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ..users.servers import Server, basic, demo_server, free_port, set_phone

CALLBRIDGE = Path(sys.executable).parent / "callbridge"
AUTH = basic("k_live_1", "t_live_1")
AGENT, CUSTOMER, EXOPHONE = "+919900000001", "+919800000001", "+912241499102"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with demo_server("listened", tmp_path) as proc:
        yield proc


def start_listener(port: int, secret: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(CALLBRIDGE), "listen", "--port", str(port), "--secret", secret],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def read(log: Path) -> str:
    return log.read_text(errors="replace")


async def wait_printed(log: Path, text: str, count: int = 1, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        printed = read(log)
        if printed.count(text) >= count:
            return printed
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not printed: {read(log)[-3000:]}")


async def test_listen_prints_and_verifies_every_encoding(server: Server, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        r = await client.get("/v3/accounts/acme/webhook-secret", headers=AUTH)
        secret = r.json()["response"]["webhook_secret"]["current"]
        port = free_port()
        log = tmp_path / "listen.log"
        listener = start_listener(port, secret, log)
        try:
            await wait_printed(log, "Ctrl-C")
            await set_phone(client, server, CUSTOMER, AUTH, answer_after=1, hangup_after=1)
            hook = f"http://127.0.0.1:{port}"
            callbacks = [
                {"event": "terminal", "url": f"{hook}/json"},
                {"event": "terminal", "url": f"{hook}/form", "content_type": "multipart/form-data"},
                {"event": "terminal", "url": f"{hook}/get?token=abc", "method": "GET"},
            ]
            r = await client.post(
                "/v3/accounts/acme/calls",
                json={
                    "from": {"contact_uri": AGENT},
                    "to": {"contact_uri": CUSTOMER},
                    "virtual_number": EXOPHONE,
                    "status_callback": callbacks,
                },
                headers=AUTH,
            )
            sid = r.json()["response"]["call_details"]["sid"]
            tail = f"event terminal  call {sid}  status completed  signature valid"
            printed = await wait_printed(log, tail, count=3)
            for method_path in ("POST /json", "POST /form", "GET /get"):
                assert f"{method_path}  {tail}" in printed
        finally:
            listener.send_signal(signal.SIGINT)
            assert listener.wait(timeout=20) == 0


async def test_a_wrong_secret_is_refused_and_the_server_logs_it(
    server: Server, tmp_path: Path
) -> None:
    from callbridge.webhooks.signing import new_secret

    port = free_port()
    log = tmp_path / "listen.log"
    listener = start_listener(port, new_secret(), log)
    try:
        await wait_printed(log, "Ctrl-C")
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            await set_phone(client, server, CUSTOMER, AUTH, answer_after=1, hangup_after=1)
            r = await client.post(
                "/v3/accounts/acme/calls",
                json={
                    "from": {"contact_uri": AGENT},
                    "to": {"contact_uri": CUSTOMER},
                    "virtual_number": EXOPHONE,
                    "status_callback": [
                        {"event": "terminal", "url": f"http://127.0.0.1:{port}/hook"}
                    ],
                },
                headers=AUTH,
            )
            sid = r.json()["response"]["call_details"]["sid"]
            await wait_printed(log, f"call {sid}  status completed  signature INVALID")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                r = await client.get(f"/v3/accounts/acme/calls/{sid}/callbacks", headers=AUTH)
                [delivery] = r.json()["response"]["callbacks"]
                if delivery["attempts"]:
                    break
                await asyncio.sleep(0.1)
            assert delivery["attempts"][0]["status_code"] == 401
            assert delivery["status"] == "dead"  # a 4xx other than 408/429 is not retried
    finally:
        listener.send_signal(signal.SIGINT)
        assert listener.wait(timeout=20) == 0
