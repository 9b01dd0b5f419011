"""v1 status callbacks of real calls, through the durable signed outbox to a real receiver:
every terminal outcome in JSON and in multipart form, Exotel's v1 field names, the answered
event, and the four-field callback of a request that subscribes to no event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..engine.test_callbacks import assert_signed, deliver, secret_of
from ..harness import ACCOUNT, AGENT, CUSTOMER, EXOPHONE, Harness, running_app
from ..webhooks.helpers import Received, Receiver
from .support import call_sid, connect, form_fields


@pytest.fixture
def clock() -> ManualClock:
    """Signatures carry the clock's time and receivers check it against theirs."""
    return ManualClock(start=datetime.now(UTC))


@dataclass(frozen=True)
class Outcome:
    name: str
    agent: dict[str, Any]
    customer: dict[str, Any]
    status: str
    leg1: str
    leg2: str | None
    talk_s: int


OUTCOMES = [
    Outcome(
        "completed",
        {},
        {"outcome": "answer", "hangup_after_s": 4},
        "completed",
        "completed",
        "completed",
        4,
    ),
    Outcome("agent_busy", {"outcome": "busy"}, {}, "busy", "busy", None, 0),
    Outcome("agent_rejects", {"outcome": "reject"}, {}, "busy", "busy", None, 0),
    Outcome("agent_no_answer", {"outcome": "no-answer"}, {}, "no-answer", "no-answer", None, 0),
    Outcome("agent_unreachable", {"outcome": "unreachable"}, {}, "failed", "failed", None, 0),
    Outcome("customer_busy", {}, {"outcome": "busy"}, "busy", "completed", "busy", 0),
    Outcome(
        "customer_no_answer", {}, {"outcome": "no-answer"}, "no-answer", "completed", "no-answer", 0
    ),
    Outcome(
        "customer_switched_off", {}, {"outcome": "switched-off"}, "failed", "completed", "failed", 0
    ),
    Outcome(
        "agent_hangs_up_first",
        {"outcome": "answer", "hangup_after_s": 3},
        {"outcome": "manual"},
        "no-answer",
        "completed",
        "canceled",
        0,
    ),
]


def _document(request: Received) -> dict[str, Any]:
    """The callback as the receiver would read it, in either encoding."""
    content_type = request.headers["content-type"]
    if content_type == "application/json":
        body: dict[str, Any] = json.loads(request.body)
        return body
    assert content_type.startswith("multipart/form-data; boundary=")
    return dict(form_fields(content_type, request.body))


def _legs(document: dict[str, Any]) -> list[dict[str, Any]]:
    """`Legs` from JSON, or rebuilt from the form's `Legs[0][Status]` fields."""
    if "Legs" in document:
        legs: list[dict[str, Any]] = document["Legs"]
        return legs
    rebuilt: dict[int, dict[str, Any]] = {}
    for key, value in document.items():
        if key.startswith("Legs["):
            index, name = key[5:-1].split("][")
            rebuilt.setdefault(int(index), {})[name] = int(value) if value.isdigit() else value
    return [rebuilt[i] for i in sorted(rebuilt)]


async def _run(h: Harness, outcome: Outcome, **fields: Any) -> str:
    h.phone(AGENT, **({"outcome": "answer"} | outcome.agent))
    h.phone(CUSTOMER, **({"outcome": "answer"} | outcome.customer))
    sid = call_sid(await connect(h, TimeOut="10", CustomField="crm-7", **fields))
    await h.advance(40)
    await deliver(h)
    return sid


@pytest.mark.parametrize("outcome", OUTCOMES, ids=[o.name for o in OUTCOMES])
async def test_terminal_callback_reports_each_outcome_with_v1_fields(
    store: Store, clock: ManualClock, receiver: Receiver, outcome: Outcome
) -> None:
    async with running_app(store, clock) as h:
        for content_type in ("application/json", "multipart/form-data"):
            receiver.requests.clear()
            await _check_outcome(h, receiver, outcome, content_type)


async def _check_outcome(
    h: Harness, receiver: Receiver, outcome: Outcome, content_type: str
) -> None:
    sid = await _run(
        h,
        outcome,
        StatusCallback=receiver.url("/v1cb?crm=7"),
        StatusCallbackContentType=content_type,
        **{"StatusCallbackEvents[]": "terminal"},
    )
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.method == "POST" and request.path == "/v1cb"
    assert request.query == {"crm": ["7"]}
    assert_signed(await secret_of(h), request)
    document = _document(request)
    legs = _legs(document)
    expected = {
        "CallSid": sid,
        "EventType": "terminal",
        "Status": outcome.status,
        "From": AGENT,
        "To": CUSTOMER,
        "PhoneNumberSid": EXOPHONE,
        "Direction": "outbound-api",
        "CustomField": "crm-7",
        "Leg1Status": outcome.leg1,
    }
    for key, value in expected.items():
        assert document[key] == value, key
    # A form field carries an empty string where JSON has null.
    absent = None if content_type == "application/json" else ""
    assert document["Leg2Status"] == (outcome.leg2 if outcome.leg2 is not None else absent)
    assert int(document["ConversationDuration"]) == outcome.talk_s
    assert [leg["Status"] for leg in legs] == [outcome.leg1, outcome.leg2][
        : 1 if outcome.leg2 is None else 2
    ]
    assert document["RecordingUrl"] == absent
    for key in ("DateCreated", "DateUpdated", "StartTime", "EndTime"):
        assert len(document[key]) == 19, key
    v1 = await h.client.get(f"/v1/Accounts/{ACCOUNT}/Calls/{sid}.json", headers=h.auth)
    assert v1.json()["Call"]["Status"] == outcome.status


async def test_answered_then_terminal_when_both_are_subscribed(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    async with running_app(store, clock) as h:
        sid = await _run(
            h,
            OUTCOMES[0],
            StatusCallback=receiver.url("/v1cb"),
            StatusCallbackContentType="application/json",
            **{"StatusCallbackEvents[0]": "terminal", "StatusCallbackEvents[1]": "answered"},
        )
        answered, terminal = (json.loads(r.body) for r in receiver.requests)
        assert (answered["EventType"], answered["Status"]) == ("answered", "in-progress")
        assert answered["Leg2Status"] == "in-progress" and answered["EndTime"] is None
        assert (terminal["EventType"], terminal["Status"], terminal["CallSid"]) == (
            "terminal",
            "completed",
            sid,
        )


async def test_without_events_exotel_posts_four_fields_once_as_a_form(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    async with running_app(store, clock) as h:
        sid = await _run(h, OUTCOMES[5], StatusCallback=receiver.url("/basic"))
        [request] = receiver.requests
        fields = form_fields(request.headers["content-type"], request.body)
        assert set(fields) == {"CallSid", "Status", "RecordingUrl", "DateUpdated"}
        assert (fields["CallSid"], fields["Status"], fields["RecordingUrl"]) == (sid, "busy", "")
