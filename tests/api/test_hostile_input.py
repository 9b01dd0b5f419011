"""Hostile input answers 400 (or 404 for an id no row can have) in the Exotel envelope, with a
message naming the field: never a 5xx. Runs on SQLite and PostgreSQL (the int32 class only
shows on PostgreSQL)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..harness import ACCOUNT, AGENT, CUSTOMER, EXOPHONE, Harness, running_app

HUGE = "1" * 5000
BASE_CALL: dict[str, Any] = {
    "from": {"contact_uri": AGENT},
    "to": {"contact_uri": CUSTOMER},
    "virtual_number": EXOPHONE,
}
CALLS = f"/v3/accounts/{ACCOUNT}/calls"


@pytest.fixture
async def app(store: Store, clock: ManualClock) -> AsyncIterator[Harness]:
    async with running_app(store, clock) as harness:
        yield harness


async def send(app: Harness, method: str, path: str, body: str | None = None) -> dict[str, Any]:
    headers = {**app.auth, "Content-Type": "application/json"}
    r = await app.client.request(method, path, content=body, headers=headers)
    assert r.status_code < 500, r.text
    envelope: dict[str, Any] = r.json()
    assert envelope["http_code"] == r.status_code
    assert envelope["response"]["status"] == "failure"
    return envelope


def message(envelope: dict[str, Any]) -> str:
    text: str = envelope["response"]["error_data"]["message"]
    return text


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        (
            "POST",
            CALLS,
            json.dumps(BASE_CALL)[:-1] + f', "max_time_limit": {HUGE}}}',
            "max_time_limit",
        ),
        ("POST", CALLS, '{"from": {"contact_uri": -' + HUGE + "}}", "from.contact_uri"),
        ("POST", f"/v2/accounts/{ACCOUNT}/users", '{"first_name": ' + HUGE + "}", "first_name"),
        (
            "POST",
            f"/v2/accounts/{ACCOUNT}/groups",
            '{"name": "g", "user_ids": [' + HUGE + "]}",
            "user_ids.0",
        ),
        ("PUT", "/sim/v1/numbers/+919800000001", '{"answer_after": ' + HUGE + "}", "answer_after"),
        ("PUT", "/sim/v1/numbers/+919800000001", '{"answer_after": 1e400}', "answer_after"),
        ("PUT", "/sim/v1/numbers/+919800000001", '{"hangup_after": NaN}', "hangup_after"),
        ("POST", "/sim/v1/incoming", '{"from": "\\ud800", "to": "x"}', "from"),
        ("POST", f"/v2/accounts/{ACCOUNT}/flows", '{"name": "f\\u0000"}', "name"),
    ],
)
async def test_unreadable_json_values_answer_400_naming_the_field(
    app: Harness, method: str, path: str, body: str, field: str
) -> None:
    envelope = await send(app, method, path, body)
    assert envelope["http_code"] == 400
    assert message(envelope).startswith(f"{field}: ")


@pytest.mark.parametrize("path", [CALLS, f"/v2/accounts/{ACCOUNT}/users", "/sim/v1/incoming"])
async def test_a_body_that_is_not_utf8_answers_400(app: Harness, path: str) -> None:
    headers = {**app.auth, "Content-Type": "application/json"}
    r = await app.client.post(path, content=b'{"name": "\xff"}', headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["response"]["error_data"]["message"] == "request body is not valid UTF-8"


BAD_URLS = {
    "streaming.url": [
        "wss://example.com:99999/bot",
        "ws://8.8.8.8:-1/x",
        "ws://[::1/x",
        "ws://user:pw@[::1/x",
        "ws://127.0.0.1:0/x",
        "ws://127.0.0.1/x?sample-rate=%C2%B2",
        "ws://127.0.0.1/x?sample-rate=\u00b2",
    ],
    "status_callback.0.url": ["https://example.com:99999/cb", "http://[::1/cb", "http://h:-1/"],
    "wait_audio_url": ["http://8.8.8.8:-1/a.wav", "http://[::1/a.wav"],
    "playback.0.value": ["https://example.com:70000/a.wav", "http://[fe80::1/a.wav"],
}


async def test_malformed_click_to_call_urls_answer_400_naming_the_field(app: Harness) -> None:
    for place, urls in BAD_URLS.items():
        for url in urls:
            body: dict[str, Any] = dict(BASE_CALL)
            if place == "streaming.url":
                body["streaming"] = {"url": url}
            elif place == "status_callback.0.url":
                body["status_callback"] = [{"event": "terminal", "url": url}]
            elif place == "playback.0.value":
                body["playback"] = [{"value": url}]
            else:
                body[place] = url
            envelope = await send(app, "POST", CALLS, json.dumps(body))
            assert envelope["http_code"] == 400, (url, envelope)
            assert message(envelope).startswith(f"{place}: "), (url, envelope)
            assert "pw" not in message(envelope)


async def test_malformed_v2_call_urls_answer_400_naming_the_field(app: Harness) -> None:
    base = {
        "from": {"user_contact_uri": AGENT},
        "to": {"customer_contact_uri": CUSTOMER},
        "virtual_number": EXOPHONE,
    }
    for place in ("status_callback.0.url", "wait_audio_url"):
        for url in BAD_URLS[place]:
            body: dict[str, Any] = dict(base)
            if place == "wait_audio_url":
                body[place] = url
            else:
                body["status_callback"] = url  # the v2 single-URL form
            path = f"/v2/accounts/{ACCOUNT}/calls"
            envelope = await send(app, "POST", path, json.dumps(body))
            assert envelope["http_code"] == 400, (url, envelope)
            assert message(envelope).startswith(f"{place}: "), (url, envelope)


async def test_malformed_flow_urls_answer_400_naming_the_field(app: Harness) -> None:
    fields = ["connect.url", "connect.wait_audio_url", "no_agent.message_url"]
    fields += ["no_agent.hold_audio_url", "status_callback.0.url"]
    for field in fields:
        for url in ["https://example.com:99999/x", "http://[::1/x", "http://h:-1/"]:
            step, name = field.split(".", 1)
            part: Any = (
                [{"event": "terminal", "url": url}] if step == "status_callback" else {name: url}
            )
            body = {"name": "dyn", step: part}
            envelope = await send(app, "POST", f"/v2/accounts/{ACCOUNT}/flows", json.dumps(body))
            assert envelope["http_code"] == 400, (field, url, envelope)
            assert message(envelope).split(":")[0] in (field, field.replace(".0.", "[0].")), (
                envelope
            )


HOSTILE_IDS = ["%C2%B2", "1" * 30, HUGE, "123456789012", "%EF%BC%91", "1_0", "-1", "0", "%20"]
ID_ROUTES = [
    ("POST", "/v3/accounts/acme/calls/" + "a" * 32 + "/callbacks/{id}/replay"),
    ("GET", "/v2/accounts/acme/groups/{id}"),
    ("PUT", "/v2/accounts/acme/groups/{id}"),
    ("DELETE", "/v2/accounts/acme/groups/{id}"),
    ("GET", "/v2/accounts/acme/groups/{id}/users"),
    ("POST", "/v2/accounts/acme/groups/{id}/users"),
    ("DELETE", "/v2/accounts/acme/groups/{id}/users/u1"),
    ("GET", "/v2/accounts/acme/users/{id}"),
    ("PUT", "/v2/accounts/acme/users/{id}"),
    ("DELETE", "/v2/accounts/acme/users/{id}"),
    ("GET", "/v2/accounts/acme/users/{id}/devices/{id}"),
    ("PUT", "/v2/accounts/acme/users/{id}/devices/{id}"),
    ("GET", "/v2/accounts/acme/users/{id}/devices/{id}/verification"),
    ("GET", "/v2/accounts/acme/flows/{id}"),
    ("DELETE", "/v2/accounts/acme/flows/{id}"),
    ("GET", "/v2/accounts/acme/exophones/{id}"),
    ("DELETE", "/v2/accounts/acme/exophones/{id}"),
    ("GET", "/v3/accounts/acme/calls/{id}"),
    ("GET", "/v3/accounts/acme/calls/{id}/legs"),
    ("GET", "/v3/accounts/acme/calls/{id}/callbacks"),
    ("GET", "/v2/accounts/acme/calls/{id}"),
    ("GET", "/v3/accounts/acme/recordings/{id}.mp3"),
    ("POST", "/v3/accounts/acme/recordings/{id}/links"),
]


async def test_hostile_path_ids_answer_404_or_400_on_every_id_route(app: Harness) -> None:
    body = '{"name": "renamed", "user_ids": ["u1"], "first_name": "A", "available": true}'
    for method, path in ID_ROUTES:
        for raw in HOSTILE_IDS:
            envelope = await send(app, method, path.replace("{id}", raw), body)
            assert envelope["http_code"] in (400, 404), (method, path, raw, envelope)


async def test_group_id_beyond_int32_is_not_found_not_a_server_error(app: Harness) -> None:
    envelope = await send(app, "GET", f"/v2/accounts/{ACCOUNT}/groups/123456789012")
    assert envelope["http_code"] == 404
    flow = {"name": "f", "connect": {"destinations": [{"group_id": 123456789012}]}}
    envelope = await send(app, "POST", f"/v2/accounts/{ACCOUNT}/flows", json.dumps(flow))
    assert envelope["http_code"] == 400
    assert message(envelope).startswith("connect.destinations.0.group_id: ")


@pytest.mark.parametrize(
    "query",
    [
        "/v3/accounts/acme/calls?limit=" + HUGE,
        "/v3/accounts/acme/calls?limit=%C2%B2",
        "/v3/accounts/acme/calls?limit=1_0",
        "/v2/accounts/acme/users?offset=99999999999",
        "/v2/accounts/acme/users?limit=" + HUGE,
        "/v2/accounts/acme/groups?offset=-1",
        "/v2/accounts/acme/flows?limit=%EF%BC%91",
        "/v2/accounts/acme/exophones?offset=" + "9" * 30,
    ],
)
async def test_hostile_query_integers_answer_400_naming_the_parameter(
    app: Harness, query: str
) -> None:
    envelope = await send(app, "GET", query)
    assert envelope["http_code"] == 400
    name = query.split("?")[1].split("=")[0]
    assert message(envelope).startswith(f"{name} must be")


@pytest.mark.parametrize(
    "credentials", ["k\x00ey:t", "k_live_1:t\x00", "\x00:x", "k" * 5000 + ":t"]
)
async def test_hostile_basic_credentials_answer_401(app: Harness, credentials: str) -> None:
    token = base64.b64encode(credentials.encode()).decode()
    r = await app.client.get(CALLS, headers={"Authorization": f"Basic {token}"})
    assert r.status_code == 401, r.text
    assert r.json()["response"]["error_data"]["code"] == 1010
