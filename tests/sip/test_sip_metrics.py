"""`/metrics` with the SIP driver: the worker pool's live workers and free slots, which fall
while a call holds two of them and come back when it ends (SIPp as both phones)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from callbridge.store.repo import Store
from tests.sip.conftest import sip_settings, until
from tests.sip.sipp import Sipp
from tests.sip.support import SipApp, sip_app

pytestmark = pytest.mark.sip

AGENT_HZ, CUSTOMER_HZ = 440.0, 660.0


async def pool(app: SipApp) -> dict[str, float]:
    r = await app.client.get("/metrics")
    assert r.status_code == 200
    labels = {
        "callbridge_driver_free_slots": {"driver": "sip"},
        "callbridge_sip_workers_alive": {"driver": "sip"},
        "callbridge_active_legs": {},
    }
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name in labels:
                assert sample.labels == labels[sample.name], sample
                found[sample.name] = sample.value
    return found


async def test_pool_occupancy_follows_a_sip_call(store: Store, sipp: Callable[..., Sipp]) -> None:
    settings = sip_settings(workers=2, allow_private_urls=True)
    async with sip_app(store, settings) as app:
        idle = await pool(app)
        capacity = app.driver.capacity()
        assert idle == {
            "callbridge_driver_free_slots": capacity,
            "callbridge_sip_workers_alive": 2,
            "callbridge_active_legs": 0,
        }
        agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=200)
        customer = sipp("uas_answer_tone_then_bye.xml", tone_hz=CUSTOMER_HZ, pause_ms=1500)
        sid = await app.create_call(
            f"sip:agent@{agent.uri_host}", f"sip:customer@{customer.uri_host}"
        )
        await app.wait_leg(sid, "to", "in-progress")
        talking = await pool(app)
        assert talking["callbridge_active_legs"] == 2
        assert talking["callbridge_driver_free_slots"] == capacity - 2
        await app.wait_terminal(sid)
        # The workers free a slot when their side of the hang-up is done, just after.
        await until(lambda: app.driver.capacity() == capacity)
        after = await pool(app)
        assert after["callbridge_active_legs"] == 0
        assert after["callbridge_driver_free_slots"] == capacity
