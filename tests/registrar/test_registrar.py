"""The registrar in a running app (real UDP socket on 127.0.0.1, real SQLite and PostgreSQL,
ManualClock): digest challenge and refusals, bindings and their expiry, RFC 3261 §10.3 rules,
and what registration means to click-to-call (409/1012) and to inbound routing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from callbridge.clock import ManualClock
from callbridge.settings import Settings
from callbridge.store.repo import Store, utc
from callbridge.store.tables import devices, sip_bindings

from ..harness import DEFAULT_CONFIG, Harness, running_app
from ..inbound.helpers import attach, incoming, make_flow, to_legs
from ..users.helpers import error_code
from .phone import DOMAIN, Phone, parse_response

PASSWORD = "s3cret-phone-pw"
SIP_AGENT = f"sip:2001@{DOMAIN}"
PLAIN_SIP_AGENT = "sip:3001@pbx.example.com:5080"

EXTRA_USERS = f"""
[[accounts.users]]
first_name = "Sipa"
last_name = "Phone"
email = "sipa@example.com"

[[accounts.users.devices]]
contact_uri = "{SIP_AGENT}"
available = true
verified = true
sip_password = "{PASSWORD}"

[[accounts.users]]
first_name = "Plain"
last_name = "Sip"
email = "plain@example.com"

[[accounts.users.devices]]
contact_uri = "{PLAIN_SIP_AGENT}"
available = true
verified = true
"""
OTHER_ACCOUNT = '\n[[accounts]]\nsid = "other"'
CONFIG = DEFAULT_CONFIG.replace(OTHER_ACCOUNT, EXTRA_USERS + OTHER_ACCOUNT, 1)


@pytest.fixture
async def h(store: Store, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = Settings(
        allow_private_urls=True,
        log_level="WARNING",
        data_dir=tmp_path,
        sip_registrar_port=0,
        sip_registrar_min_expires_s=30,
        sip_registrar_max_expires_s=600,
    )
    async with running_app(store, clock, config=CONFIG, settings=settings) as harness:
        yield harness


@pytest.fixture
async def phone(h: Harness) -> AsyncIterator[Phone]:
    p = await Phone("2001", PASSWORD, h.services.extras["registrar"].port).open()
    yield p
    p.close()


async def bindings(h: Harness) -> list[tuple[str, Any]]:
    async with h.services.store.read() as conn:
        rows = await conn.execute(select(sip_bindings.c.contact, sip_bindings.c.expires_at))
        return [(r[0], r[1]) for r in rows]


async def call_from(h: Harness, uri: str) -> tuple[int, int | None]:
    r = await h.create_call(from_uri=uri)
    return r.status_code, (error_code(r) if r.status_code != 200 else None)


async def test_register_without_credentials_is_challenged_with_nonce_and_qop(
    h: Harness, phone: Phone
) -> None:
    r = await phone.send(phone.register_message(expires=120))
    assert r.status == 401
    challenge = r.challenge()
    assert challenge["realm"] == "callbridge"
    assert challenge["qop"] == "auth" and challenge["algorithm"] == "MD5"
    assert len(challenge["nonce"]) > 16
    assert ";tag=" in (r.get("to") or "")
    assert await bindings(h) == []


async def test_registered_phone_is_bound_and_its_click_to_call_is_admitted(
    h: Harness, phone: Phone
) -> None:
    assert await call_from(h, SIP_AGENT) == (409, 1012)
    r = await phone.register(expires=120)
    assert r.status == 200
    assert r.all("contact") == [f"<{phone.contact}>;expires=120"]
    [(contact, expires_at)] = await bindings(h)
    assert contact == phone.contact
    assert abs((utc(expires_at) - h.clock.now()).total_seconds() - 120) <= 1
    assert await call_from(h, SIP_AGENT) == (200, None)


async def test_wrong_password_is_refused_403_and_binds_nothing(h: Harness, phone: Phone) -> None:
    r = await phone.register(expires=120, password="not-the-password")
    assert r.status == 403
    assert await bindings(h) == []
    assert await call_from(h, SIP_AGENT) == (409, 1012)


async def test_unknown_aor_and_device_without_credentials_are_refused_alike(h: Harness) -> None:
    port = h.services.extras["registrar"].port
    for user in ("9999", "3001"):
        p = await Phone(user, PASSWORD, port).open()
        try:
            assert (await p.register(expires=120)).status == 403
        finally:
            p.close()
    assert await bindings(h) == []


async def test_binding_expires_and_the_device_answers_409_1012_again(
    h: Harness, phone: Phone
) -> None:
    assert (await phone.register(expires=60)).status == 200
    await h.advance(61)
    assert await call_from(h, SIP_AGENT) == (409, 1012)


async def test_expires_zero_unregisters(h: Harness, phone: Phone) -> None:
    assert (await phone.register(expires=120)).status == 200
    r = await phone.register(expires=0)
    assert r.status == 200 and r.all("contact") == []
    assert await bindings(h) == []
    assert await call_from(h, SIP_AGENT) == (409, 1012)


async def test_contact_star_removes_every_binding(h: Harness, phone: Phone) -> None:
    other = "sip:2001@127.0.0.1:40000"
    assert (
        await phone.register(expires=120, contacts=[f"<{phone.contact}>", f"<{other}>"])
    ).status == 200
    assert len(await bindings(h)) == 2
    assert (await phone.register(expires=0, contacts=["*"])).status == 200
    assert await bindings(h) == []


async def test_contact_star_needs_expires_zero(h: Harness, phone: Phone) -> None:
    assert (await phone.register(expires=60, contacts=["*"])).status == 400


async def test_too_brief_expiry_answers_423_with_min_expires(h: Harness, phone: Phone) -> None:
    r = await phone.register(expires=10)
    assert r.status == 423 and r.get("min-expires") == "30"
    assert await bindings(h) == []


async def test_long_expiry_is_lowered_to_the_maximum(h: Harness, phone: Phone) -> None:
    r = await phone.register(expires=86400)
    assert r.status == 200 and r.all("contact") == [f"<{phone.contact}>;expires=600"]


async def test_contact_expires_parameter_beats_the_expires_header(h: Harness, phone: Phone) -> None:
    r = await phone.register(expires=600, contacts=[f"<{phone.contact}>;expires=45"])
    assert r.all("contact") == [f"<{phone.contact}>;expires=45"]


async def test_out_of_order_cseq_in_the_same_call_id_answers_500(h: Harness, phone: Phone) -> None:
    assert (await phone.register(expires=120)).status == 200
    challenge = (await phone.send(phone.register_message(expires=120))).challenge()
    stale_cseq = phone.register_message(
        expires=0, authorization=phone.authorization(challenge), cseq=1
    )
    assert (await phone.send(stale_cseq)).status == 500
    assert len(await bindings(h)) == 1


async def test_a_new_call_id_replaces_the_binding_whatever_its_cseq(
    h: Harness, phone: Phone
) -> None:
    phone.cseq = 50
    assert (await phone.register(expires=120)).status == 200
    phone.call_id, phone.cseq = "rebooted-phone", 0
    assert (await phone.register(expires=300)).status == 200
    [(contact, _)] = await bindings(h)
    async with h.services.store.read() as conn:
        call_id = (await conn.execute(select(sip_bindings.c.call_id))).scalar()
    assert (contact, call_id) == (phone.contact, "rebooted-phone")


async def test_old_nonce_is_rechallenged_as_stale(h: Harness, phone: Phone) -> None:
    challenge = (await phone.send(phone.register_message(expires=120))).challenge()
    await h.advance(301)
    r = await phone.send(
        phone.register_message(expires=120, authorization=phone.authorization(challenge))
    )
    assert r.status == 401 and "stale=true" in (r.get("www-authenticate") or "")


async def test_forged_nonce_is_rechallenged(h: Harness, phone: Phone) -> None:
    challenge = {"realm": "callbridge", "nonce": "1234.abcd"}
    r = await phone.send(
        phone.register_message(expires=120, authorization=phone.authorization(challenge))
    )
    assert r.status == 401 and "stale" not in (r.get("www-authenticate") or "")


async def test_options_answers_200_and_other_methods_405(h: Harness, phone: Phone) -> None:
    base = phone.register_message().replace("REGISTER sip:", "OPTIONS sip:", 1)
    r = await phone.send(base.replace("REGISTER\r\n", "OPTIONS\r\n"))
    assert r.status == 200 and "REGISTER" in (r.get("allow") or "")
    invite = base.replace("OPTIONS sip:", "INVITE sip:", 1).replace("REGISTER\r\n", "INVITE\r\n")
    assert (await phone.send(invite)).status == 405


async def test_rport_gets_the_source_port(h: Harness, phone: Phone) -> None:
    r = await phone.send(phone.register_message(expires=120))
    via = r.get("via") or ""
    assert f";rport={phone.local_port};received=127.0.0.1" in via, via


async def test_state_order_off_then_unreachable_then_unverified(h: Harness, phone: Phone) -> None:
    async def set_device(**values: Any) -> None:
        async with h.services.store.tx() as conn:
            await conn.execute(
                devices.update().where(devices.c.contact_uri == SIP_AGENT).values(**values)
            )

    await set_device(available=False, verified=False)
    assert await call_from(h, SIP_AGENT) == (404, 10703)
    await set_device(available=True)
    assert await call_from(h, SIP_AGENT) == (409, 1012)
    assert (await phone.register(expires=120)).status == 200
    assert await call_from(h, SIP_AGENT) == (409, 10705)


async def test_sip_device_without_credentials_needs_no_registration(h: Harness) -> None:
    assert await call_from(h, PLAIN_SIP_AGENT) == (200, None)


async def test_inbound_flow_skips_the_unregistered_phone_and_rings_the_next_agent(
    h: Harness, phone: Phone
) -> None:
    flow = await make_flow(
        h,
        connect={
            "destinations": [{"contact_uri": SIP_AGENT}, {"contact_uri": PLAIN_SIP_AGENT}],
            "strategy": "sequential",
        },
        no_agent={"action": "message", "message_s": 2},
    )
    await attach(h, flow["id"])
    sid = await incoming(h)
    await h.advance(2)
    legs = to_legs(await h.legs(sid))
    assert legs == [(PLAIN_SIP_AGENT, "in-progress")], legs
    assert (await phone.register(expires=120)).status == 200
    await h.client.post(
        f"/sim/v1/numbers/{PLAIN_SIP_AGENT}/actions", json={"action": "hangup"}, headers=h.auth
    )
    await h.settle()
    sid_2 = await incoming(h)
    await h.advance(2)
    assert to_legs(await h.legs(sid_2))[0] == (SIP_AGENT, "in-progress")


async def test_tcp_connection_carries_several_requests_framed_by_content_length(
    h: Harness, phone: Phone
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", h.services.extras["registrar"].port)
    try:
        register = phone.register_message(expires=120).replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        options = register.replace("REGISTER sip:", "OPTIONS sip:", 1).replace(
            "REGISTER\r\n", "OPTIONS\r\n"
        )
        writer.write(b"\r\n\r\n" + register.encode() + options.encode())
        await writer.drain()
        statuses = []
        for _ in range(2):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            statuses.append(parse_response(head).status)
        assert statuses == [401, 200]
    finally:
        writer.close()


async def test_bindings_outlive_a_restart_of_the_node(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    settings = Settings(
        allow_private_urls=True, log_level="WARNING", data_dir=tmp_path, sip_registrar_port=0
    )
    async with running_app(store, clock, config=CONFIG, settings=settings) as first:
        phone = await Phone("2001", PASSWORD, first.services.extras["registrar"].port).open()
        try:
            assert (await phone.register(expires=120)).status == 200
        finally:
            phone.close()
    async with running_app(store, clock, config=CONFIG, settings=settings) as second:
        assert await call_from(second, SIP_AGENT) == (200, None)
