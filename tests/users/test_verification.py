"""Device verification: a call plays a code, keying it back (DTMF) verifies the device."""

from __future__ import annotations

from typing import Any

from callbridge.clock import ManualClock
from callbridge.engine.verification import VerificationService, code_audio
from callbridge.store import busy as busy_store
from callbridge.store.repo import Store
from callbridge.telephony.base import FRAME_BYTES

from ..harness import ACCOUNT, Harness, running_app
from .helpers import USERS, create_user, data, error_code, put_device

PHONE = "+919900000077"
CODE = "4821"


async def new_agent(h: Harness) -> tuple[str, str]:
    user = data(await create_user(h, device_contact_uri=PHONE))
    return user["id"], user["devices"][0]["id"]


def fixed_code(h: Harness) -> VerificationService:
    service = VerificationService(h.services.engine, code_factory=lambda: CODE)
    h.services.extras["verification"] = service
    return service


async def start(h: Harness, user_id: str, device_id: str) -> Any:
    r = await h.client.post(f"{USERS}/{user_id}/devices/{device_id}/verification", headers=h.auth)
    await h.settle()
    return r


async def status(h: Harness, user_id: str, device_id: str) -> dict[str, Any]:
    r = await h.client.get(f"{USERS}/{user_id}/devices/{device_id}/verification", headers=h.auth)
    return data(r)


async def test_keying_the_code_verifies_the_device(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        fixed_code(h)
        user_id, device_id = await new_agent(h)
        h.phone(PHONE, "answer", answer_after_s=2, dtmf=CODE)
        r = await start(h, user_id, device_id)
        assert r.status_code == 202, r.text
        attempt = data(r)
        assert (attempt["status"], attempt["device_id"], attempt["contact_uri"]) == (
            "calling",
            device_id,
            PHONE,
        )
        assert h.sim.phone_state(PHONE).value == "ringing"
        async with h.services.store.read() as conn:
            assert await busy_store.busy_uris(conn, ACCOUNT, [PHONE]) == {}
        await h.advance(2)
        assert (await status(h, user_id, device_id))["attempt"]["status"] == "awaiting_code"
        await h.advance(0.5)
        result = await status(h, user_id, device_id)
        assert (result["verified"], result["attempt"]["status"]) == (True, "verified")
        assert h.sim.phone_state(PHONE).value == "idle"  # we hung up
        user = data(await h.client.get(f"{USERS}/{user_id}", headers=h.auth))
        assert user["devices"][0]["verified"] is True
        assert h.services.engine.active_calls == 0
        # The verified device now takes click-to-calls.
        assert (await h.create_call(from_uri=PHONE)).status_code == 200


async def test_digits_one_by_one_with_a_restart(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        fixed_code(h)
        user_id, device_id = await new_agent(h)
        h.phone(PHONE, "manual")
        await start(h, user_id, device_id)
        h.sim.act(PHONE, "answer")
        await h.advance(1)
        for digits in ["4", "8", "#", "4", "8", "2", "1"]:
            h.sim.act(PHONE, "dtmf", digits)
            await h.advance(0.2)
        assert (await status(h, user_id, device_id))["verified"] is True


async def test_wrong_code_three_times_fails(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        fixed_code(h)
        user_id, device_id = await new_agent(h)
        h.phone(PHONE, "manual")
        await start(h, user_id, device_id)
        h.sim.act(PHONE, "answer")
        await h.advance(1)
        for _ in range(2):
            h.sim.act(PHONE, "dtmf", "1111")
            await h.advance(0.2)
            assert (await status(h, user_id, device_id))["attempt"]["status"] == "awaiting_code"
        h.sim.act(PHONE, "dtmf", "1111")
        await h.advance(0.2)
        result = await status(h, user_id, device_id)
        assert (result["verified"], result["attempt"]["status"]) == (False, "wrong_code")
        assert h.sim.phone_state(PHONE).value == "idle"


async def test_unanswered_and_silent_attempts_are_bounded(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        fixed_code(h)
        user_id, device_id = await new_agent(h)
        h.phone(PHONE, "no-answer")
        await start(h, user_id, device_id)
        await h.advance(29.9)
        assert (await status(h, user_id, device_id))["attempt"]["status"] == "calling"
        await h.advance(0.1)
        assert (await status(h, user_id, device_id))["attempt"]["status"] == "no_answer"
        assert h.sim.phone_state(PHONE).value == "idle"

        h.phone(PHONE, "answer", answer_after_s=1)  # answers, never keys anything
        await start(h, user_id, device_id)
        await h.advance(1 + 44.9)
        assert (await status(h, user_id, device_id))["attempt"]["status"] == "awaiting_code"
        await h.advance(0.1)
        result = await status(h, user_id, device_id)
        assert (result["verified"], result["attempt"]["status"]) == (False, "timed_out")
        assert h.sim.phone_state(PHONE).value == "idle"

        h.phone(PHONE, "reject", answer_after_s=1)
        await start(h, user_id, device_id)
        await h.advance(1)
        assert (await status(h, user_id, device_id))["attempt"]["status"] == "no_answer"
        h.phone(PHONE, "unreachable")
        await start(h, user_id, device_id)
        await h.advance(1)
        assert (await status(h, user_id, device_id))["attempt"]["status"] == "failed"
        assert h.services.engine.active_calls == 0


async def test_a_number_changed_mid_attempt_is_not_verified(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        fixed_code(h)
        user_id, device_id = await new_agent(h)
        h.phone(PHONE, "manual")
        await start(h, user_id, device_id)
        h.sim.act(PHONE, "answer")
        await h.advance(1)
        changed = data(await put_device(h, user_id, device_id, contact_uri="+919900000078"))
        assert changed["verified"] is False
        h.sim.act(PHONE, "dtmf", CODE)
        await h.advance(0.5)
        result = await status(h, user_id, device_id)
        assert (result["verified"], result["attempt"]["status"]) == (False, "superseded")


async def test_verification_refusals(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        fixed_code(h)
        user_id, device_id = await new_agent(h)
        h.phone(PHONE, "manual")
        assert (await start(h, user_id, device_id)).status_code == 202
        r = await start(h, user_id, device_id)
        assert r.status_code == 409 and "already in progress" in r.text
        h.sim.act(PHONE, "hangup")
        await h.advance(1)
        assert (await status(h, user_id, device_id))["attempt"]["status"] == "no_answer"
        async with h.services.store.tx() as conn:
            await busy_store.mark_busy(
                conn,
                account_sid=ACCOUNT,
                contact_uri=PHONE,
                call_sid="c" * 32,
                owner_node=h.services.engine.node_id,
                now=h.clock.now(),
            )
        r = await start(h, user_id, device_id)
        assert (r.status_code, error_code(r)) == (409, 10706)
        r = await start(h, user_id, "9" * 32)
        assert (r.status_code, error_code(r)) == (404, 10702)
        r = await start(h, "9" * 32, device_id)
        assert (r.status_code, error_code(r)) == (404, 10731)
        asha = (
            await h.client.get(f"{USERS}?email=asha@example.com&fields=devices", headers=h.auth)
        ).json()
        asha_user = asha["response"][0]["data"]
        r = await start(h, asha_user["id"], asha_user["devices"][0]["id"])
        assert r.status_code == 409 and "already verified" in r.text


def test_code_audio_counts_beeps_and_fills_whole_frames() -> None:
    pcm = code_audio("20")
    assert len(pcm) % FRAME_BYTES == 0
    # 2 + 10 beeps of 0.15 s with 0.15 s gaps, two 0.7 s digit pauses and a 1.5 s pause.
    expected_s = 12 * 0.3 + 2 * 0.7 + 1.5
    assert abs(len(pcm) / 2 / 8000 - expected_s) < 0.03
