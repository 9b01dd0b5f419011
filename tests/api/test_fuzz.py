"""Fuzzing a real `callbridge serve` (sim driver, a real SQLite file, and PostgreSQL when
configured): schemathesis generates valid and invalid requests for every JSON operation in
`/openapi.json`, some on ids that exist, plus hostile paths for every route that takes an id;
not one answers 5xx, and every answer matches the documented schema."""

from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup

from ..conftest import PG_URL, basic
from ..harness import AGENT, CUSTOMER, DEFAULT_CONFIG, EXOPHONE
from ..users.servers import Server, shared_database

AUTH = basic("k_live_1", "t_live_1")
EXAMPLES_PER_MODE = {"sqlite": 27, "postgresql": 10}
"""Generated requests per operation and mode (valid, invalid), at most: over 2,000 on SQLite.
PostgreSQL gets fewer: what only it refuses (integers past a column's range, text past a
column's length) shows within a few examples per operation."""
STREAMS = {"/dashboard/live", "/v3/accounts/{account_sid}/live"}
"""Server-Sent-Event streams never end: they are not fuzzed (their errors are tested below)."""
HOSTILE_SEGMENTS = [
    "%C2%B2",
    "1" * 30,
    "1" * 5000,
    "123456789012",
    "-1",
    "0",
    "%EF%BC%91",
    "%00",
    "%FF%FE",
    "%ED%A0%80",
    "%C0%80",
    "..",
    "a" * 300,
    "%20",
    "x%2Fy",
]

HOSTILE_CREDENTIALS = [
    {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    for raw in (b"k\x00:t", b"\xff\xfe:t", b"k_live_1:" + b"t" * 5000, b":", b"nocolon")
] + [{"Authorization": "Basic %%%"}, {"Authorization": "Bearer x"}, {"Authorization": "Basic"}]


@dataclass
class Fuzzed:
    server: Server
    backend: str
    ids: dict[str, str]
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    schema_errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


def _backends() -> list[str]:
    return ["sqlite", "postgresql"] if PG_URL else ["sqlite"]


def _wait_ready(server: Server, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.process is not None and server.process.poll() is None, server.log_tail()
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not ready: {server.log_tail()}")


@pytest.fixture(params=_backends())
def fuzzed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fuzzed]:
    config = tmp_path / "callbridge.toml"
    config.write_text(DEFAULT_CONFIG)
    with shared_database(request.param, tmp_path) as url:
        server = Server(
            "fuzz",
            url,
            tmp_path,
            config=config,
            env={
                "CALLBRIDGE_AUTH_MAX_FAILURES_PER_ADDRESS": "1000000",
                "CALLBRIDGE_AUTH_MAX_FAILURES_PER_KEY": "1000000",
            },
        )
        server.start()
        try:
            _wait_ready(server)
            yield Fuzzed(server, request.param, _seed(server.base_url))
        finally:
            server.kill(15)


def _seed(base: str) -> dict[str, str]:
    """Real resources, so that some generated requests reach past the 404s."""
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        users = client.get("/v2/accounts/acme/users?fields=devices").json()["response"]
        user = users[0]["data"]
        group = client.post(
            "/v2/accounts/acme/groups", json={"name": "fuzz", "user_ids": [user["id"]]}
        ).json()["response"]["data"]
        flow = client.post(
            "/v2/accounts/acme/flows",
            json={"name": "fuzz", "connect": {"destinations": [{"group_id": group["id"]}]}},
        ).json()["response"]["data"]
        call = client.post(
            "/v3/accounts/acme/calls",
            json={
                "from": {"contact_uri": AGENT},
                "to": {"contact_uri": CUSTOMER},
                "virtual_number": EXOPHONE,
                "status_callback": [{"event": "terminal", "url": "http://127.0.0.1:9/cb"}],
            },
        ).json()["response"]["call_details"]
    return {
        "account_sid": "acme",
        "call_sid": call["sid"],
        "user_id": user["id"],
        "device_id": user["devices"][0]["id"],
        "group_id": str(group["id"]),
        "flow_id": flow["id"],
        "ref": EXOPHONE,
        "contact_uri": CUSTOMER,
        "delivery_id": "1",
        "recording_id": "0" * 32,
    }


def _record(fuzzed: Fuzzed, case: Any, response: requests.Response) -> None:
    fuzzed.statuses[response.status_code] += 1
    label = f"{case.method} {case.formatted_path} -> {response.status_code}"
    if response.status_code >= 500:
        fuzzed.server_errors.append(f"{label}: {response.text[:300]}")
        return
    try:
        case.operation.validate_response(response)
    except FailureGroup as exc:
        fuzzed.schema_errors.append(f"{label}: {str(exc)[:300]}")


def test_generated_requests_never_get_a_server_error(fuzzed: Fuzzed) -> None:
    base = fuzzed.server.base_url
    document = httpx.get(f"{base}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzzable = [op for op in operations if op.path not in STREAMS]
    assert len(fuzzable) >= 45
    with requests.Session() as session:
        _fuzz(fuzzed, base, fuzzable, session)
    assert not fuzzed.server_errors, fuzzed.server_errors[:20]
    assert not fuzzed.schema_errors, fuzzed.schema_errors[:20]
    assert fuzzed.requests >= (2000 if fuzzed.backend == "sqlite" else 700), fuzzed.statuses
    assert 200 in fuzzed.statuses and 400 in fuzzed.statuses and 404 in fuzzed.statuses
    # Nothing failed behind the answers either (an engine task, a callback, a stream).
    log = fuzzed.server.log_tail(2_000_000)
    assert '"level":"error"' not in log, log[-3000:]


def _fuzz(fuzzed: Fuzzed, base: str, operations: list[Any], session: requests.Session) -> None:
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(mode, path_parameters={"account_sid": "acme"})

            @given(case=strategy, real=st.booleans())
            @settings(
                max_examples=EXAMPLES_PER_MODE[fuzzed.backend],
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any, real: bool) -> None:
                if real:
                    for name in case.path_parameters or {}:
                        if name in fuzzed.ids:
                            case.path_parameters[name] = fuzzed.ids[name]
                response = case.call(base_url=base, session=session, headers=AUTH, timeout=15)
                _record(fuzzed, case, response)

            try:
                run()
            except Unsatisfiable:
                # Nothing of this operation can be made invalid (no parameters, no body).
                assert mode is GenerationMode.NEGATIVE, operation.label


def test_hostile_paths_and_bodies_on_every_route_never_get_a_server_error(
    fuzzed: Fuzzed,
) -> None:
    base = fuzzed.server.base_url
    document = httpx.get(f"{base}/openapi.json", timeout=10).json()
    bodies = [
        b"",
        b"null",
        b"[]",
        b"{",
        b'{"a": ' + b"1" * 5000 + b"}",
        b'{"a": 1e999, "b": NaN, "c": -Infinity}',
        b'{"name": "\\ud800", "first_name": "\\u0000"}',
        b"[" * 5000 + b"]" * 5000,
        json.dumps({"from": {"contact_uri": [1]}, "to": 5, "virtual_number": {}}).encode(),
        b'{"name": "\xff"}',  # not UTF-8
        '{"name": "\ud800"}'.encode("utf-8", "surrogatepass"),  # a lone surrogate, encoded
    ]
    sent = 0
    errors: list[str] = []
    with httpx.Client(base_url=base, headers=AUTH, timeout=15) as client:
        for path, operations in document["paths"].items():
            for method in operations:
                targets = [path.replace("{account_sid}", "acme")]
                for segment in HOSTILE_SEGMENTS:
                    targets.append(_fill(path, segment, fuzzed.ids))
                for target in targets:
                    if path in STREAMS and target == targets[0]:
                        continue  # a live stream with valid ids would never end
                    for body in bodies if method in ("post", "put") else [b""]:
                        r = client.request(
                            method.upper(),
                            target,
                            content=body,
                            headers={"Content-Type": "application/json"},
                        )
                        sent += 1
                        if r.status_code >= 500:
                            shown = f"{method} {target[:120]} {body[:40]!r}"
                            errors.append(f"{shown} -> {r.text[:200]}")
                for credentials in HOSTILE_CREDENTIALS:
                    r = client.request(method.upper(), targets[0], headers=credentials)
                    sent += 1
                    if r.status_code >= 500:
                        errors.append(f"{method} {targets[0]} {credentials} -> {r.text[:200]}")
    assert not errors, errors[:20]
    assert sent >= 1000
    log = fuzzed.server.log_tail(2_000_000)
    assert '"level":"error"' not in log, log[-3000:]


def _fill(path: str, segment: str, ids: dict[str, str]) -> str:
    """The path with its last parameter hostile and the others real."""
    names = re.findall(r"{([^}]+)}", path)
    filled = path
    for name in names[:-1]:
        filled = filled.replace("{" + name + "}", ids.get(name, "x"))
    if names:
        last = names[-1]
        filled = filled.replace("{" + last + "}", segment)
    return filled.replace("{account_sid}", "acme")
