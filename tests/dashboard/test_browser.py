"""The dashboard in a real browser: a `callbridge serve` process and headless Chromium
(Playwright) that signs in, watches a click-to-call ring, connect and end, and the agent go
busy and free again. Skipped without /usr/bin/chromium unless CALLBRIDGE_REQUIRE_BROWSER=1."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..users.servers import Server, set_phone, shared_database

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_TIMEOUT_MS = 15_000
AGENT = "+919900000001"
CUSTOMER = "+919800000001"
EXOPHONE = "+912241499102"
KEY, TOKEN = "k_dash", "t_dash_secret"

CONFIG = f"""
[[accounts]]
sid = "dash"
api_key = "{KEY}"
api_token = "{TOKEN}"
exophones = ["{EXOPHONE}"]
rate_limit_per_minute = 0

[[accounts.users]]
first_name = "Asha"
last_name = "Rao"
email = "asha@example.com"

[[accounts.users.devices]]
contact_uri = "{AGENT}"
name = "Asha mobile"
available = true
verified = true

[[accounts.users]]
first_name = "Ravi"
last_name = "Kumar"
email = "ravi@example.com"
role = "supervisor"

[[accounts.users.devices]]
contact_uri = "+919900000002"
name = "Ravi desk"
available = false
verified = true
"""


def _require_browser() -> Any:
    required = os.environ.get("CALLBRIDGE_REQUIRE_BROWSER") == "1"
    if not CHROMIUM.exists():
        if required:
            pytest.fail(f"CALLBRIDGE_REQUIRE_BROWSER=1 but {CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} not installed")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        if required:
            pytest.fail("CALLBRIDGE_REQUIRE_BROWSER=1 but playwright is not installed")
        pytest.skip("playwright not installed")
    return async_playwright


@pytest.fixture
def server_database(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite file (migrations run their own event loop, so not inside a test's)."""
    with shared_database("sqlite", tmp_path) as url:
        yield url


@asynccontextmanager
async def running_server(tmp_path: Path, database_url: str) -> AsyncIterator[Server]:
    config = tmp_path / "dash.toml"
    config.write_text(CONFIG)
    server = Server("dash", database_url, tmp_path, config=config)
    server.start()
    try:
        await server.wait_ready()
        yield server
    finally:
        server.kill(signal.SIGTERM)


async def test_dashboard_shows_a_call_live_from_ringing_to_its_end(
    tmp_path: Path, server_database: str
) -> None:
    async_playwright = _require_browser()
    auth = {"Authorization": httpx.BasicAuth(KEY, TOKEN)._auth_header}
    async with (
        running_server(tmp_path, server_database) as server,
        httpx.AsyncClient(timeout=10.0) as client,
        async_playwright() as pw,
    ):
        await set_phone(client, server, AGENT, auth, outcome="answer", answer_after=1)
        await set_phone(
            client, server, CUSTOMER, auth, outcome="answer", answer_after=2, hangup_after=4
        )
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 820},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            problems: list[str] = []
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda e: problems.append(str(e)))

            await page.goto(f"{server.base_url}/dashboard")
            await page.fill("#key", KEY)
            await page.fill("#token", TOKEN)
            await page.click("#signin button[type=submit]")
            await page.wait_for_selector("#conn[data-state=live]")
            assert await page.text_content("#account") == "account dash"
            agent = f'.device[data-contact="{AGENT}"]'
            await page.wait_for_selector(f'{agent}[data-status="free"]')
            off = await page.text_content('.device[data-contact="+919900000002"]')
            assert off is not None and "OFF" in off and "verified" in off

            r = await client.post(
                f"{server.base_url}/v3/accounts/dash/calls",
                json={
                    "from": {"contact_uri": AGENT},
                    "to": {"contact_uri": CUSTOMER},
                    "virtual_number": EXOPHONE,
                },
                headers=auth,
            )
            assert r.status_code == 200, r.text
            sid = r.json()["response"]["call_details"]["sid"]
            row = f'#active-rows tr[data-sid="{sid}"]'

            # The call appears while it rings, then its phase moves on to connected.
            await page.wait_for_selector(f"{row} td[data-field=phase] .badge.ringing_to")
            assert await page.text_content(f"{row} td.sid") == sid  # whole, never cut
            assert await page.text_content(f"{row} td:nth-child(3)") == AGENT
            assert await page.text_content(f"{row} td:nth-child(4)") == CUSTOMER
            await page.wait_for_selector(f'{agent}[data-status="busy"]')
            busy_call = await page.text_content(f"{agent} [data-field=active_call]")
            assert busy_call == f"on {sid}"
            # One free/busy badge per agent: the agent's own, not one more per device.
            asha = '.agent:has(.device[data-contact="+919900000001"])'
            assert await page.locator(f"{asha} .badge").all_text_contents() == ["busy"]
            await page.wait_for_selector(f"{row} td[data-field=phase] .badge.connected")
            legs = await page.locator(f"{row} .leg").all_text_contents()
            assert legs == ["from in-progress", "to in-progress"]
            await page.wait_for_timeout(1200)  # the duration ticks while connected
            duration = await page.text_content(f"{row} td[data-field=duration]")
            assert duration is not None and duration != "0:00", duration
            await page.screenshot(path=str(tmp_path / "dashboard-connected.png"), full_page=True)

            # It ends with its terminal status among the recently ended calls; the agent is free.
            ended = f'#ended-rows tr[data-sid="{sid}"]'
            await page.wait_for_selector(f"{ended} td[data-field=status] .badge.completed")
            assert await page.locator(row).count() == 0
            assert await page.text_content(f"{ended} td.sid") == sid
            r = await client.get(f"{server.base_url}/v3/accounts/dash/calls/{sid}", headers=auth)
            end_time = r.json()["response"]["call_details"]["end_time"]
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+05:30", end_time)
            assert await page.text_content(f"{ended} td[data-field=end_time]") == end_time
            await page.wait_for_selector(f'{agent}[data-status="free"]')
            assert await page.locator(f"{agent} [data-field=active_call]").count() == 0
            assert await page.locator(f"{asha} .badge").all_text_contents() == ["free"]
            ravi = '.agent:has(.device[data-contact="+919900000002"])'
            assert await page.locator(f"{ravi} .badge").all_text_contents() == ["off"]
            await page.screenshot(path=str(tmp_path / "dashboard-ended.png"), full_page=True)

            # Credentials live in this tab's sessionStorage only; never in cookies or the URL.
            assert await context.cookies() == []
            assert TOKEN not in page.url
            assert problems == []

            await page.click("#signout")
            await page.wait_for_selector("#signin:not([hidden])")
            stored = await page.evaluate("sessionStorage.length")
            assert stored == 0
        finally:
            await context.close()


async def test_dashboard_rejects_wrong_credentials(tmp_path: Path, server_database: str) -> None:
    async_playwright = _require_browser()
    async with running_server(tmp_path, server_database) as server, async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            await page.goto(f"{server.base_url}/dashboard")
            await page.fill("#key", KEY)
            await page.fill("#token", "not-the-token")
            await page.click("#signin button[type=submit]")
            await page.wait_for_selector("#signin-error:has-text('not accepted')")
            assert await page.is_hidden("#board")
            await page.screenshot(path=str(tmp_path / "dashboard-signin.png"))
        finally:
            await context.close()
