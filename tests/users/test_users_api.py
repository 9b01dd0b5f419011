"""The v2 Users API: create, list (filters, fields, paging), get, update, delete, isolation."""

from __future__ import annotations

from urllib.parse import quote

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..conftest import basic
from ..harness import AGENT, AGENT_2, CUSTOMER, running_app
from .helpers import USERS, create_user, data, error_code, user_by_contact


async def test_create_user_with_device_returns_the_user(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        r = await create_user(
            h,
            first_name="Meera",
            last_name="K. Iyer",
            email="Meera@Example.com",
            role="supervisor",
            device_contact_uri="09900000077",
            device_name="Meera desk",
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["http_code"] == 200 and body["method"] == "POST"
        assert body["response"]["status"] == "success"
        user = body["response"]["data"]
        assert len(user["id"]) == 32
        assert (user["first_name"], user["last_name"]) == ("Meera", "K. Iyer")
        assert user["email"] == "meera@example.com"
        assert user["role"] == "supervisor"
        assert user["active_call"] is None
        assert user["date_created"] == "2026-01-15 12:00:00+05:30"
        [device] = user["devices"]
        assert device["contact_uri"] == "+919900000077"
        assert device["name"] == "Meera desk"
        assert device["type"] == "tel"
        assert (device["available"], device["verified"], device["status"]) == (True, False, "free")

        got = await h.client.get(f"{USERS}/{user['id']}", headers=h.auth)
        assert data(got) == user


async def test_create_user_without_device_or_email(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        user = data(await create_user(h))
        assert user["email"] is None and user["role"] == "user" and user["devices"] == []
        # Emails are optional: two users without one do not collide.
        assert (await create_user(h, first_name="Second")).status_code == 200


async def test_create_user_validation_names_the_field(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        cases = [
            ({"first_name": "Al"}, "first_name must be 3 to 20"),
            ({"last_name": "Mary Ann"}, "last_name may contain a space only after a period"),
            ({"email": "nope"}, "email is not a valid email address"),
            ({"role": "root"}, "role must be admin, supervisor or user"),
            ({"device_contact_uri": "12"}, "device_contact_uri"),
            ({"first_name": 42}, "first_name"),
        ]
        for fields, message in cases:
            r = await create_user(h, **fields)
            assert r.status_code == 400, (fields, r.text)
            assert message in r.json()["response"]["error_data"]["message"], r.text
        r = await h.client.post(USERS, json={"last_name": "Iyer"}, headers=h.auth)
        assert r.status_code == 400 and "first_name" in r.text
        r = await h.client.post(USERS, content=b"[1]", headers=h.auth)
        assert r.status_code == 400


async def test_duplicate_email_or_device_is_409(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        r = await create_user(h, email="ASHA@example.com")
        assert r.status_code == 409 and "email" in r.text
        r = await create_user(h, device_contact_uri=AGENT)
        assert r.status_code == 409 and "device_contact_uri" in r.text
        r = await h.client.get(f"{USERS}?limit=50", headers=h.auth)
        assert r.json()["metadata"]["total"] == 2


async def test_list_pages_with_metadata(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        for i in range(5):
            await h.advance(1)
            assert (await create_user(h, first_name=f"User{i:02d}")).status_code == 200
        r = await h.client.get(f"{USERS}?offset=2&limit=3", headers=h.auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["metadata"] == {"total": 7, "count": 3, "offset": 2, "limit": 3}
        assert [item["data"]["first_name"] for item in body["response"]] == [
            "User00",
            "User01",
            "User02",
        ]
        assert all(item["code"] == 200 and item["status"] == "success" for item in body["response"])
        # Without `fields`, a listed user carries no devices/active_call block.
        assert "devices" not in body["response"][0]["data"]
        assert "active_call" not in body["response"][0]["data"]
        r = await h.client.get(f"{USERS}?offset=6&limit=500", headers=h.auth)
        assert r.json()["metadata"] == {"total": 7, "count": 1, "offset": 6, "limit": 50}
        for bad in ("limit=0", "offset=-1", "limit=x", "fields=passwords"):
            assert (await h.client.get(f"{USERS}?{bad}", headers=h.auth)).status_code == 400


async def test_list_filters_by_contact_uri_and_email(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.get(
            f"{USERS}?devices.contact_uri={quote(AGENT_2)}&fields=devices", headers=h.auth
        )
        [item] = r.json()["response"]
        assert item["data"]["first_name"] == "Ravi"
        assert [d["contact_uri"] for d in item["data"]["devices"]] == [AGENT_2]
        assert "active_call" not in item["data"]
        # Local forms and an unencoded `+` (a space) name the same device.
        for form in ("09900000002", "9900000002", "+919900000002"):
            r = await h.client.get(f"{USERS}?devices.contact_uri={form}", headers=h.auth)
            assert [i["data"]["first_name"] for i in r.json()["response"]] == ["Ravi"], form
        both = quote(f"{AGENT},{AGENT_2}")
        r = await h.client.get(f"{USERS}?devices.contact_uri={both}", headers=h.auth)
        assert r.json()["metadata"]["total"] == 2
        r = await h.client.get(f"{USERS}?email=ASHA@example.com", headers=h.auth)
        assert [i["data"]["last_name"] for i in r.json()["response"]] == ["Rao"]
        r = await h.client.get(f"{USERS}?email=nobody@example.com", headers=h.auth)
        assert r.json()["metadata"] == {"total": 0, "count": 0, "offset": 0, "limit": 50}
        assert r.json()["response"] == []


async def test_update_user(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        user = data(await create_user(h))
        await h.advance(60)
        r = await h.client.put(
            f"{USERS}/{user['id']}",
            json={"first_name": "Meenakshi", "role": "admin", "email": "m@example.com"},
            headers=h.auth,
        )
        updated = data(r)
        assert (updated["first_name"], updated["last_name"]) == ("Meenakshi", "Iyer")
        assert (updated["role"], updated["email"]) == ("admin", "m@example.com")
        assert updated["date_updated"] == "2026-01-15 12:01:00+05:30"
        assert updated["date_created"] == user["date_created"]
        # Exotel lets an email be set once; changing it afterwards is refused.
        r = await h.client.put(
            f"{USERS}/{user['id']}", json={"email": "other@example.com"}, headers=h.auth
        )
        assert r.status_code == 400 and "email can be set only" in r.text
        r = await h.client.put(f"{USERS}/{user['id']}", json={"last_name": "x"}, headers=h.auth)
        assert r.status_code == 400 and "last_name" in r.text
        r = await h.client.put(f"{USERS}/{user['id']}", json={}, headers=h.auth)
        assert r.status_code == 400 and "nothing to update" in r.text
        other = data(await create_user(h, first_name="Another"))
        r = await h.client.put(
            f"{USERS}/{other['id']}", json={"email": "M@example.com"}, headers=h.auth
        )
        assert r.status_code == 409


async def test_delete_user(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        user = data(await create_user(h, device_contact_uri="+919900000077"))
        r = await h.client.delete(f"{USERS}/{user['id']}", headers=h.auth)
        assert data(r)["id"] == user["id"]
        r = await h.client.get(f"{USERS}/{user['id']}", headers=h.auth)
        assert r.status_code == 404 and error_code(r) == 10731
        r = await h.client.delete(f"{USERS}/{user['id']}", headers=h.auth)
        assert r.status_code == 404 and error_code(r) == 10731
        # The number is free for a new user.
        assert (await create_user(h, device_contact_uri="+919900000077")).status_code == 200


async def test_user_on_a_call_cannot_be_deleted(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "manual")
        sid = (await h.create_call()).json()["response"]["call_details"]["sid"]
        await h.advance(2)
        asha = await user_by_contact(h, AGENT)
        r = await h.client.delete(f"{USERS}/{asha['id']}", headers=h.auth)
        assert r.status_code == 409 and sid in r.json()["response"]["error_data"]["message"]
        h.sim.act(CUSTOMER, "reject")
        await h.advance(1)
        r = await h.client.delete(f"{USERS}/{asha['id']}", headers=h.auth)
        assert r.status_code == 200


async def test_other_accounts_users_are_not_found(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        asha = await user_by_contact(h, AGENT)
        other = basic("k_other", "t_other")
        device_id = asha["devices"][0]["id"]
        base = f"/v2/accounts/other/users/{asha['id']}"
        for method, path, body in [
            ("GET", base, None),
            ("PUT", base, {"first_name": "Hacker"}),
            ("DELETE", base, None),
            ("PUT", f"{base}/devices/{device_id}", {"available": False}),
            ("POST", f"{base}/devices/{device_id}/verification", None),
        ]:
            r = await h.client.request(method, path, json=body, headers=other)
            assert r.status_code == 404 and error_code(r) == 10731, (method, path, r.text)
        r = await h.client.get("/v2/accounts/other/users", headers=other)
        assert r.json()["metadata"]["total"] == 0
        # Acme's credentials on the other account's path are refused.
        r = await h.client.get("/v2/accounts/other/users", headers=h.auth)
        assert r.status_code in (401, 404)
        r = await h.client.get(USERS, headers={"Authorization": "Basic Zm9vOmJhcg=="})
        assert r.status_code == 401 and error_code(r) == 1010
        assert (
            data(await h.client.get(f"{USERS}/{asha['id']}", headers=h.auth))["first_name"]
            == "Asha"
        )
