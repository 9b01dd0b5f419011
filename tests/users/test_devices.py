"""Device updates: ON/OFF with one ON device per user, number changes, live status, and
availability changes deferred while the device is on a call."""

from __future__ import annotations

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..harness import AGENT, CUSTOMER, DEFAULT_CONFIG, running_app
from .helpers import USERS, create_user, data, error_code, put_device, user_by_contact

DESK = "+919900000011"
MOBILE = "+919900000012"
OTHER_ACCOUNT = '\n[[accounts]]\nsid = "other"'
# Dev joins acme (DEFAULT_CONFIG's account, which here refuses VoIP) with two devices; a second
# [[accounts]] with sid "acme" would be a config error (a duplicate sid).
TWO_DEVICES = DEFAULT_CONFIG.replace("allow_voip = true", "allow_voip = false").replace(
    OTHER_ACCOUNT,
    f"""
[[accounts.users]]
first_name = "Dev"
last_name = "Two"
email = "dev@example.com"

[[accounts.users.devices]]
contact_uri = "{DESK}"
name = "desk"
available = true
verified = true

[[accounts.users.devices]]
contact_uri = "{MOBILE}"
name = "mobile"
available = false
verified = true
"""
    + OTHER_ACCOUNT,
)


async def test_only_one_device_per_user_may_be_on(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=TWO_DEVICES) as h:
        dev = await user_by_contact(h, DESK)
        by_uri = {d["contact_uri"]: d for d in dev["devices"]}
        desk, mobile = by_uri[DESK], by_uri[MOBILE]
        assert (desk["available"], mobile["available"]) == (True, False)
        r = await put_device(h, dev["id"], mobile["id"], available=True)
        assert r.status_code == 409 and error_code(r) == 409
        assert desk["id"] in r.json()["response"]["error_data"]["message"]
        assert (
            data(await put_device(h, dev["id"], desk["id"], available="OFF"))["available"] is False
        )
        assert (
            data(await put_device(h, dev["id"], mobile["id"], available=True))["available"] is True
        )
        dev = await user_by_contact(h, DESK)
        assert {d["contact_uri"]: d["available"] for d in dev["devices"]} == {
            DESK: False,
            MOBILE: True,
        }
        # Turning ON the device that is already ON is not a conflict.
        assert data(await put_device(h, dev["id"], mobile["id"], available=True))["available"]


async def test_changing_the_number_needs_verification_again(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        asha = await user_by_contact(h, AGENT)
        device = asha["devices"][0]
        assert device["verified"] is True
        same = data(await put_device(h, asha["id"], device["id"], contact_uri="09900000001"))
        assert same["verified"] is True  # the same number in another form is no change
        changed = data(await put_device(h, asha["id"], device["id"], contact_uri="09900000055"))
        assert (changed["contact_uri"], changed["verified"]) == ("+919900000055", False)
        r = await h.create_call(from_uri="+919900000055")
        assert r.status_code == 409 and error_code(r) == 10705
        # The old number is no longer this user's device.
        r = await h.client.get(f"{USERS}?devices.contact_uri=%2B919900000001", headers=h.auth)
        assert r.json()["metadata"]["total"] == 0
        taken = await put_device(h, asha["id"], device["id"], contact_uri="+919900000002")
        assert taken.status_code == 409


async def test_device_update_errors(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=TWO_DEVICES) as h:
        dev = await user_by_contact(h, DESK)
        asha = await user_by_contact(h, AGENT)
        desk = next(d for d in dev["devices"] if d["contact_uri"] == DESK)
        r = await put_device(h, asha["id"], desk["id"], available=False)
        assert r.status_code == 404 and error_code(r) == 10702
        r = await put_device(h, "0" * 32, desk["id"], available=False)
        assert r.status_code == 404 and error_code(r) == 10731
        r = await put_device(h, dev["id"], desk["id"])
        assert r.status_code == 400 and "nothing to update" in r.text
        for wrong in ("maybe", "yes", "1", 0):
            r = await put_device(h, dev["id"], desk["id"], available=wrong)
            assert r.status_code == 400 and "available" in r.text, wrong
        r = await put_device(h, dev["id"], desk["id"], available="false")
        assert r.status_code == 200 and data(r)["available"] is False
        r = await put_device(h, dev["id"], desk["id"], contact_uri="sip:dev@pbx.example.com")
        assert r.status_code == 405 and error_code(r) == 10712
        r = await create_user(h, device_contact_uri="sip:meera@pbx.example.com")
        assert r.status_code == 405 and error_code(r) == 10712


async def test_live_status_and_active_call_follow_the_call(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "answer", answer_after_s=2, hangup_after_s=30)
        sid = (await h.create_call()).json()["response"]["call_details"]["sid"]
        asha = await user_by_contact(h, AGENT)
        assert asha["active_call"] == sid
        assert asha["devices"][0]["status"] == "busy"
        got = data(
            await h.client.get(
                f"{USERS}/{asha['id']}/devices/{asha['devices'][0]['id']}", headers=h.auth
            )
        )
        assert got["status"] == "busy"
        ravi = await user_by_contact(h, "+919900000002")
        assert (ravi["active_call"], ravi["devices"][0]["status"]) == (None, "free")
        await h.advance(40)
        assert (await h.call(sid))["status"] == "completed"
        asha = await user_by_contact(h, AGENT)
        assert (asha["active_call"], asha["devices"][0]["status"]) == (None, "free")


async def test_turning_off_during_a_call_applies_when_it_ends(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "answer", answer_after_s=2, hangup_after_s=30)
        sid = (await h.create_call()).json()["response"]["call_details"]["sid"]
        await h.advance(5)
        asha = await user_by_contact(h, AGENT)
        device = asha["devices"][0]
        during = data(await put_device(h, asha["id"], device["id"], available=False))
        # Deferred: the device stays ON (and busy) until the call ends.
        assert (during["available"], during["status"]) == (True, "busy")
        assert (await h.call(sid))["state"] == "active"
        await h.advance(40)
        assert (await h.call(sid))["status"] == "completed"
        after = (await user_by_contact(h, AGENT))["devices"][0]
        assert (after["available"], after["status"]) == (False, "free")
        r = await h.create_call()
        assert r.status_code == 404 and error_code(r) == 10703


async def test_a_deferred_change_can_be_undone_before_the_call_ends(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "answer", answer_after_s=2, hangup_after_s=30)
        await h.create_call()
        await h.advance(5)
        asha = await user_by_contact(h, AGENT)
        device = asha["devices"][0]
        await put_device(h, asha["id"], device["id"], available=False)
        await put_device(h, asha["id"], device["id"], available=True)
        await h.advance(40)
        after = (await user_by_contact(h, AGENT))["devices"][0]
        assert (after["available"], after["status"]) == (True, "free")
        assert (await h.create_call()).status_code == 200


async def test_number_of_a_busy_device_cannot_change(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "manual")
        await h.create_call()
        await h.advance(2)
        asha = await user_by_contact(h, AGENT)
        r = await put_device(h, asha["id"], asha["devices"][0]["id"], contact_uri="+919900000066")
        assert r.status_code == 409 and "after the call ends" in r.text


async def test_a_user_without_devices_answers_10806(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        meera = data(await create_user(h))
        assert meera["devices"] == []
        r = await put_device(h, meera["id"], "0" * 32, available=True)
        assert r.status_code == 404 and error_code(r) == 10806
