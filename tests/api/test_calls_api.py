"""The v3 calls API surface: envelope, auth, validation errors naming the field, Exotel codes,
guards (body size, rate limit, idempotency)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from callbridge.api.idempotency import body_hash
from callbridge.clock import ManualClock
from callbridge.settings import Settings
from callbridge.store.repo import Store

from ..conftest import basic
from ..harness import ACCOUNT, AGENT, CUSTOMER, DEFAULT_CONFIG, EXOPHONE, running_app

URL = f"/v3/accounts/{ACCOUNT}/calls"


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "from": {"contact_uri": AGENT},
        "to": {"contact_uri": CUSTOMER},
        "virtual_number": EXOPHONE,
    }
    base.update(overrides)
    return base


def error_of(response: Any) -> tuple[int, int, str]:
    payload = response.json()
    assert payload["http_code"] == response.status_code
    assert payload["response"]["status"] == "failure"
    assert "call_details" not in payload["response"]
    data = payload["response"]["error_data"]
    return response.status_code, data["code"], data["message"]


async def test_success_envelope_matches_exotel(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.post(URL, json=body(custom_field="bilbo_test_call"), headers=h.auth)
        assert r.status_code == 200
        payload = r.json()
        assert re.fullmatch(r"[0-9a-f]{32}", payload["request_id"])
        assert r.headers["x-request-id"] == payload["request_id"]
        assert payload["method"] == "POST"
        assert payload["http_code"] == 200
        assert payload["metadata"] is None
        response = payload["response"]
        assert (response["code"], response["error_data"], response["status"]) == (
            200,
            None,
            "success",
        )
        details = response["call_details"]
        assert re.fullmatch(r"[0-9a-f]{32}", details["sid"])
        assert details["direction"] == "outbound"
        assert details["virtual_number"] == EXOPHONE
        assert details["custom_field"] == "bilbo_test_call"
        assert details["legs"] == f"/v3/accounts/{ACCOUNT}/calls/{details['sid']}/legs"
        assert details["created_time"] == "2026-01-15 12:00:00+05:30"
        assert details["end_time"] is None
        assert details["total_duration"] is None
        assert details["recordings"] is None


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, 1010),
        (basic("k_live_1", "wrong"), 1010),
        (basic("nobody", "t_live_1"), 1010),
        ({"Authorization": "Bearer abc"}, 1010),
        ({"Authorization": "Basic !!!"}, 1010),
    ],
)
async def test_bad_credentials_get_401_1010(
    store: Store, clock: ManualClock, headers: dict[str, str], code: int
) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.post(URL, json=body(), headers=headers)
        assert error_of(r)[:2] == (401, code)


async def test_another_accounts_path_is_404_1017(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.post("/v3/accounts/other/calls", json=body(), headers=h.auth)
        assert error_of(r)[:2] == (404, 1017)


async def test_another_accounts_call_is_404(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        sid = (await h.client.post(URL, json=body(), headers=h.auth)).json()["response"][
            "call_details"
        ]["sid"]
        other = basic("k_other", "t_other")
        r = await h.client.get(f"/v3/accounts/other/calls/{sid}", headers=other)
        assert error_of(r)[:2] == (404, 1021)
        r = await h.client.get(f"/v3/accounts/other/calls/{sid}/legs", headers=other)
        assert error_of(r)[:2] == (404, 10744)
        r = await h.client.get(f"{URL}/{'0' * 32}", headers=h.auth)
        assert error_of(r)[:2] == (404, 1021)


@pytest.mark.parametrize(
    ("payload", "status", "code", "field"),
    [
        ({"to": {"contact_uri": CUSTOMER}, "virtual_number": EXOPHONE}, 400, 400, "from"),
        (body(**{"from": {}}), 400, 400, "from.contact_uri"),
        (body(to={"contact_uri": 12345}), 400, 400, "to.contact_uri"),
        (body(to={"contact_uri": "not a number"}), 400, 400, "to.contact_uri"),
        (body(virtual_number="+919999999999"), 404, 10716, "virtual_number"),
        (body(recording={"record": True, "channels": "triple"}), 400, 1002, "recording.channels"),
        (body(recording={"record": True, "format": "wav"}), 400, 400, "recording.format"),
        (body(max_time_limit=0), 400, 400, "max_time_limit"),
        (body(max_time_limit=14401), 400, 400, "max_time_limit"),
        (body(max_time_limit="forever"), 400, 400, "max_time_limit"),
        (body(max_time_limit=True), 400, 400, "max_time_limit"),
        (body(max_time_limit="60"), 400, 400, "max_time_limit"),
        (body(max_time_limit=60.0), 400, 400, "max_time_limit"),
        (body(attempt_time_out=False), 400, 400, "attempt_time_out"),
        (
            body(**{"from": {"contact_uri": AGENT, "state_management": "yes"}}),
            400,
            400,
            "from.state_management",
        ),
        (
            body(**{"from": {"contact_uri": AGENT, "state_management": 1}}),
            400,
            400,
            "from.state_management",
        ),
        (body(recording={"record": "yes"}), 400, 400, "recording.record"),
        (body(to={"contact_uri": "sip:a@b@c"}), 400, 400, "to.contact_uri"),
        (body(to={"contact_uri": "sip:a\u0000@b"}), 400, 400, "to.contact_uri"),
        (body(attempt_time_out=-1), 400, 400, "attempt_time_out"),
        (body(custom_field="x" * 129), 400, 400, "custom_field"),
        (
            body(status_callback=[{"event": "ringing", "url": "http://127.0.0.1/"}]),
            400,
            400,
            "status_callback.0.event",
        ),
        (
            body(status_callback=[{"event": "terminal", "url": "ftp://127.0.0.1/"}]),
            400,
            400,
            "status_callback.0.url",
        ),
        (
            body(status_callback=[{"event": "terminal", "url": "http://u:p@127.0.0.1/"}]),
            400,
            400,
            "status_callback.0.url",
        ),
        (body(streaming={"url": "http://127.0.0.1/"}), 400, 400, "streaming.url"),
        (
            body(playback=[{"to": "everyone", "value": "http://127.0.0.1/a.wav"}]),
            400,
            400,
            "playback.0.to",
        ),
        (body(wait_audio_url="file:///etc/passwd"), 400, 400, "wait_audio_url"),
    ],
)
async def test_invalid_fields_are_named_in_the_error(
    store: Store, clock: ManualClock, payload: dict[str, Any], status: int, code: int, field: str
) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.post(URL, json=payload, headers=h.auth)
        got_status, got_code, message = error_of(r)
        assert (got_status, got_code) == (status, code)
        assert field in message


async def test_unknown_fields_are_ignored_and_string_booleans_accepted(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        payload = body(
            **{"from": {"contact_uri": "8516043026", "state_management": "true"}},
            recording={"record": "true", "channels": "dual", "format": "mp3-hq"},
            something_new={"a": 1},
        )
        r = await h.client.post(URL, json=payload, headers=h.auth)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'{"from":'])
async def test_malformed_bodies_get_400(store: Store, clock: ManualClock, raw: bytes) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.post(
            URL, content=raw, headers={**h.auth, "Content-Type": "application/json"}
        )
        assert error_of(r)[:2] == (400, 400)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"to": "+919800000001"}, "to"),
        ({"from": 5}, "from"),
        ({"recording": "yes"}, "recording"),
        ({"status_callback": ["http://example.com/hook"]}, "status_callback.0"),
        ({"streaming": ["wss://example.com/bot"]}, "streaming"),
    ],
)
async def test_a_scalar_where_an_object_belongs_names_the_field_not_a_class(
    store: Store, clock: ManualClock, overrides: dict[str, Any], field: str
) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.post(URL, json=body(**overrides), headers=h.auth)
        assert error_of(r) == (400, 400, f"{field}: must be a JSON object")


async def test_a_private_callback_url_is_refused_naming_the_setting_that_allows_it(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    settings = Settings(allow_private_urls=False, log_level="WARNING", data_dir=tmp_path)
    async with running_app(store, clock, settings=settings) as h:
        hook = [{"event": "terminal", "url": "http://127.0.0.1:9/hook"}]
        r = await h.client.post(URL, json=body(status_callback=hook), headers=h.auth)
        status, code, message = error_of(r)
        assert (status, code) == (400, 400)
        assert message.startswith("status_callback.0.url: URL host is a non-public address")
        assert "CALLBRIDGE_ALLOW_PRIVATE_URLS=true" in message
        assert "--allow-private-urls" in message


async def test_voip_not_allowed_gives_405_10712(store: Store, clock: ManualClock) -> None:
    config = DEFAULT_CONFIG.replace("allow_voip = true", "allow_voip = false")
    async with running_app(store, clock, config=config) as h:
        r = await h.client.post(
            URL,
            json=body(**{"from": {"contact_uri": "sip:agent7@pbx.example.com"}}),
            headers=h.auth,
        )
        assert error_of(r)[:2] == (405, 10712)


async def test_body_over_64_kib_gets_413(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        big = json.dumps(body(custom_field="x", padding="y" * (65 * 1024)))
        r = await h.client.post(
            URL, content=big, headers={**h.auth, "Content-Type": "application/json"}
        )
        assert error_of(r)[:2] == (413, 413)


async def test_rate_limit_gives_429_10724_with_retry_after(
    store: Store, clock: ManualClock
) -> None:
    config = DEFAULT_CONFIG.replace("rate_limit_per_minute = 0", "rate_limit_per_minute = 5")
    async with running_app(store, clock, config=config) as h:
        codes = []
        for _ in range(6):
            r = await h.client.get(f"{URL}/{'0' * 32}", headers=h.auth)
            codes.append(r.status_code)
        assert codes == [404] * 5 + [429]
        assert error_of(r)[:2] == (429, 10724)
        assert int(r.headers["retry-after"]) >= 1


async def test_idempotency_key_replays_and_guards(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        headers = {**h.auth, "Idempotency-Key": "order-77"}
        first = await h.client.post(URL, json=body(custom_field="a"), headers=headers)
        replay = await h.client.post(URL, json=body(custom_field="a"), headers=headers)
        assert first.status_code == replay.status_code == 200
        assert replay.headers["idempotent-replayed"] == "true"
        # The replayed body is the original's, and its header names the same request.
        assert replay.headers["x-request-id"] == first.json()["request_id"]
        assert "idempotent-replayed" not in first.headers
        assert replay.json() == first.json()
        other = await h.client.post(URL, json=body(custom_field="b"), headers=headers)
        assert error_of(other)[:2] == (422, 422)


async def test_idempotency_key_in_flight_gets_409(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        svc = h.services
        # A first request with another body is still in flight under this key.
        await svc.idempotency.begin(ACCOUNT, "slow-1", "hash-of-first", clock.now())
        payload = json.dumps(body()).encode()
        r = await h.client.post(
            URL,
            content=payload,
            headers={**h.auth, "Idempotency-Key": "slow-1", "Content-Type": "application/json"},
        )
        assert error_of(r)[:2] == (422, 422)
        # The same body is still in flight under this key.
        await svc.idempotency.begin(ACCOUNT, "slow-2", body_hash(payload), clock.now())
        r = await h.client.post(
            URL,
            content=payload,
            headers={**h.auth, "Idempotency-Key": "slow-2", "Content-Type": "application/json"},
        )
        assert error_of(r)[:2] == (409, 409)


async def test_concurrent_requests_for_one_agent_admit_exactly_one(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        results = await asyncio.gather(
            *(h.client.post(URL, json=body(), headers=h.auth) for _ in range(40))
        )
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] + [409] * 39
        assert {
            r.json()["response"]["error_data"]["code"] for r in results if r.status_code == 409
        } == {10706}


async def test_unknown_route_and_method_use_the_envelope(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.get("/v3/nothing", headers=h.auth)
        assert error_of(r)[:2] == (404, 404)
        r = await h.client.delete(URL, headers=h.auth)
        assert error_of(r)[:2] == (405, 405)
        for path in (f"{URL}/some_sid", f"{URL}/some_sid/legs"):
            r = await h.client.put(path, headers=h.auth, json={})
            assert error_of(r)[:2] == (405, 405)


async def test_health_and_readiness(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        assert (await h.client.get("/healthz")).status_code == 200
        r = await h.client.get("/readyz")
        assert r.status_code == 200
        assert r.json()["database"] is True


async def test_internal_errors_are_500_1100_without_internals(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(allow_private_urls=True, log_level="CRITICAL")
    async with running_app(store, clock, settings=settings) as h:

        async def explode(*_: Any, **__: Any) -> None:
            raise RuntimeError("secret internals t_live_1")

        monkeypatch.setitem(h.services.engine.writer._kinds, "admit", explode)
        r = await h.client.post(URL, json=body(), headers=h.auth)
        status, code, _ = error_of(r)
        assert (status, code) == (500, 1100)
        assert "secret" not in r.text
        assert "Traceback" not in r.text
        monkeypatch.undo()
        # Nothing was left half-done: the agent's busy mark was rolled back with the call.
        assert (await h.client.post(URL, json=body(), headers=h.auth)).status_code == 200


async def test_missing_account_sid_is_400_1001(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        for path in ("/v3/accounts//calls", "/v3/accounts/calls"):
            r = await h.client.post(path, json=body(), headers=h.auth)
            assert error_of(r)[:2] == (400, 1001)


async def test_deeply_nested_body_is_400_not_500(store: Store, clock: ManualClock) -> None:
    nested = '{"a":' * 3000 + "1" + "}" * 3000
    async with running_app(store, clock) as h:
        r = await h.client.post(
            URL, content=nested, headers={**h.auth, "Content-Type": "application/json"}
        )
        status, code, message = error_of(r)
        assert (status, code) == (400, 400)
        assert "nested too deeply" in message


@pytest.mark.parametrize("flag", [True, "true", "TRUE", " false "])
async def test_state_management_takes_booleans_and_their_strings(
    store: Store, clock: ManualClock, flag: Any
) -> None:
    async with running_app(store, clock) as h:
        payload = body(**{"from": {"contact_uri": "+919811000135", "state_management": flag}})
        r = await h.client.post(URL, json=payload, headers=h.auth)
        assert r.status_code == 200
        again = await h.client.post(URL, json=payload, headers=h.auth)
        managed = flag is True or flag.strip().lower() == "true"
        assert again.status_code == (409 if managed else 200)


async def test_custom_field_is_echoed_exactly(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        value = '  {"crm": 7}\n'
        r = await h.client.post(URL, json=body(custom_field=value), headers=h.auth)
        assert r.json()["response"]["call_details"]["custom_field"] == value


@pytest.mark.parametrize(
    "path",
    [
        "/v3/accounts//calls/0123456789abcdef0123456789abcdef",
        "/v3/accounts//calls/0123456789abcdef0123456789abcdef/legs",
        "/v2/accounts//users",
        "/v2/accounts//users/5",
    ],
)
async def test_paths_without_an_account_sid_are_400_1001(
    store: Store, clock: ManualClock, path: str
) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.get(path, headers=h.auth)
        assert error_of(r)[:2] == (400, 1001)


async def test_plain_json_responses_carry_a_request_id(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        for path in ("/healthz", "/readyz"):
            r = await h.client.get(path)
            assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


async def test_nul_characters_are_400_before_any_database_work(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.post(URL, json=body(custom_field="a\u0000b"), headers=h.auth)
        status, code, message = error_of(r)
        assert (status, code) == (400, 400) and message.startswith("custom_field: NUL")
        r = await h.client.get(f"{URL}/abc%00def", headers=h.auth)
        assert error_of(r)[:2] == (400, 400)
        r = await h.client.get("/v2/accounts/acme/users?email=a%00b@x.com", headers=h.auth)
        assert error_of(r)[:2] == (400, 400)
