"""The simulator control API is scoped to the caller's account: behaviours are per account,
phones show and act on the caller's own legs only, and another account's devices and ExoPhones
answer 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest

from callbridge.clock import ManualClock
from callbridge.store.repo import Store
from callbridge.telephony.sim import (
    MAX_BEHAVIOURS_PER_ACCOUNT,
    Behaviour,
    Outcome,
    SimulatedCarrier,
    TooManyBehaviours,
)

from ..conftest import basic
from ..harness import AGENT, CUSTOMER, EXOPHONE, Harness, running_app

OTHER = basic("k_other", "t_other")
OTHER_EXOPHONE = "+918047091000"


@pytest.fixture
async def app(store: Store, clock: ManualClock) -> AsyncIterator[Harness]:
    async with running_app(store, clock) as harness:
        yield harness


def number(uri: str) -> str:
    return f"/sim/v1/numbers/{quote(uri, safe='')}"


async def put(app: Harness, uri: str, auth: dict[str, str], **behaviour: Any) -> Any:
    return await app.client.put(number(uri), json=behaviour, headers=auth)


async def view(app: Harness, uri: str, auth: dict[str, str]) -> dict[str, Any]:
    r = await app.client.get(number(uri), headers=auth)
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def test_another_accounts_device_answers_404_on_every_number_route(app: Harness) -> None:
    assert (await app.client.get(number(AGENT), headers=OTHER)).status_code == 404
    assert (await put(app, AGENT, OTHER, outcome="busy")).status_code == 404
    r = await app.client.post(number(AGENT) + "/actions", json={"action": "hangup"}, headers=OTHER)
    assert r.status_code == 404
    assert r.json()["response"]["error_data"]["code"] == 404
    # The owner still sees and scripts it, and nothing the other account sent changed it.
    assert (await view(app, AGENT, app.auth))["outcome"] == "answer"
    assert (await put(app, AGENT, app.auth, outcome="busy")).status_code == 200


async def test_another_accounts_exophone_answers_404_to_number_and_incoming_routes(
    app: Harness,
) -> None:
    assert (await app.client.get(number(EXOPHONE), headers=OTHER)).status_code == 404
    r = await app.client.post(
        "/sim/v1/incoming", json={"from": CUSTOMER, "to": EXOPHONE}, headers=OTHER
    )
    assert r.status_code == 404
    assert r.json()["response"]["error_data"]["code"] == 10716
    assert app.services.engine.active_calls == 0
    # Its own ExoPhone takes the call.
    r = await app.client.post(
        "/sim/v1/incoming", json={"from": CUSTOMER, "to": OTHER_EXOPHONE}, headers=OTHER
    )
    assert r.status_code == 200, r.text


async def test_a_number_scripted_by_two_accounts_follows_the_dialling_accounts_behaviour(
    app: Harness,
) -> None:
    assert (await put(app, CUSTOMER, OTHER, outcome="busy")).status_code == 200
    assert (await put(app, CUSTOMER, app.auth, outcome="answer", answer_after=2)).status_code == 200
    assert (await view(app, CUSTOMER, OTHER))["outcome"] == "busy"
    assert (await view(app, CUSTOMER, app.auth))["answer_after"] == 2
    r = await app.create_call()
    sid = r.json()["response"]["call_details"]["sid"]
    await app.advance(1.5)  # the agent answers after 1 s, the customer starts ringing
    assert (await view(app, CUSTOMER, app.auth))["state"] == "ringing"
    assert (await view(app, CUSTOMER, OTHER))["state"] == "idle"
    await app.advance(2.5)
    legs = await app.legs(sid)
    assert [leg["status"] for leg in legs["to"]] == ["in-progress"]  # acme's answer, not busy


async def test_actions_touch_only_the_callers_legs(app: Harness) -> None:
    r = await app.create_call()
    sid = r.json()["response"]["call_details"]["sid"]
    await app.advance(5)
    assert (await view(app, CUSTOMER, app.auth))["state"] == "in-call"
    r = await app.client.post(
        number(CUSTOMER) + "/actions", json={"action": "hangup"}, headers=OTHER
    )
    assert r.status_code == 200
    assert r.json()["legs_affected"] == 0
    await app.advance(1)
    assert (await app.call(sid))["state"] == "active"
    r = await app.client.post(
        number(CUSTOMER) + "/actions", json={"action": "hangup"}, headers=app.auth
    )
    assert r.json()["legs_affected"] == 1
    await app.advance(1)
    assert (await app.call(sid))["status"] == "completed"


async def test_a_foreign_number_on_a_live_leg_of_the_callers_call_can_be_driven(
    app: Harness,
) -> None:
    """Calling another account's ExoPhone as a customer makes it the caller's number while
    the leg is up, and only then."""
    await put(app, AGENT, app.auth, outcome="answer", answer_after=0)
    r = await app.create_call(to_uri=OTHER_EXOPHONE)
    sid = r.json()["response"]["call_details"]["sid"]
    await app.advance(0.5)
    assert (await view(app, OTHER_EXOPHONE, app.auth))["state"] == "ringing"
    r = await app.client.post(
        number(OTHER_EXOPHONE) + "/actions", json={"action": "reject"}, headers=app.auth
    )
    assert r.json()["legs_affected"] == 1
    await app.advance(1)
    assert (await app.call(sid))["status"] == "to_leg_unanswered"
    assert (await app.client.get(number(OTHER_EXOPHONE), headers=app.auth)).status_code == 404


async def test_reset_forgets_only_the_callers_behaviours(app: Harness) -> None:
    await put(app, CUSTOMER, app.auth, outcome="busy")
    await put(app, CUSTOMER, OTHER, outcome="reject")
    r = await app.client.delete("/sim/v1/numbers", headers=OTHER)
    assert r.status_code == 200
    assert (await view(app, CUSTOMER, OTHER))["outcome"] == "answer"
    assert (await view(app, CUSTOMER, app.auth))["outcome"] == "busy"


async def test_sim_routes_need_valid_credentials(app: Harness) -> None:
    r = await app.client.get(number(CUSTOMER), headers=basic("k_other", "wrong"))
    assert r.status_code == 401
    r = await app.client.delete("/sim/v1/numbers")
    assert r.status_code == 401


def test_scripted_numbers_are_bounded_per_account(clock: ManualClock) -> None:
    sim = SimulatedCarrier(clock)
    for n in range(MAX_BEHAVIOURS_PER_ACCOUNT):
        sim.set_behaviour(f"+91980{n:07d}", Behaviour(), "acme")
    sim.set_behaviour("+919800000000", Behaviour(Outcome.BUSY), "acme")  # a change, not a new one
    with pytest.raises(TooManyBehaviours):
        sim.set_behaviour("+919999999999", Behaviour(), "acme")
    sim.set_behaviour("+919999999999", Behaviour(), "other")  # other accounts are not held
    sim.reset("acme")
    sim.set_behaviour("+919999999999", Behaviour(), "acme")
