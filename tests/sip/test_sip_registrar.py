"""Agents' SIP phones through the registrar, end to end on the SIP driver: SIPp registers with
digest auth (a wrong password is refused), a click-to-call to the device reaches the SIPp UAS at
its binding (the device's own AOR resolves nowhere), and after SIPp unregisters the device
answers 409/1012 through the real API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from callbridge.clock import SystemClock
from callbridge.config import apply_config, parse_config
from callbridge.store.repo import Store
from callbridge.store.tables import sip_bindings
from tests.sip.conftest import sip_settings
from tests.sip.sipp import Sipp, free_port, start_sipp
from tests.sip.support import (
    ACCOUNT,
    AGENT_HZ,
    AUTH,
    CONFIG,
    CUSTOMER_HZ,
    SipApp,
    sip_app,
)

pytestmark = pytest.mark.sip

DOMAIN = "agents.callbridge.test"
USER = "2001"
PASSWORD = "phone-secret-77"
DEVICE = f"sip:{USER}@{DOMAIN}"
CUSTOMER = "+919800000001"
REALM = "callbridge"

USERS = f"""
[[accounts.users]]
first_name = "Sipa"
last_name = "Phone"
email = "sipa@example.com"

[[accounts.users.devices]]
contact_uri = "{DEVICE}"
available = true
verified = true
sip_password = "{PASSWORD}"
"""


@pytest.fixture
async def registrar_port() -> int:
    return free_port()


@pytest.fixture
async def customer(sipp: Callable[..., Sipp]) -> Sipp:
    return sipp("uas_answer_tone_then_bye.xml", tone_hz=CUSTOMER_HZ, pause_ms=1500)


@pytest.fixture
async def app(store: Store, registrar_port: int, customer: Sipp) -> AsyncIterator[SipApp]:
    await apply_config(store, parse_config(CONFIG + USERS), SystemClock(), sip_realm=REALM)
    settings = sip_settings(
        workers=1,
        allow_private_urls=True,
        sip_registrar_port=registrar_port,
        sip_registrar_realm=REALM,
        sip_trunk_host="127.0.0.1",
        sip_trunk_port=customer.port,
    )
    async with sip_app(store, settings) as running:
        yield running


async def register(
    tmp_path: Path, registrar_port: int, contact: str, expires: int, password: str = PASSWORD
) -> int:
    """Run the REGISTER scenario to its end; SIPp's exit code (0 = the expected answer came)."""
    scenario = "uac_register.xml" if password == PASSWORD else "uac_register_refused.xml"
    phone = start_sipp(
        scenario,
        tmp_path / f"register-{expires}-{len(password)}",
        remote=f"127.0.0.1:{registrar_port}",
        timeout_s=10,
        keys={"user": USER, "domain": DOMAIN, "contact": contact, "expires": str(expires)},
        extra=["-au", USER, "-ap", password],
    )
    try:
        return await asyncio.to_thread(phone.wait, 15)
    finally:
        phone.stop()


async def bound_contacts(app: SipApp) -> list[str]:
    async with app.store.read() as conn:
        return [r[0] for r in await conn.execute(select(sip_bindings.c.contact))]


async def call_device(app: SipApp) -> tuple[int, int | None]:
    """Click-to-call from the device: the answer's HTTP status and Exotel code."""
    r = await app.client.post(
        f"/v3/accounts/{ACCOUNT}/calls",
        json={
            "from": {"contact_uri": DEVICE},
            "to": {"contact_uri": CUSTOMER},
            "virtual_number": "+912241499102",
        },
        headers=AUTH,
    )
    error = r.json()["response"].get("error_data")
    return r.status_code, error["code"] if error else None


async def test_registered_phone_is_called_at_its_binding_and_unregistered_answers_1012(
    app: SipApp, registrar_port: int, customer: Sipp, sipp: Callable[..., Sipp], tmp_path: Path
) -> None:
    phone = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=200)
    contact = f"sip:{USER}@{phone.uri_host}"

    assert await register(tmp_path, registrar_port, contact, 120, "wrong-password") == 0
    assert await bound_contacts(app) == []
    assert await call_device(app) == (409, 1012)

    assert await register(tmp_path, registrar_port, contact, 120) == 0
    assert await bound_contacts(app) == [contact]
    sid = await app.create_call(DEVICE, CUSTOMER)
    details = await app.wait_terminal(sid, timeout_s=20)
    assert details["status"] == "completed", details
    assert await app.leg_statuses(sid) == (["completed"], ["completed"])
    legs = await app.legs(sid)
    assert legs["from"][0]["contact_uri"] == DEVICE
    assert await asyncio.to_thread(phone.wait, 10) == 0  # the phone took our INVITE and BYE
    assert await app.busy_uris() == []

    assert await register(tmp_path, registrar_port, contact, 0) == 0
    assert await bound_contacts(app) == []
    assert await call_device(app) == (409, 1012)
