"""Status callbacks of real click-to-calls, delivered by the app's worker to a real receiver:
Exotel's shapes in all three encodings, in order, signed; the delivery log and replay."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP

import pytest
from standardwebhooks import Webhook

from callbridge.clock import ManualClock
from callbridge.store.repo import Store
from callbridge.webhooks.worker import DeliveryWorker

from ..harness import ACCOUNT, CUSTOMER, Harness, running_app
from ..webhooks.helpers import Received, Receiver, Reply


@pytest.fixture
def clock() -> ManualClock:
    """Signatures carry the clock's time and receivers check it against theirs."""
    return ManualClock(start=datetime.now(UTC))


def assert_signed(secret: str, request: Received) -> None:
    """Check the Standard Webhooks signature with the reference library."""
    body = request.body if request.method == "POST" else b""
    headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
    if request.headers.get("content-type", "").startswith("application/json"):
        Webhook(secret).verify(body, headers)  # also checks the timestamp window
        return
    timestamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    expected = Webhook(secret).sign(headers["webhook-id"], timestamp, body.decode())
    assert expected in headers["webhook-signature"].split(" ")


async def deliver(h: Harness) -> int:
    worker: DeliveryWorker = h.services.extras["worker"]
    return await worker.drain()


async def secret_of(h: Harness) -> str:
    r = await h.client.get(f"/v3/accounts/{ACCOUNT}/webhook-secret", headers=h.auth)
    secret: str = r.json()["response"]["webhook_secret"]["current"]
    return secret


async def test_answered_then_terminal_in_every_encoding(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "answer", answer_after_s=2, hangup_after_s=20)
        callbacks = [
            {"event": "answered", "url": receiver.url("/json")},
            {"event": "terminal", "url": receiver.url("/json")},
            {
                "event": "terminal",
                "url": receiver.url("/form"),
                "content_type": "multipart/form-data",
            },
            {"event": "terminal", "url": receiver.url("/get?token=abc"), "method": "GET"},
        ]
        r = await h.create_call(status_callback=callbacks, custom_field="order-9")
        sid = r.json()["response"]["call_details"]["sid"]
        await h.advance(5)
        assert await deliver(h) == 1
        await h.advance(30)
        assert await deliver(h) == 3
        by_path = {}
        for request in receiver.requests:
            by_path.setdefault(request.path, []).append(request)
        answered, terminal = (json.loads(x.body) for x in by_path["/json"])
        assert answered["event_details"] == {"event_type": "answered"}
        assert answered["call_details"]["state"] == "active"
        assert answered["call_details"]["status"] is None
        assert terminal["event_details"] == {"event_type": "terminal"}
        details = terminal["call_details"]
        assert (details["sid"], details["state"], details["status"]) == (
            sid,
            "terminal",
            "completed",
        )
        assert details["total_talk_time"] == 20
        assert details["custom_field"] == "order-9"
        assert details == (await h.call(sid)) | {"updated_time": details["updated_time"]}

        form = by_path["/form"][0]
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + form.headers["content-type"].encode() + b"\r\n\r\n" + form.body
        )
        fields = {
            part.get_param("name", header="content-disposition"): part.get_content()
            for part in message.iter_parts()
        }
        assert json.loads(fields["event_details"]) == {"event_type": "terminal"}
        assert json.loads(fields["call_details"])["sid"] == sid

        get = by_path["/get"][0]
        assert get.method == "GET"
        assert get.query["token"] == ["abc"]
        assert json.loads(get.query["call_details"][0])["status"] == "completed"

        secret = await secret_of(h)
        for request in receiver.requests:
            assert len(request.event_sid) == 32
            assert request.headers["webhook-id"] == request.event_sid
            assert_signed(secret, request)


async def test_failed_deliveries_retry_and_show_in_the_log_then_replay(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "busy", answer_after_s=1)
        receiver.replies = [Reply(503), Reply(503)]
        r = await h.create_call(
            status_callback=[{"event": "terminal", "url": receiver.url("/hook")}]
        )
        sid = r.json()["response"]["call_details"]["sid"]
        await h.advance(5)
        await deliver(h)
        await h.advance(2.5)
        await deliver(h)
        await h.advance(11)
        await deliver(h)
        assert receiver.requests[0].event_sid == receiver.requests[-1].event_sid
        assert len(receiver.requests) == 3
        log = await h.client.get(f"/v3/accounts/{ACCOUNT}/calls/{sid}/callbacks", headers=h.auth)
        entries = log.json()["response"]["callbacks"]
        assert len(entries) == 1
        entry = entries[0]
        assert entry["status"] == "delivered"
        assert [a["status_code"] for a in entry["attempts"]] == [503, 503, 200]
        replay = await h.client.post(
            f"/v3/accounts/{ACCOUNT}/calls/{sid}/callbacks/{entry['id']}/replay", headers=h.auth
        )
        assert replay.json()["response"]["callback"]["status"] == "pending"
        await deliver(h)
        assert len(receiver.requests) == 4
        assert receiver.requests[-1].event_sid == receiver.requests[0].event_sid


async def test_secret_rotation_signs_with_both_secrets(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    async with running_app(store, clock) as h:
        old = await secret_of(h)
        rotated = await h.client.post(
            f"/v3/accounts/{ACCOUNT}/webhook-secret/rotate", headers=h.auth
        )
        new = rotated.json()["response"]["webhook_secret"]
        assert new["previous"] == old
        assert new["current"].startswith("whsec_") and new["current"] != old
        h.phone(CUSTOMER, "busy")
        await h.create_call(status_callback=[{"event": "terminal", "url": receiver.url()}])
        await h.advance(5)
        await deliver(h)
        request = receiver.requests[0]
        headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
        Webhook(old).verify(request.body, headers)
        Webhook(new["current"]).verify(request.body, headers)


async def test_v2_calls_get_callbacks_with_v2_names(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "no-answer")
        r = await h.client.post(
            f"/v2/accounts/{ACCOUNT}/calls",
            headers=h.auth,
            json={
                "from": {"user_contact_uri": "+919900000001"},
                "to": {"customer_contact_uri": CUSTOMER},
                "virtual_number": "+912241499102",
                "attempt_time_out": 10,
                "status_callback": [{"event": "terminal", "url": receiver.url("/v2")}],
            },
        )
        assert r.status_code == 200, r.text
        sid = r.json()["response"]["data"]["call_sid"]
        await h.advance(20)
        assert (await h.call(sid))["status"] == "to_leg_unanswered"
        assert await deliver(h) == 1
        body = json.loads(receiver.requests[0].body)
        assert body["event_details"] == {"event_type": "terminal"}
        details = body["call_details"]
        assert details["call_state"] == "terminal"
        assert details["call_status"] == "customer_unanswered"
        assert details["assigned_agent_details"]["user_name"] == "Asha Rao"
        assert details["customer_details"] == {"contact_uri": CUSTOMER, "status": "no-answer"}
        assert "sid" not in details
