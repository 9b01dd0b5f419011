"""Admission against a driver with a fixed number of call slots (as the SIP worker pool has):
a click-to-call reserves room before its busy mark and call row exist, a full driver is
answered 503 at once with nothing left behind, and every reservation is given back — by a
refused admission, and by the engine when the call ends."""

from __future__ import annotations

from sqlalchemy import func, select

from callbridge.clock import ManualClock
from callbridge.store.repo import Store
from callbridge.store.tables import busy_marks, calls
from callbridge.telephony.base import CapacityExhausted
from callbridge.telephony.sim import SimulatedCarrier
from callbridge.telephony.sim_media import SimMediaPlane

from ..harness import AGENT, AGENT_2, CUSTOMER, running_app


class SlottedCarrier(SimulatedCarrier):
    """The simulated carrier with room for `slots` calls, reserved at admission."""

    def __init__(self, clock: ManualClock, slots: int) -> None:
        super().__init__(clock, media=SimMediaPlane(clock))
        self.slots = slots
        self.reserved: set[str] = set()

    def reserve(self, call_sid: str) -> None:
        if call_sid in self.reserved:
            return
        if len(self.reserved) >= self.slots:
            raise CapacityExhausted(f"SIP capacity exhausted: {self.slots} calls up")
        self.reserved.add(call_sid)

    def release(self, call_sid: str) -> None:
        self.reserved.discard(call_sid)


async def rows(store: Store) -> tuple[int, list[str]]:
    async with store.read() as conn:
        count = (await conn.execute(select(func.count()).select_from(calls))).scalar_one()
        marks = [r[0] for r in await conn.execute(select(busy_marks.c.contact_uri))]
    return int(count), sorted(marks)


async def test_full_driver_answers_503_at_once_leaving_no_call_and_no_busy_mark(
    store: Store, clock: ManualClock
) -> None:
    driver = SlottedCarrier(clock, slots=1)
    async with running_app(store, clock, driver=driver) as h:
        h.phone(AGENT, "answer", answer_after_s=1)
        h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=5)
        first = await h.create_call(AGENT, CUSTOMER)
        assert first.status_code == 200
        refused = await h.create_call(AGENT_2, CUSTOMER)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        body = refused.json()
        assert body["http_code"] == 503 and body["response"]["status"] == "failure"
        assert body["response"]["error_data"] == {
            "code": 503,
            "description": "SIP capacity exhausted",
            "message": "SIP capacity exhausted: 1 calls up; retry later",
        }
        assert await rows(store) == (1, [AGENT])
        await h.advance(10)  # the first call ends: its slot is free again
        assert (await h.call(first.json()["response"]["call_details"]["sid"]))["status"] == (
            "completed"
        )
        assert driver.reserved == set()
        again = await h.create_call(AGENT_2, CUSTOMER)
        assert again.status_code == 200, again.text


async def test_a_refused_admission_gives_its_reservation_back(
    store: Store, clock: ManualClock
) -> None:
    driver = SlottedCarrier(clock, slots=2)
    async with running_app(store, clock, driver=driver) as h:
        h.phone(AGENT, "manual")
        first = await h.create_call(AGENT, CUSTOMER)
        sid = first.json()["response"]["call_details"]["sid"]
        busy = await h.create_call(AGENT, CUSTOMER)
        assert busy.json()["response"]["error_data"]["code"] == 10706
        assert driver.reserved == {sid}
        unknown = await h.create_call(AGENT_2, CUSTOMER, virtual_number="+919999999999")
        assert unknown.json()["response"]["error_data"]["code"] == 10716
        assert driver.reserved == {sid}


async def test_the_engine_gives_the_reservation_back_when_a_call_ends_undialled(
    store: Store, clock: ManualClock
) -> None:
    driver = SlottedCarrier(clock, slots=1)
    async with running_app(store, clock, driver=driver) as h:
        h.phone(AGENT, "unreachable")
        r = await h.create_call(AGENT, CUSTOMER)
        await h.advance(1)
        details = await h.call(r.json()["response"]["call_details"]["sid"])
        assert details["status"] == "from_leg_no_dial"
        assert driver.reserved == set()
        assert (await h.create_call(AGENT_2, CUSTOMER)).status_code == 200


async def test_the_plain_simulated_carrier_reserves_nothing(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        assert not hasattr(h.services.engine.driver, "reserve")
        for agent in (AGENT, AGENT_2):
            assert (await h.create_call(agent, CUSTOMER)).status_code == 200
