"""The ExoPhones, flows and groups APIs: envelopes, validation, account isolation."""

from __future__ import annotations

from typing import Any

from callbridge.clock import ManualClock
from callbridge.settings import Settings
from callbridge.store.repo import Store

from ..conftest import basic
from ..harness import ACCOUNT, EXOPHONE, running_app
from .helpers import config, make_flow, user_id

BASE = f"/v2/accounts/{ACCOUNT}"


async def test_exophones_list_add_attach_and_remove(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        r = await h.client.get(f"{BASE}/exophones", headers=h.auth)
        assert r.status_code == 200
        body = r.json()
        assert body["http_code"] == 200
        assert body["metadata"] == {"total": 2, "count": 2, "offset": 0, "limit": 20}
        assert [item["data"]["number"] for item in body["response"]] == [
            EXOPHONE,
            "+918047091999",
        ]
        assert body["response"][0]["status"] == "success"

        flow = await make_flow(h, name="Sales")
        r = await h.client.post(
            f"{BASE}/exophones",
            json={"number": "08047092000", "flow_id": flow["id"]},
            headers=h.auth,
        )
        assert r.status_code == 200, r.text
        data = r.json()["response"]["data"]
        assert data["number"] == "+918047092000"
        assert (data["flow_id"], data["flow_name"]) == (flow["id"], "Sales")

        r = await h.client.post(
            f"{BASE}/exophones", json={"number": "+918047092000"}, headers=h.auth
        )
        assert r.status_code == 409
        r = await h.client.post(
            f"{BASE}/exophones", json={"number": "+918047091000"}, headers=h.auth
        )
        assert r.status_code == 409  # another account's number

        r = await h.client.put(
            f"{BASE}/exophones/{data['id']}", json={"flow_id": None}, headers=h.auth
        )
        assert r.status_code == 200
        assert r.json()["response"]["data"]["flow_id"] is None
        r = await h.client.put(
            f"{BASE}/exophones/%2B918047092000", json={"flow_id": "nope"}, headers=h.auth
        )
        assert r.status_code == 400
        assert "flow_id" in r.json()["response"]["error_data"]["message"]

        r = await h.client.get(f"{BASE}/flows/{flow['id']}", headers=h.auth)
        assert r.json()["response"]["data"]["exophones"] == []
        r = await h.client.delete(f"{BASE}/exophones/08047092000", headers=h.auth)
        assert r.status_code == 200
        r = await h.client.get(f"{BASE}/exophones/08047092000", headers=h.auth)
        assert r.status_code == 404
        assert r.json()["response"]["error_data"]["code"] == 10716


async def test_another_accounts_exophone_is_not_found(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        r = await h.client.get(f"{BASE}/exophones/+918047091000", headers=h.auth)
        assert r.status_code == 404
        r = await h.client.get(f"{BASE}/exophones", headers=basic("k_other", "t_other"))
        assert r.status_code == 404  # a foreign account sid reads as not found


async def test_flow_crud_and_definition_defaults(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        uid = await user_id(h, 1)
        flow = await make_flow(
            h,
            connect={
                "destinations": [{"user_id": uid}, {"contact_uri": "09811111111"}],
                "strategy": "round_robin",
                "attempt_timeout_s": 15,
                "recording": {"record": True, "channels": "dual"},
            },
            no_agent={"action": "queue", "max_wait_s": 90},
        )
        assert flow["name"] == "Support"
        assert flow["connect"]["destinations"] == [
            {"user_id": uid},
            {"contact_uri": "+919811111111"},
        ]
        assert flow["connect"]["strategy"] == "round_robin"
        assert flow["connect"]["recording"] == {"record": True, "channels": "dual", "format": "mp3"}
        assert flow["connect"]["max_conversation_s"] == 14400
        assert flow["no_agent"]["action"] == "queue"
        assert flow["no_agent"]["retry_interval_s"] == 5
        assert flow["status_callback"] == []

        r = await h.client.put(
            f"{BASE}/flows/{flow['id']}",
            json={"connect": {"destinations": [{"user_id": uid}], "strategy": "longest_idle"}},
            headers=h.auth,
        )
        assert r.status_code == 200, r.text
        updated = r.json()["response"]["data"]
        assert (updated["name"], updated["connect"]["strategy"]) == ("Support", "longest_idle")

        r = await h.client.get(f"{BASE}/flows", headers=h.auth)
        assert r.json()["metadata"]["total"] == 1

        r = await h.client.put(
            f"{BASE}/exophones/{EXOPHONE}", json={"flow_id": flow["id"]}, headers=h.auth
        )
        assert r.status_code == 200
        r = await h.client.delete(f"{BASE}/flows/{flow['id']}", headers=h.auth)
        assert r.status_code == 409
        await h.client.put(f"{BASE}/exophones/{EXOPHONE}", json={"flow_id": None}, headers=h.auth)
        r = await h.client.delete(f"{BASE}/flows/{flow['id']}", headers=h.auth)
        assert r.status_code == 200
        r = await h.client.get(f"{BASE}/flows/{flow['id']}", headers=h.auth)
        assert r.status_code == 404
        assert r.json()["response"]["status"] == "failure"


async def test_invalid_flows_are_400_naming_the_field(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"connect": {"strategy": "random"}}, "connect.strategy"),
            ({"connect": {"attempt_timeout_s": 0}}, "connect.attempt_timeout_s"),
            ({"connect": {"destinations": [{}]}}, "connect.destinations.0"),
            ({"connect": {"destinations": [{"group_id": 99}]}}, "connect.destinations.0.group_id"),
            ({"connect": {"destinations": [{"contact_uri": "abc"}]}}, "contact_uri"),
            ({"connect": {"url": "ftp://x.example.com/"}}, "connect.url"),
            ({"no_agent": {"action": "voicemail"}}, "no_agent.action"),
            ({"connect": {"recording": {"channels": "triple"}}}, "connect.recording.channels"),
            ({"connect": {"bogus": 1}}, "connect.bogus"),
            ({"conect": {"strategy": "simultaneous"}}, "conect: unknown field"),
            ({"status_callbacks": []}, "status_callbacks: unknown field"),
        ]
        for definition, field in cases:
            r = await h.client.post(
                f"{BASE}/flows", json={"name": "x", **definition}, headers=h.auth
            )
            assert r.status_code == 400, (definition, r.text)
            assert field in r.json()["response"]["error_data"]["message"], definition
        r = await h.client.post(f"{BASE}/flows", json={"connect": {}}, headers=h.auth)
        assert r.status_code == 400
        assert "name" in r.json()["response"]["error_data"]["message"]
        r = await h.client.post(
            f"{BASE}/flows",
            json={"name": "x", "connect": {"destinations": [{"user_id": "nobody"}]}},
            headers=h.auth,
        )
        assert r.status_code == 404
        assert r.json()["response"]["error_data"]["code"] == 10731


async def test_private_dynamic_url_is_refused_unless_allowed(
    store: Store, clock: ManualClock
) -> None:
    settings = Settings(allow_private_urls=False, log_level="WARNING")
    async with running_app(store, clock, config=config(1), settings=settings) as h:
        r = await h.client.post(
            f"{BASE}/flows",
            json={"name": "x", "connect": {"url": "http://127.0.0.1:8000/route"}},
            headers=h.auth,
        )
        assert r.status_code == 400
        assert "connect.url" in r.json()["response"]["error_data"]["message"]


async def test_groups_crud_and_membership(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=config(3)) as h:
        u1, u2, u3 = [await user_id(h, i) for i in (1, 2, 3)]
        r = await h.client.post(
            f"{BASE}/groups", json={"name": "support", "user_ids": [u1]}, headers=h.auth
        )
        assert r.status_code == 200, r.text
        group = r.json()["response"]["data"]
        assert group["name"] == "support"
        assert group["users"] == [{"id": u1, "name": "Agent No1"}]
        gid = group["id"]

        r = await h.client.post(f"{BASE}/groups", json={"name": "support"}, headers=h.auth)
        assert r.status_code == 409
        r = await h.client.post(
            f"{BASE}/groups/{gid}/users", json={"user_ids": [u2, u3, u1]}, headers=h.auth
        )
        assert r.status_code == 200
        assert [u["id"] for u in r.json()["response"]["data"]["users"]] == [u1, u2, u3]
        r = await h.client.post(
            f"{BASE}/groups/{gid}/users", json={"user_id": "ghost"}, headers=h.auth
        )
        assert r.status_code == 404
        assert r.json()["response"]["error_data"]["code"] == 10731

        r = await h.client.delete(f"{BASE}/groups/{gid}/users/{u2}", headers=h.auth)
        assert [u["id"] for u in r.json()["response"]["data"]["users"]] == [u1, u3]
        r = await h.client.delete(f"{BASE}/groups/{gid}/users/{u2}", headers=h.auth)
        assert r.status_code == 404

        r = await h.client.get(f"{BASE}/groups/{gid}/users", headers=h.auth)
        assert r.json()["metadata"]["count"] == 2
        r = await h.client.put(f"{BASE}/groups/{gid}", json={"name": "care"}, headers=h.auth)
        assert r.json()["response"]["data"]["name"] == "care"
        r = await h.client.get(f"{BASE}/groups", headers=h.auth)
        assert [item["data"]["name"] for item in r.json()["response"]] == ["care"]

        r = await h.client.get(
            f"/v2/accounts/other/groups/{gid}", headers=basic("k_other", "t_other")
        )
        assert r.status_code == 404
        # A group a flow rings cannot go: the flow would silently ring nobody.
        flow = await h.client.post(
            f"{BASE}/flows",
            json={"name": "care-line", "connect": {"destinations": [{"group_id": gid}]}},
            headers=h.auth,
        )
        fid = flow.json()["response"]["data"]["id"]
        r = await h.client.delete(f"{BASE}/groups/{gid}", headers=h.auth)
        assert r.status_code == 409 and "care-line" in r.text
        assert (await h.client.delete(f"{BASE}/flows/{fid}", headers=h.auth)).status_code == 200
        r = await h.client.delete(f"{BASE}/groups/{gid}", headers=h.auth)
        assert r.status_code == 200
        r = await h.client.get(f"{BASE}/groups/{gid}", headers=h.auth)
        assert r.status_code == 404
        r = await h.client.get(f"{BASE}/groups/abc", headers=h.auth)
        assert r.status_code == 404
