from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from callbridge.clock import ManualClock
from callbridge.config import (
    AccountConfig,
    Config,
    ConfigError,
    DeviceConfig,
    UserConfig,
    apply_config,
    parse_config,
)
from callbridge.store.repo import Store
from callbridge.store.tables import accounts, devices, exophones, flows, users

from ..harness import ACCOUNT, AGENT, DEFAULT_CONFIG, EXOPHONE, running_app
from ..inbound.helpers import agent, config, incoming, to_legs

BARE = "[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\n"
ACCOUNT_HEAD = BARE + "exophones=['+912241499102']\n"
OTHER = "[[accounts]]\nsid='b'\napi_key='k2'\napi_token='t2'\n"
USER = "[[accounts.users]]\n"
DEVICE = "[[accounts.users.devices]]\ncontact_uri='+919900000001'\n"
SPEC_EXAMPLE = """
[[accounts]]
sid = "acme"                      # account_sid used in paths
api_key = "k_live_1"
api_token = "t_live_1"            # stored hashed
timezone = "Asia/Kolkata"         # renders every timestamp of this account
allow_voip = true                 # false → sip: contact URIs answer 405/10712
rate_limit_per_minute = 200       # requests to /v2 and /v3 per minute; 0 = unlimited
exophones = ["+912241499102", "+918047091999"]

[[accounts.users]]
first_name = "Asha"
last_name = "Rao"
email = "asha@example.com"
role = "user"                     # admin | supervisor | user

[[accounts.users.devices]]
contact_uri = "+919900000001"
name = "Asha mobile"
available = true                  # ON/OFF
verified = true
"""
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


def test_the_spec_example_parses() -> None:
    assert parse_config(SPEC_EXAMPLE) == Config(
        (
            AccountConfig(
                sid="acme",
                api_key="k_live_1",
                api_token="t_live_1",
                timezone="Asia/Kolkata",
                region="IN",
                allow_voip=True,
                rate_limit_per_minute=200,
                exophones=("+912241499102", "+918047091999"),
                users=(
                    UserConfig(
                        first_name="Asha",
                        last_name="Rao",
                        email="asha@example.com",
                        role="user",
                        devices=(
                            DeviceConfig(
                                contact_uri="+919900000001",
                                type="tel",
                                name="Asha mobile",
                                available=True,
                                verified=True,
                            ),
                        ),
                    ),
                ),
            ),
        )
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accounts = 5\n", "accounts must be an array of tables"),
        ("[accounts]\nsid='a'\n", "accounts must be an array of tables"),
        ("accounts = [5]\n", "accounts[0] must be a table"),
        (BARE + "exophones = 5\n", "accounts[0].exophones must be an array of strings"),
        (
            BARE + "exophones = '+912241499102'\n",
            "accounts[0].exophones must be an array of strings",
        ),
        (BARE + "exophones = [5]\n", "accounts[0].exophones[0] must be a string"),
        (BARE + "users = 5\n", "accounts[0].users must be an array of tables"),
        (BARE + "users = ['asha']\n", "accounts[0].users[0] must be a table"),
        (BARE + USER + "devices = 5\n", "accounts[0].users[0].devices must be an array of tables"),
        (BARE + USER + "devices = ['x']\n", "accounts[0].users[0].devices[0] must be a table"),
        (BARE + "flows = 5\n", "accounts[0].flows must be an array of tables"),
        (BARE + "flows = [5]\n", "accounts[0].flows[0] must be a table"),
        (BARE + "exophone_flows = 5\n", "accounts[0].exophone_flows must be an array of tables"),
        (BARE + "exophone_flows = ['x']\n", "accounts[0].exophone_flows[0] must be a table"),
    ],
)
def test_wrong_container_types_are_errors_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


RATE = "accounts[0].rate_limit_per_minute must be an integer from 0 (unlimited)"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("rate_limit_per_minute = -1", RATE),
        ("rate_limit_per_minute = true", RATE),
        ("rate_limit_per_minute = 1.5", RATE),
        ("rate_limit_per_minute = 2147483648", RATE),
        ("region = 'XX'", "accounts[0].region 'XX' is not a known region code"),
        ("region = ''", "accounts[0].region '' is not a known region code"),
        ("region = 91", "accounts[0].region must be a string"),
        ("timezone = 5", "accounts[0].timezone must be a string"),
        ("timezone = ''", "accounts[0].timezone '' is not a known timezone"),
        ("allow_voip = 'no'", "accounts[0].allow_voip must be true or false"),
    ],
)
def test_invalid_account_settings_are_errors_naming_the_key(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(BARE + line + "\n")


@pytest.mark.parametrize(
    ("sid", "api_key", "api_token", "message"),
    [
        ("''", "'k'", "'t'", "accounts[0].sid must not be empty"),
        ("'  '", "'k'", "'t'", "accounts[0].sid must not be empty"),
        ("5", "'k'", "'t'", "accounts[0].sid must be a string"),
        ("'a/b'", "'k'", "'t'", "accounts[0].sid must not contain '/' or whitespace"),
        ("'a b'", "'k'", "'t'", "accounts[0].sid must not contain '/' or whitespace"),
        ("' a'", "'k'", "'t'", "accounts[0].sid must not contain '/' or whitespace"),
        ('"a\\t"', "'k'", "'t'", "accounts[0].sid must not contain '/' or whitespace"),
        (f"'{'s' * 65}'", "'k'", "'t'", "accounts[0].sid must be at most 64 characters"),
        ("'a'", "''", "'t'", "accounts[0].api_key must not be empty"),
        ("'a'", "' '", "'t'", "accounts[0].api_key must not be empty"),
        ("'a'", "['k']", "'t'", "accounts[0].api_key must be a string"),
        ("'a'", f"'{'k' * 129}'", "'t'", "accounts[0].api_key must be at most 128 characters"),
        ("'a'", "'k:1'", "'t'", "accounts[0].api_key must not contain ':'"),
        ("'a'", "'k'", "''", "accounts[0].api_token must not be empty"),
        ("'a'", "'k'", '"\\t "', "accounts[0].api_token must not be empty"),
        ("'a'", "'k'", "7", "accounts[0].api_token must be a string"),
        ("'a'", "'k'", f"'{'t' * 257}'", "accounts[0].api_token must be at most 256 characters"),
    ],
)
def test_invalid_credentials_are_errors_naming_the_key(
    sid: str, api_key: str, api_token: str, message: str
) -> None:
    text = f"[[accounts]]\nsid={sid}\napi_key={api_key}\napi_token={api_token}\n"
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


def test_credentials_at_their_length_bounds_parse() -> None:
    text = f"[[accounts]]\nsid='{'s' * 64}'\napi_key='{'k' * 128}'\napi_token='{'t' * 256}'\n"
    (account,) = parse_config(text).accounts
    assert (len(account.sid), len(account.api_key), len(account.api_token)) == (64, 128, 256)


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("first_name = 5\n", "accounts[0].users[0].first_name must be a string"),
        ("last_name = ['Rao']\n", "accounts[0].users[0].last_name must be a string"),
        (f"first_name = '{'A' * 65}'\n", "accounts[0].users[0].first_name must be at most 64"),
        ("email = 5\n", "accounts[0].users[0].email must be a string"),
        ("email = ''\n", "accounts[0].users[0].email must be an address like name@example.com"),
        ("email = 'asha'\n", "accounts[0].users[0].email must be an address"),
        ("email = '@example.com'\n", "accounts[0].users[0].email must be an address"),
        ("email = 'asha@'\n", "accounts[0].users[0].email must be an address"),
        ("email = 'a@b@example.com'\n", "accounts[0].users[0].email must be an address"),
        ("email = 'a sha@example.com'\n", "accounts[0].users[0].email must be an address"),
        ("role = 'owner'\n", "accounts[0].users[0].role must be admin, supervisor or user"),
        ("role = 5\n", "accounts[0].users[0].role must be admin, supervisor or user"),
        ("role = ['admin']\n", "accounts[0].users[0].role must be admin, supervisor or user"),
        (DEVICE + "name = 5\n", "accounts[0].users[0].devices[0].name must be a string"),
        (
            "[[accounts.users.devices]]\ncontact_uri = 919900000001\n",
            "accounts[0].users[0].devices[0].contact_uri must be a string",
        ),
        (
            "[[accounts.users.devices]]\nname = 'desk'\n",
            "accounts[0].users[0].devices[0].contact_uri is required",
        ),
        (
            DEVICE + "available = 'yes'\n",
            "accounts[0].users[0].devices[0].available must be true or false",
        ),
    ],
)
def test_invalid_user_and_device_fields_are_errors_naming_the_key(user: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(BARE + USER + user)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BARE + OTHER.replace("sid='b'", "sid='a'"),
            "accounts[1].sid duplicates accounts[0].sid ('a')",
        ),
        (BARE + OTHER.replace("'k2'", "'k'"), "accounts[1].api_key duplicates accounts[0].api_key"),
        (
            BARE + "exophones = ['+912241499102', '022 4149 9102']\n",
            "accounts[0].exophones[1] duplicates accounts[0].exophones[0] (+912241499102)",
        ),
        (
            ACCOUNT_HEAD + OTHER + "exophones = ['+918047091999', '02241499102']\n",
            "accounts[1].exophones[1] duplicates accounts[0].exophones[0] (+912241499102)",
        ),
        (
            BARE + USER + DEVICE + USER + "[[accounts.users.devices]]\ncontact_uri='09900000001'\n",
            "accounts[0].users[1].devices[0].contact_uri duplicates "
            "accounts[0].users[0].devices[0].contact_uri (+919900000001)",
        ),
        (
            BARE + USER + DEVICE + DEVICE + "available = false\n",
            "accounts[0].users[0].devices[1].contact_uri duplicates "
            "accounts[0].users[0].devices[0].contact_uri (+919900000001)",
        ),
        (
            BARE
            + USER
            + "[[accounts.users.devices]]\ncontact_uri='sip:asha@PBX.example.com'\n"
            + USER
            + "[[accounts.users.devices]]\ncontact_uri='sip:asha@pbx.example.com;transport=tcp'\n",
            "accounts[0].users[1].devices[0].contact_uri duplicates "
            "accounts[0].users[0].devices[0].contact_uri (sip:asha@pbx.example.com)",
        ),
        (
            BARE + USER + "email='asha@example.com'\n" + USER + "email=' Asha@Example.COM'\n",
            "accounts[0].users[1].email duplicates accounts[0].users[0].email (asha@example.com)",
        ),
    ],
)
def test_duplicates_in_one_file_are_errors_naming_both_keys(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


def test_duplicate_api_key_message_does_not_show_the_key() -> None:
    text = BARE.replace("'k'", "'k_secretish'") + OTHER.replace("'k2'", "'k_secretish'")
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert "k_secretish" not in str(caught.value)


def test_the_same_device_and_email_may_serve_two_accounts() -> None:
    user = USER + "email='asha@example.com'\n" + DEVICE
    config = parse_config(BARE + user + OTHER + user)
    assert [a.users[0].devices[0].contact_uri for a in config.accounts] == [AGENT] * 2
    assert [a.users[0].email for a in config.accounts] == ["asha@example.com"] * 2


def test_sip_device_under_an_account_without_voip_is_an_error() -> None:
    text = (
        BARE
        + "allow_voip = false\n"
        + USER
        + "[[accounts.users.devices]]\ncontact_uri='sip:asha@pbx.example.com'\n"
    )
    message = "accounts[0].users[0].devices[0].contact_uri: SIP contact URIs need allow_voip = true"
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)
    (allowed,) = parse_config(text.replace("false", "true")).accounts
    assert allowed.users[0].devices[0].contact_uri == "sip:asha@pbx.example.com"


def test_region_is_upper_cased_and_reads_local_numbers() -> None:
    (account,) = parse_config(
        BARE + "region = 'us'\nexophones = ['(415) 555-0100']\n" + USER + "email='A@X.org'\n"
    ).accounts
    assert (account.region, account.exophones) == ("US", ("+14155550100",))
    assert account.users[0].email == "a@x.org"


def test_zero_rate_limit_means_unlimited_and_is_kept() -> None:
    (account,) = parse_config(BARE + "rate_limit_per_minute = 0\n").accounts
    assert account.rate_limit_per_minute == 0
