from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from callbridge.clock import ManualClock
from callbridge.config import ConfigError, apply_config, parse_config
from callbridge.store.repo import Store
from callbridge.store.tables import accounts, devices, exophones, flows, users

from ..harness import ACCOUNT, DEFAULT_CONFIG, EXOPHONE, running_app
from ..inbound.helpers import agent, config, incoming, to_legs

ACCOUNT_HEAD = "[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\nexophones=['+912241499102']\n"
FLOW_HEAD = "[[accounts.flows]]\nname='Support'\n"
LINK = "[[accounts.exophone_flows]]\nnumber='+912241499102'\nflow='Support'\n"


def flow_config(strategy: str = "sequential") -> str:
    """`config(2)` with a flow over agents 2 then 1 (named by device), attached to EXOPHONE."""
    flow = f"""
[[accounts.flows]]
name = "Support line"

[accounts.flows.connect]
destinations = [{{ contact_uri = "{agent(2)}" }}, {{ contact_uri = "{agent(1)}" }}]
strategy = "{strategy}"
attempt_timeout_s = 10

[accounts.flows.no_agent]
action = "message"
message_s = 3

[[accounts.exophone_flows]]
number = "{EXOPHONE}"
flow = "Support line"
"""
    other = '\n[[accounts]]\nsid = "other"'
    return config(2).replace(other, flow + other)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\ncolour='red'\n", "accounts.colour"),
        ("[server]\nport=1\n", ".server"),
        (
            "[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\n[[accounts.users]]\nage=3\n",
            "accounts.users.age",
        ),
        (
            "[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\n[[accounts.users]]\n"
            "[[accounts.users.devices]]\ncontact_uri='+919900000001'\nring=1\n",
            "accounts.users.devices.ring",
        ),
        (ACCOUNT_HEAD + FLOW_HEAD + "colour='red'\n", "accounts.flows.colour"),
        (ACCOUNT_HEAD + FLOW_HEAD + LINK + "extension=1\n", "accounts.exophone_flows.extension"),
        (
            ACCOUNT_HEAD + FLOW_HEAD + "[accounts.flows.connect]\nring_for=3\n",
            "accounts[0].flows[0].connect.ring_for",
        ),
        (
            ACCOUNT_HEAD + FLOW_HEAD + "[[accounts.flows.status_callback]]\nevent='answered'\n"
            "url='https://crm.example.com/cb'\nverb='POST'\n",
            "accounts[0].flows[0].status_callback.0.verb",
        ),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_config(text)


def test_missing_token_and_bad_types_are_named() -> None:
    with pytest.raises(ConfigError, match="api_token is required"):
        parse_config("[[accounts]]\nsid='a'\napi_key='k'\n")
    with pytest.raises(ConfigError, match="rate_limit_per_minute"):
        parse_config(
            "[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\nrate_limit_per_minute='x'\n"
        )
    with pytest.raises(ConfigError, match="timezone"):
        parse_config("[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\ntimezone='Mars/Olympus'\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ACCOUNT_HEAD + "[[accounts.flows]]\n", "accounts[0].flows[0].name"),
        (ACCOUNT_HEAD + FLOW_HEAD + FLOW_HEAD, "accounts[0].flows[1].name: 'Support' names two"),
        (
            ACCOUNT_HEAD + FLOW_HEAD + "[accounts.flows.connect]\nstrategy='random'\n",
            "accounts[0].flows[0].connect.strategy",
        ),
        (
            ACCOUNT_HEAD + FLOW_HEAD + "[accounts.flows.connect]\n"
            "destinations=[{contact_uri='12'}]\n",
            "accounts[0].flows[0].connect.destinations.0.contact_uri",
        ),
        (
            ACCOUNT_HEAD.replace("exophones", "allow_voip=false\nexophones")
            + FLOW_HEAD
            + "[accounts.flows.connect]\ndestinations=[{contact_uri='sip:a@pbx.example.com'}]\n",
            "accounts[0].flows[0].connect.destinations.0.contact_uri: SIP",
        ),
        (
            ACCOUNT_HEAD + FLOW_HEAD + LINK.replace("flow='Support'", "flow='Sales'"),
            "accounts[0].exophone_flows[0].flow: no flow named 'Sales'",
        ),
        (
            ACCOUNT_HEAD + FLOW_HEAD + LINK.replace("+912241499102", "+918047091999"),
            "accounts[0].exophone_flows[0].number: +918047091999 is not in accounts[0].exophones",
        ),
        (ACCOUNT_HEAD + FLOW_HEAD + LINK + LINK, "accounts[0].exophone_flows[1].number"),
        (
            ACCOUNT_HEAD + FLOW_HEAD + "[[accounts.exophone_flows]]\nnumber='+912241499102'\n",
            "accounts[0].exophone_flows[0].flow is required",
        ),
    ],
)
def test_invalid_flows_and_attachments_are_errors_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


def test_exophones_stay_a_list_of_strings_next_to_exophone_flows() -> None:
    parsed = parse_config(flow_config())
    acme = parsed.accounts[0]
    assert acme.exophones == (EXOPHONE, "+918047091999")
    assert [(f.name, f.definition.connect.strategy.value) for f in acme.flows] == [
        ("Support line", "sequential")
    ]
    assert [(link.number, link.flow) for link in acme.exophone_flows] == [
        (EXOPHONE, "Support line")
    ]


async def test_config_flows_are_matched_by_name_and_updated_never_duplicated(
    store: Store, clock: ManualClock
) -> None:
    await apply_config(store, parse_config(flow_config()), clock)
    await apply_config(store, parse_config(flow_config()), clock)
    async with store.read() as conn:
        first = (await conn.execute(select(flows.c.id, flows.c.updated_at))).all()
        attached = (
            await conn.execute(select(exophones.c.flow_id).where(exophones.c.number == EXOPHONE))
        ).scalar_one()
    assert len(first) == 1
    assert attached == first[0][0]
    await clock.advance(60)
    await apply_config(store, parse_config(flow_config("round_robin")), clock)
    async with store.read() as conn:
        rows = (await conn.execute(select(flows.c.id, flows.c.name, flows.c.definition))).all()
        total = (await conn.execute(select(func.count()).select_from(exophones))).scalar()
    assert [(r[0], r[1]) for r in rows] == [(first[0][0], "Support line")]
    assert rows[0][2]["connect"]["strategy"] == "round_robin"
    assert total == 3


async def test_flow_destination_naming_an_unknown_user_is_an_error(
    store: Store, clock: ManualClock
) -> None:
    text = (
        ACCOUNT_HEAD + FLOW_HEAD + "[accounts.flows.connect]\ndestinations=[{user_id='nobody'}]\n"
    )
    with pytest.raises(
        ConfigError, match=r"accounts\[0\]\.flows\[0\]\.connect\.destinations\.0\.user_id"
    ):
        await apply_config(store, parse_config(text), clock)
    async with store.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(accounts))).scalar() == 0


async def test_inbound_call_to_a_config_flow_reaches_the_agent(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=flow_config()) as h:
        h.phone(agent(2), "reject", answer_after_s=1)
        h.phone(agent(1), "answer", answer_after_s=1, hangup_after_s=20)
        sid = await incoming(h)
        await h.advance(3)
        assert to_legs(await h.legs(sid)) == [(agent(2), "busy"), (agent(1), "in-progress")]
        await h.advance(30)
        details = await h.call(sid)
        assert details["status"] == "completed"
        assert details["app_name"] == "Support line"
        r = await h.client.get(f"/v2/accounts/{ACCOUNT}/flows", headers=h.auth)
        (flow,) = r.json()["response"]
        assert flow["data"]["id"] == details["app_id"]
        assert flow["data"]["exophones"] == [EXOPHONE]


async def test_applying_twice_updates_and_never_duplicates(
    store: Store, clock: ManualClock
) -> None:
    config = parse_config(DEFAULT_CONFIG)
    await apply_config(store, config, clock)
    await apply_config(store, config, clock)
    changed = parse_config(DEFAULT_CONFIG.replace('last_name = "Rao"', 'last_name = "Rao-Iyer"'))
    await apply_config(store, changed, clock)
    async with store.read() as conn:
        counts = [
            (await conn.execute(select(func.count()).select_from(t))).scalar()
            for t in (accounts, exophones, users, devices)
        ]
        names = (await conn.execute(select(users.c.last_name).order_by(users.c.last_name))).all()
    assert counts == [2, 3, 2, 2]
    assert [n[0] for n in names] == ["Kumar", "Rao-Iyer"]


async def test_device_flags_missing_from_the_file_keep_their_value(
    store: Store, clock: ManualClock
) -> None:
    text = (
        "[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\n[[accounts.users]]\n"
        "first_name='Asha'\nlast_name='Rao'\n[[accounts.users.devices]]\n"
        "contact_uri='+919900000001'\n"
    )
    await apply_config(store, parse_config(text), clock)
    async with store.tx() as conn:
        await conn.execute(devices.update().values(available=False, verified=True))
    await apply_config(store, parse_config(text), clock)
    async with store.read() as conn:
        row = (await conn.execute(select(devices.c.available, devices.c.verified))).one()
    assert tuple(row) == (False, True)
