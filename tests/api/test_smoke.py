from __future__ import annotations

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..harness import AGENT, CUSTOMER, running_app


async def test_click_to_call_completes(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "answer", answer_after_s=3, hangup_after_s=40)
        r = await h.create_call()
        assert r.status_code == 200, r.text
        sid = r.json()["response"]["call_details"]["sid"]
        await h.advance(60)
        details = await h.call(sid)
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 40
        legs = await h.legs(sid)
        assert [leg["status"] for leg in legs["from"]] == ["completed"]
        assert legs["from"][0]["contact_uri"] == AGENT
