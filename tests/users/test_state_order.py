"""SPEC §2.2's state-management checks, in SPEC's order: OFF beats unverified beats busy."""

from __future__ import annotations

from typing import Any

import pytest

from callbridge.clock import ManualClock
from callbridge.store import busy as busy_store
from callbridge.store import users as user_store
from callbridge.store.repo import Store

from ..harness import ACCOUNT, AGENT, CUSTOMER, EXOPHONE, Harness, running_app
from .helpers import error_code, user_by_contact

CASES = [
    # (available, verified, busy) -> (http status, Exotel code)
    ((False, False, True), (404, 10703)),
    ((False, True, True), (404, 10703)),
    ((False, False, False), (404, 10703)),
    ((True, False, True), (409, 10705)),
    ((True, False, False), (409, 10705)),
    ((True, True, True), (409, 10706)),
]


async def _set_device(h: Harness, available: bool, verified: bool, busy: bool) -> str:
    asha = await user_by_contact(h, AGENT)
    async with h.services.store.tx() as conn:
        await user_store.update_device(
            conn,
            asha["devices"][0]["id"],
            {"available": available, "verified": verified},
            h.clock.now(),
        )
        if busy:
            await busy_store.mark_busy(
                conn,
                account_sid=ACCOUNT,
                contact_uri=AGENT,
                call_sid="c" * 32,
                owner_node=h.services.engine.node_id,
                now=h.clock.now(),
            )
    return str(asha["id"])


@pytest.mark.parametrize(("state", "expected"), CASES)
async def test_v3_click_to_call_refusal_order(
    store: Store, clock: ManualClock, state: tuple[bool, bool, bool], expected: tuple[int, int]
) -> None:
    async with running_app(store, clock) as h:
        await _set_device(h, *state)
        r = await h.create_call()
        assert (r.status_code, error_code(r)) == expected, r.text
        assert h.services.engine.active_calls == 0
        if state[2]:
            async with h.services.store.read() as conn:
                assert await busy_store.busy_uris(conn, ACCOUNT, [AGENT]) == {AGENT: "c" * 32}


@pytest.mark.parametrize(("state", "expected"), CASES)
async def test_v2_call_refusal_order(
    store: Store, clock: ManualClock, state: tuple[bool, bool, bool], expected: tuple[int, int]
) -> None:
    async with running_app(store, clock) as h:
        user_id = await _set_device(h, *state)
        body: dict[str, Any] = {
            "from": {"user_id": user_id},
            "to": {"customer_contact_uri": CUSTOMER},
            "virtual_number": EXOPHONE,
        }
        r = await h.client.post(f"/v2/accounts/{ACCOUNT}/calls", json=body, headers=h.auth)
        assert (r.status_code, error_code(r)) == expected, r.text


async def test_a_real_call_makes_the_device_busy_for_v3_and_v2(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "manual")
        assert (await h.create_call()).status_code == 200
        await h.advance(2)
        r = await h.create_call()
        assert (r.status_code, error_code(r)) == (409, 10706)
        asha = await user_by_contact(h, AGENT)
        body = {
            "from": {"user_id": asha["id"]},
            "to": {"customer_contact_uri": CUSTOMER},
            "virtual_number": EXOPHONE,
        }
        r = await h.client.post(f"/v2/accounts/{ACCOUNT}/calls", json=body, headers=h.auth)
        assert (r.status_code, error_code(r)) == (409, 10706)
