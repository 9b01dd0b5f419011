"""The live stream in-process: snapshot first, then every committed change of the account's
calls and its agents' busy state, on the ManualClock; auth; isolation between accounts;
bounded subscribers; slow subscribers dropped without slowing calls; the page itself."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any

import pytest

from callbridge.api.dashboard_routes import HUB_KEY, close_live_streams
from callbridge.clock import ManualClock
from callbridge.dashboard.live import LiveHub
from callbridge.store.repo import Store

from ..conftest import basic
from ..harness import ACCOUNT, AGENT, AGENT_2, CUSTOMER, KEY, TOKEN
from .sse import Event, LiveApp, live_app

LIVE = "/dashboard/live"
ACCOUNT_LIVE = f"/v3/accounts/{ACCOUNT}/live"
OTHER = basic("k_other", "t_other")


def call_of(event: Event, sid: str) -> dict[str, Any] | None:
    if event.type != "call" or event.data["call"]["sid"] != sid:
        return None
    call: dict[str, Any] = event.data["call"]
    return call


def is_terminal(sid: str) -> Callable[[Event], bool]:
    return lambda e: (call_of(e, sid) or {}).get("state") == "terminal"


def legs_of(event: Event, sid: str) -> dict[str, str]:
    call = call_of(event, sid) or {"legs": []}
    return {leg["side"]: leg["status"] for leg in call["legs"]}


def device(event: Event, uri: str) -> dict[str, Any]:
    for agent in event.data["agents"]:
        for d in agent["devices"]:
            if d["contact_uri"] == uri:
                return {**d, "agent_status": agent["status"], "agent_call": agent["active_call"]}
    raise AssertionError(f"no device {uri} in {event.data}")


def install_hub(live: LiveApp, **tuning: Any) -> LiveHub:
    svc = live.harness.services
    hub = LiveHub(svc.store, svc.clock, **tuning)
    svc.extras[HUB_KEY] = hub
    return hub


async def start_call(live: LiveApp, from_uri: str = AGENT) -> str:
    r = await live.harness.create_call(from_uri=from_uri)
    assert r.status_code == 200, r.text
    sid: str = r.json()["response"]["call_details"]["sid"]
    return sid


async def test_stream_starts_with_a_snapshot_of_calls_and_agents(
    store: Store, clock: ManualClock
) -> None:
    async with live_app(store, clock) as live:
        async with live.stream(LIVE, live.harness.auth) as stream:
            assert stream.status == 200
            assert stream.response_headers["content-type"].startswith("text/event-stream")
            assert stream.response_headers["cache-control"] == "no-store"
            snapshot = await stream.next_event()
            assert snapshot.type == "snapshot"
            assert snapshot.data["account_sid"] == ACCOUNT
            assert snapshot.data["timezone"] == "Asia/Kolkata"
            assert snapshot.data["calls"] == []
            assert sorted(a["name"] for a in snapshot.data["agents"]) == ["Asha Rao", "Ravi Kumar"]
            asha = device(snapshot, AGENT)
            assert (asha["available"], asha["verified"], asha["status"]) == (True, True, "free")
            assert asha["agent_status"] == "free" and asha["agent_call"] is None
            assert "callbridge live" in stream.comments
        # The same stream under the account's v3 path.
        async with live.stream(ACCOUNT_LIVE, live.harness.auth) as stream:
            assert stream.status == 200
            assert (await stream.next_event()).type == "snapshot"


async def test_call_events_follow_a_click_to_call_to_its_terminal_status(
    store: Store, clock: ManualClock
) -> None:
    async with live_app(store, clock) as live:
        h = live.harness
        h.phone(CUSTOMER, "answer", answer_after_s=2, hangup_after_s=5)
        async with live.stream(LIVE, h.auth) as stream:
            assert (await stream.next_event()).type == "snapshot"
            sid = await start_call(live)
            await h.advance(0)  # the sim reports the agent's phone ringing

            first = await stream.wait_for(lambda e: call_of(e, sid) is not None)
            call = call_of(first, sid)
            assert call is not None
            assert (call["direction"], call["from"], call["to"]) == ("outbound", AGENT, CUSTOMER)
            assert (call["state"], call["status"]) == ("active", None)
            assert call["phase"] in ("dialing", "ringing_from")
            assert call["legs"][0]["side"] == "from"
            assert call["start_ms"] == round(clock.now().timestamp() * 1000)

            busy = await stream.wait_for(
                lambda e: e.type == "agents" and device(e, AGENT)["status"] == "busy"
            )
            assert device(busy, AGENT)["active_call"] == sid
            assert device(busy, AGENT)["agent_status"] == "busy"
            assert device(busy, AGENT_2)["status"] == "free"

            await h.advance(1)  # the agent answers; the customer rings
            ringing = await stream.wait_for(
                lambda e: legs_of(e, sid) == {"from": "in-progress", "to": "ringing"}
            )
            assert ringing.data["call"]["phase"] == "ringing_to"

            await h.advance(2)  # the customer answers
            connected = await stream.wait_for(
                lambda e: (call_of(e, sid) or {}).get("phase") == "connected"
            )
            assert [leg["status"] for leg in connected.data["call"]["legs"]] == [
                "in-progress",
                "in-progress",
            ]

            await h.advance(5)  # the customer hangs up
            ended = await stream.wait_for(is_terminal(sid))
            final = ended.data["call"]
            assert (final["status"], final["phase"]) == ("completed", "completed")
            assert final["total_talk_time"] == 5
            assert final["total_duration"] == 8
            assert final["end_time"] is not None
            assert [leg["status"] for leg in final["legs"]] == ["completed", "completed"]

            free = await stream.wait_for(
                lambda e: e.type == "agents" and device(e, AGENT)["status"] == "free"
            )
            assert device(free, AGENT)["active_call"] is None

        # A new subscriber sees the call among the recently ended ones.
        async with live.stream(LIVE, h.auth) as stream:
            snapshot = await stream.next_event()
            [only] = snapshot.data["calls"]
            assert (only["sid"], only["state"], only["status"]) == (sid, "terminal", "completed")


async def test_unanswered_agent_ends_with_its_terminal_status(
    store: Store, clock: ManualClock
) -> None:
    async with live_app(store, clock) as live:
        h = live.harness
        h.phone(AGENT, "busy")
        async with live.stream(LIVE, h.auth) as stream:
            await stream.next_event()
            sid = await start_call(live)
            await h.advance(2)
            ended = await stream.wait_for(is_terminal(sid))
            assert ended.data["call"]["status"] == "from_leg_unanswered"
            assert [leg["side"] for leg in ended.data["call"]["legs"]] == ["from"]


async def test_snapshot_lists_active_and_recently_ended_calls(
    store: Store, clock: ManualClock
) -> None:
    async with live_app(store, clock) as live:
        h = live.harness
        h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=2)
        done = await start_call(live)
        await h.advance(5)
        assert (await h.call(done))["status"] == "completed"
        h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=None)
        talking = await start_call(live, AGENT_2)
        await h.advance(3)
        async with live.stream(LIVE, h.auth) as stream:
            snapshot = await stream.next_event()
            calls = {c["sid"]: c for c in snapshot.data["calls"]}
            assert calls[done]["state"] == "terminal"
            assert calls[done]["status"] == "completed"
            assert calls[talking]["state"] == "active"
            assert calls[talking]["phase"] == "connected"
            assert device(snapshot, AGENT_2)["active_call"] == talking
            assert device(snapshot, AGENT)["status"] == "free"


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        (LIVE, {}, 401, 1010),
        (LIVE, basic(KEY, "wrong"), 401, 1010),
        (ACCOUNT_LIVE, {}, 401, 1010),
        (ACCOUNT_LIVE, basic(KEY, "wrong"), 401, 1010),
        (ACCOUNT_LIVE, OTHER, 404, 1017),
    ],
)
async def test_stream_refuses_bad_credentials(
    store: Store,
    clock: ManualClock,
    path: str,
    headers: dict[str, str],
    status: int,
    code: int,
) -> None:
    async with live_app(store, clock) as live:
        r = await live.harness.client.get(path, headers=headers)
        assert r.status_code == status
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["response"]["error_data"]["code"] == code
        assert live.harness.services.extras.get(HUB_KEY) is None or not any(
            hub_count(live, account) for account in (ACCOUNT, "other")
        )


def hub_count(live: LiveApp, account: str) -> int:
    hub = live.harness.services.extras.get(HUB_KEY)
    return hub.subscriber_count(account) if isinstance(hub, LiveHub) else 0


async def test_another_accounts_calls_are_not_visible(store: Store, clock: ManualClock) -> None:
    async with live_app(store, clock) as live:
        h = live.harness
        h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=2)
        async with (
            live.stream(LIVE, OTHER) as other,
            live.stream(LIVE, h.auth) as mine,
        ):
            snapshot = await other.next_event()
            assert snapshot.data["account_sid"] == "other"
            assert snapshot.data["calls"] == [] and snapshot.data["agents"] == []
            await mine.next_event()
            sid = await start_call(live)
            await h.advance(5)
            await mine.wait_for(is_terminal(sid))
            with pytest.raises(TimeoutError):
                await other.wait_for(lambda e: e.type != "agents", timeout_s=0.5)
            assert sid not in other.body.decode()
            assert AGENT not in other.body.decode()
        async with live.stream(LIVE, OTHER) as other:
            snapshot = await other.next_event()
            assert snapshot.data["calls"] == []


async def test_stream_carries_no_secrets(store: Store, clock: ManualClock) -> None:
    async with live_app(store, clock) as live:
        h = live.harness
        h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=1)
        async with live.stream(LIVE, h.auth) as stream:
            await stream.next_event()
            sid = await start_call(live)
            await h.advance(4)
            await stream.wait_for(is_terminal(sid))
            text = stream.body.decode()
        for secret in (TOKEN, KEY, h.auth["Authorization"].split()[1]):
            assert secret not in text


async def test_slow_subscriber_is_dropped_and_calls_run_on(
    store: Store, clock: ManualClock
) -> None:
    async with live_app(store, clock) as live:
        h = live.harness
        hub = install_hub(live, queue_frames=3)
        h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=2)
        async with (
            live.stream(LIVE, h.auth, stall=True) as slow,
            live.stream(LIVE, h.auth) as fast,
        ):
            assert (await fast.next_event()).type == "snapshot"
            assert hub.subscriber_count(ACCOUNT) == 2
            sids = [await start_call(live), await start_call(live, AGENT_2)]
            for _ in range(6):
                await h.advance(1)
                await asyncio.sleep(0.05)  # let the pump deliver between steps
            for sid in sids:
                await fast.wait_for(is_terminal(sid))
                assert (await h.call(sid))["status"] == "completed"
            assert hub.dropped == 1
            assert hub.subscriber_count(ACCOUNT) == 1
            slow.release()
            closed = await slow.wait_for(lambda e: e.type == "closed")
            assert closed.data == {"reason": "slow consumer"}
            with pytest.raises(EOFError):
                await slow.next_event()
        await asyncio.sleep(0)
        assert hub.subscriber_count(ACCOUNT) == 0


async def test_closing_streams_ends_them_at_once(store: Store, clock: ManualClock) -> None:
    async with live_app(store, clock) as live:
        async with live.stream(LIVE, live.harness.auth) as stream:
            await stream.next_event()
            close_live_streams(live.app)
            closed = await stream.wait_for(lambda e: e.type == "closed", timeout_s=2.0)
            assert closed.data == {"reason": "server stopping"}
            with pytest.raises(EOFError):
                await stream.next_event(timeout_s=2.0)
        assert hub_count(live, ACCOUNT) == 0


async def test_subscribers_per_account_are_bounded(store: Store, clock: ManualClock) -> None:
    async with live_app(store, clock) as live:
        h = live.harness
        hub = install_hub(live, max_subscribers=2)
        async with live.stream(LIVE, h.auth) as first, live.stream(LIVE, h.auth):
            await first.next_event()
            r = await h.client.get(LIVE, headers=h.auth)
            assert r.status_code == 429
            assert r.json()["response"]["error_data"]["code"] == 10724
            assert r.headers["retry-after"] == "5"
            async with live.stream(LIVE, OTHER) as other:  # the bound is per account
                assert (await other.next_event()).type == "snapshot"
        assert hub.subscriber_count(ACCOUNT) == 0
        async with live.stream(LIVE, h.auth) as again:
            assert (await again.next_event()).type == "snapshot"


async def test_idle_stream_sends_keep_alive_comments(store: Store, clock: ManualClock) -> None:
    async with live_app(store, clock) as live:
        install_hub(live, keepalive_s=0.05)
        async with live.stream(LIVE, live.harness.auth) as stream:
            await stream.next_event()
            with pytest.raises(TimeoutError):
                await stream.wait_for(lambda e: e.type != "agents", timeout_s=0.3)
            assert "keep-alive" in stream.comments


async def test_device_turned_off_reaches_the_stream(store: Store, clock: ManualClock) -> None:
    async with live_app(store, clock) as live:
        h = live.harness
        install_hub(live, agent_refresh_s=0.05)
        async with live.stream(LIVE, h.auth) as stream:
            snapshot = await stream.next_event()
            user = next(a for a in snapshot.data["agents"] if a["name"] == "Ravi Kumar")
            [dev] = user["devices"]
            r = await h.client.put(
                f"/v2/accounts/{ACCOUNT}/users/{user['id']}/devices/{dev['id']}",
                json={"available": False},
                headers=h.auth,
            )
            assert r.status_code == 200, r.text
            off = await stream.wait_for(
                lambda e: e.type == "agents" and not device(e, AGENT_2)["available"]
            )
            assert device(off, AGENT_2)["agent_status"] == "off"


async def test_dashboard_page_is_self_contained_with_a_strict_policy(
    store: Store, clock: ManualClock
) -> None:
    async with live_app(store, clock) as live:
        r = await live.harness.client.get("/dashboard")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        html = r.text
        assert "<title>callbridge · live</title>" in html
        # No CDN, no external resource: every src/href is inline data.
        assert re.findall(r'(?:src|href)="([^"]*)"', html) == ["data:,"]
        assert "http://" not in html and "https://" not in html
        csp = r.headers["content-security-policy"]
        [script] = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"script-src 'sha256-{digest}'" in csp
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "/dashboard/live" in html
