"""Devices' SIP credentials: set through the Users API or the config file, stored only as a
digest HA1, never echoed or logged; a change (or a new contact URI) drops the old bindings, while
the config applied again at a restart keeps them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from callbridge.clock import ManualClock
from callbridge.config import ConfigError, apply_config, parse_config
from callbridge.registrar.digest import ha1
from callbridge.settings import Settings
from callbridge.store.repo import Store
from callbridge.store.tables import devices, sip_bindings

from ..harness import Harness, running_app
from ..users.helpers import error_code, put_device, user_by_contact
from .phone import Phone
from .test_registrar import CONFIG, PASSWORD, PLAIN_SIP_AGENT, SIP_AGENT

NEW_PASSWORD = "another-long-pw"


@pytest.fixture
async def h(store: Store, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = Settings(
        allow_private_urls=True,
        log_level="WARNING",
        data_dir=tmp_path,
        sip_registrar_port=0,
        sip_registrar_realm="acme.example",
    )
    async with running_app(store, clock, config=CONFIG, settings=settings) as harness:
        yield harness


async def stored_ha1(h: Harness, uri: str) -> str | None:
    async with h.services.store.read() as conn:
        value = (
            await conn.execute(select(devices.c.sip_ha1).where(devices.c.contact_uri == uri))
        ).scalar()
    return value


async def binding_count(h: Harness) -> int:
    async with h.services.store.read() as conn:
        return len((await conn.execute(select(sip_bindings.c.contact))).all())


async def register(h: Harness, user: str, password: str) -> int:
    phone = await Phone(user, password, h.services.extras["registrar"].port).open()
    try:
        return (await phone.register(expires=120)).status
    finally:
        phone.close()


async def test_config_stores_only_the_digest_ha1_for_the_registrar_realm(h: Harness) -> None:
    assert await stored_ha1(h, SIP_AGENT) == ha1("2001", "acme.example", PASSWORD)
    assert await stored_ha1(h, PLAIN_SIP_AGENT) is None
    assert await register(h, "2001", PASSWORD) == 200


async def test_config_applied_again_keeps_the_bindings(h: Harness) -> None:
    assert await register(h, "2001", PASSWORD) == 200
    await apply_config(h.services.store, parse_config(CONFIG), h.clock, sip_realm="acme.example")
    assert await binding_count(h) == 1


async def test_put_device_sets_a_password_without_echoing_it(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = await user_by_contact(h, SIP_AGENT)
    assert await register(h, "2001", PASSWORD) == 200
    r = await put_device(h, user["id"], user["devices"][0]["id"], sip_password=NEW_PASSWORD)
    assert r.status_code == 200, r.text
    assert NEW_PASSWORD not in r.text and "ha1" not in r.text
    assert await stored_ha1(h, SIP_AGENT) == ha1("2001", "acme.example", NEW_PASSWORD)
    assert await binding_count(h) == 0  # a new password drops the old bindings
    assert await register(h, "2001", PASSWORD) == 403
    assert await register(h, "2001", NEW_PASSWORD) == 200
    assert all(NEW_PASSWORD not in rec.getMessage() for rec in caplog.records)
    assert all(PASSWORD not in rec.getMessage() for rec in caplog.records)


async def test_put_device_null_password_stops_registration(h: Harness) -> None:
    user = await user_by_contact(h, SIP_AGENT)
    r = await put_device(h, user["id"], user["devices"][0]["id"], sip_password=None)
    assert r.status_code == 200, r.text
    assert await stored_ha1(h, SIP_AGENT) is None
    r = await h.create_call(from_uri=SIP_AGENT)
    assert r.status_code == 200, r.text  # dialled as written now, no registration needed


async def test_new_contact_uri_drops_credentials_and_bindings(h: Harness) -> None:
    user = await user_by_contact(h, SIP_AGENT)
    assert await register(h, "2001", PASSWORD) == 200
    r = await put_device(
        h, user["id"], user["devices"][0]["id"], contact_uri="sip:2002@agents.callbridge.test"
    )
    assert r.status_code == 200, r.text
    assert await stored_ha1(h, "sip:2002@agents.callbridge.test") is None
    assert await binding_count(h) == 0


@pytest.mark.parametrize(
    ("contact", "password", "needle"),
    [
        (SIP_AGENT, "short", "8 to 128 characters"),
        (SIP_AGENT, "tab\there-pw", "control characters"),
        (SIP_AGENT, 12345678, "sip_password"),
        (None, NEW_PASSWORD, "sip:user@domain"),
    ],
)
async def test_bad_sip_password_answers_400_naming_the_field(
    h: Harness, contact: str | None, password: object, needle: str
) -> None:
    user = await user_by_contact(h, contact or "+919900000001")
    r = await put_device(h, user["id"], user["devices"][0]["id"], sip_password=password)
    assert r.status_code == 400, r.text
    assert error_code(r) == 400
    message = r.json()["response"]["error_data"]["message"]
    assert message.startswith("sip_password") and needle in message
    assert str(password) not in message


@pytest.mark.parametrize(
    ("device", "key"),
    [
        ('contact_uri = "+919900000009"\nsip_password = "long-enough-pw"', "sip_password"),
        ('contact_uri = "sip:2009@x.test"\nsip_password = "short"', "sip_password"),
        ('contact_uri = "sip:2009@x.test"\nsip_password = 12345678', "sip_password"),
    ],
)
def test_config_rejects_bad_sip_password_naming_the_key(device: str, key: str) -> None:
    text = f"""
[[accounts]]
sid = "a"
api_key = "k"
api_token = "t"
[[accounts.users]]
first_name = "Asha"
last_name = "Rao"
[[accounts.users.devices]]
{device}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert f"accounts[0].users[0].devices[0].{key}" in str(info.value)
    assert "long-enough-pw" not in str(info.value)
