"""The config file's `[[sim.numbers]]`: strict parsing naming the key, and the behaviours a
server sets at start, so the demo config's example call ends by itself."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from callbridge.api.app import create_app
from callbridge.api.services import Services
from callbridge.clock import ManualClock
from callbridge.config import ConfigError, load_config, parse_config
from callbridge.settings import Settings
from callbridge.store.repo import Store
from callbridge.telephony.sim import Behaviour, Outcome

from ..conftest import basic

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.toml"
AUTH = basic("demo_key", "demo_token")
AGENT, CUSTOMER, EXOPHONE = "+919900000001", "+919800000001", "+912241499102"
NUMBER = "[[sim.numbers]]\ncontact_uri = '+919800000001'\n"


def test_sim_numbers_parse_with_the_control_apis_defaults() -> None:
    config = parse_config(
        NUMBER
        + "hangup_after = 8\n"
        + "[[sim.numbers]]\ncontact_uri = '9800000002'\noutcome = 'busy'\nanswer_after = 0.5\n"
        + "[[sim.numbers]]\ncontact_uri = '+919800000003'\noutcome = 'answer'\ndtmf = '12#'\n"
    )
    assert [(n.contact_uri, n.behaviour) for n in config.sim_numbers] == [
        ("+919800000001", Behaviour(Outcome.ANSWER, 1.0, 8.0, None)),
        ("+919800000002", Behaviour(Outcome.BUSY, 0.5, None, None)),
        ("+919800000003", Behaviour(Outcome.ANSWER, 1.0, None, "12#")),
    ]
    assert parse_config("").sim_numbers == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sim = 1\n", "sim must be a table"),
        ("[sim]\nphones = []\n", "unknown config key sim.phones"),
        ("[sim]\nnumbers = 'x'\n", "sim.numbers must be an array of tables"),
        ("[sim]\nnumbers = ['x']\n", "sim.numbers[0] must be a table"),
        ("[[sim.numbers]]\noutcome = 'answer'\n", "sim.numbers[0].contact_uri is required"),
        ("[[sim.numbers]]\ncontact_uri = 'nope'\n", "sim.numbers[0].contact_uri:"),
        (NUMBER + "ring = 3\n", "unknown config key sim.numbers.ring"),
        (NUMBER + "outcome = 'maybe'\n", "sim.numbers[0].outcome must be one of: answer, busy"),
        (NUMBER + "answer_after = true\n", "sim.numbers[0].answer_after must be a number"),
        (NUMBER + "answer_after = '3'\n", "sim.numbers[0].answer_after must be a number"),
        (NUMBER + "hangup_after = -1\n", "sim.numbers[0].hangup_after must be from 0 to 86400"),
        (NUMBER + "hangup_after = 86401\n", "sim.numbers[0].hangup_after must be from 0 to"),
        (NUMBER + "hangup_after = nan\n", "sim.numbers[0].hangup_after must be a number"),
        (NUMBER + "dtmf = 'x'\n", "sim.numbers[0].dtmf must be 1 to 64 of the keys"),
        (NUMBER + "dtmf = 12\n", "sim.numbers[0].dtmf must be 1 to 64 of the keys"),
        (
            NUMBER + "[[sim.numbers]]\ncontact_uri = '09800000001'\n",
            "sim.numbers[1].contact_uri duplicates sim.numbers[0] (+919800000001)",
        ),
    ],
)
def test_invalid_sim_numbers_are_errors_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


def test_the_demo_config_makes_its_customers_hang_up_by_themselves() -> None:
    config = load_config(DEMO)
    hangups = {n.contact_uri: n.behaviour.hangup_after_s for n in config.sim_numbers}
    assert hangups == {"+919800000001": 8.0, "+919800000002": 8.0}


@asynccontextmanager
async def serving(
    store: Store, clock: ManualClock, config: Path, tmp_path: Path
) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """The app applying `config` itself at start, as `callbridge serve --config` does."""
    settings = Settings(config=config, data_dir=tmp_path, log_level="WARNING")
    app = create_app(settings, store=store, clock=clock, run_background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cb") as client:
            yield app.state.services, client


async def test_the_demo_example_call_ends_by_itself_and_can_be_placed_again(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    async with serving(store, clock, DEMO, tmp_path) as (svc, client):
        r = await client.get(f"/sim/v1/numbers/{CUSTOMER}", headers=AUTH)
        assert r.json()["hangup_after"] == 8.0
        body = {
            "from": {"contact_uri": AGENT},
            "to": {"contact_uri": CUSTOMER},
            "virtual_number": EXOPHONE,
        }
        for _ in range(2):
            r = await client.post("/v3/accounts/demo/calls", json=body, headers=AUTH)
            assert r.status_code == 200, r.text
            sid = r.json()["response"]["call_details"]["sid"]
            # Agent answers at 1 s, the customer at 2 s, and hangs up 8 s later.
            await clock.advance(10.5, settle=svc.engine.settle)
            r = await client.get(f"/v3/accounts/demo/calls/{sid}", headers=AUTH)
            details = r.json()["response"]["call_details"]
            assert (details["state"], details["status"]) == ("terminal", "completed")
            assert details["total_talk_time"] == 8


async def test_the_control_api_overrides_a_configured_behaviour_and_its_reset_restores_it(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    async with serving(store, clock, DEMO, tmp_path) as (_, client):
        url = f"/sim/v1/numbers/{CUSTOMER}"
        r = await client.put(url, json={"outcome": "answer", "hangup_after": 30}, headers=AUTH)
        assert r.json()["hangup_after"] == 30.0
        # The reset forgets this account's own script: the file's behaviour applies again.
        assert (await client.delete("/sim/v1/numbers", headers=AUTH)).status_code == 200
        assert (await client.get(url, headers=AUTH)).json()["hangup_after"] == 8.0
