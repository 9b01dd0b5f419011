"""`callbridge listen`: callbacks decoded from every encoding the server sends, signatures
checked with the project's own Standard Webhooks code, answers, and one-line CLI errors."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from callbridge.domain.callbacks import build_payload, encode_request
from callbridge.listen import MAX_BODY_BYTES, CallbackListener, check_signature, decode_payload
from callbridge.webhooks.signing import new_secret, signature_headers

CALLBRIDGE = Path(sys.executable).parent / "callbridge"
NOW = 1_767_000_000
DETAILS = {"sid": "a" * 32, "status": "completed", "state": "terminal", "total_talk_time": 8}
PAYLOAD = build_payload("terminal", DETAILS)


@pytest.mark.parametrize(
    ("method", "content_type"),
    [("POST", "application/json"), ("POST", "multipart/form-data"), ("GET", "application/json")],
)
def test_every_encoding_decodes_to_the_same_payload(method: str, content_type: str) -> None:
    encoded = encode_request(PAYLOAD, method, content_type)
    query = str(httpx.QueryParams(encoded.params))
    assert decode_payload(method, encoded.content_type or "", encoded.body, query) == PAYLOAD


def test_a_body_that_is_not_json_is_shown_as_text() -> None:
    assert decode_payload("POST", "text/plain", b"hello", "") == {"body": "hello"}


def test_signatures_are_valid_invalid_unsigned_or_not_checked() -> None:
    secret, other = new_secret(), new_secret()
    body = json.dumps(PAYLOAD).encode()
    headers = signature_headers(secret, "evt_1", NOW, body)
    assert check_signature([secret], headers, body, now=NOW) == "valid"
    assert check_signature([other, secret], headers, body, now=NOW) == "valid"  # rotation
    assert check_signature([other], headers, body, now=NOW) == "INVALID"
    assert check_signature([secret], headers, body + b" ", now=NOW) == "INVALID"
    assert check_signature([secret], headers, body, now=NOW + 3600) == "INVALID"  # stale
    stamp = {**headers, "webhook-timestamp": "soon"}
    assert check_signature([secret], stamp, body, now=NOW) == "INVALID"
    assert check_signature([secret], {}, body, now=NOW) == "unsigned"
    assert check_signature([], headers, body, now=NOW) == "not checked"


async def post(listener: CallbackListener, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=listener)
    async with httpx.AsyncClient(transport=transport, base_url="http://listen") as client:
        return await client.request(kwargs.pop("method", "POST"), "/hook", **kwargs)


async def test_the_listener_prints_each_callback_and_answers_by_its_signature() -> None:
    secret = new_secret()
    out = io.StringIO()
    listener = CallbackListener([secret], out, wall_clock=lambda: float(NOW))
    body = json.dumps(PAYLOAD).encode()
    headers = {**signature_headers(secret, "evt_1", NOW, body), "content-type": "application/json"}
    assert (await post(listener, content=body, headers=headers)).status_code == 200
    forged = {**headers, "webhook-signature": "v1,AAAA"}
    assert (await post(listener, content=body, headers=forged)).status_code == 401
    printed = out.getvalue()
    head = f"POST /hook  event terminal  call {'a' * 32}  status completed  signature "
    assert printed.count(head + "valid") == 1 and printed.count(head + "INVALID") == 1
    assert '"total_talk_time": 8' in printed


async def test_v2_names_and_get_callbacks_are_read_too() -> None:
    out = io.StringIO()
    listener = CallbackListener([], out, wall_clock=lambda: float(NOW))
    v2 = build_payload("answered", {"call_sid": "b" * 32, "call_status": "in-progress"})
    params = encode_request(v2, "GET", "application/json").params
    assert (await post(listener, method="GET", params=params)).status_code == 200
    assert f"GET /hook  event answered  call {'b' * 32}  status in-progress" in out.getvalue()
    assert "signature not checked" in out.getvalue()


async def test_a_body_over_the_bound_is_refused_unprinted() -> None:
    out = io.StringIO()
    r = await post(CallbackListener([], out), content=b"x" * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413
    assert out.getvalue() == ""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    return subprocess.run(
        [str(CALLBRIDGE), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_mistakes_are_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        cases = [
            (("--secret", "whsec_%%%"), 2, "--secret: webhook secret is not valid base64"),
            (("--account", "demo"), 1, "no database at"),
            (("--port", "70000"), 2, "invalid port 70000"),
            (("--port", port), 1, f"cannot listen on 127.0.0.1:{port}"),
        ]
        for args, code, message in cases:
            result = cli("listen", *args, cwd=tmp_path)
            assert result.returncode == code, result.stderr
            assert "Traceback" not in result.stderr
            assert result.stderr.startswith(f"callbridge: {message}"), result.stderr
    assert not (tmp_path / "data").exists()  # --account never creates a database


def test_an_unknown_account_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli("migrate", "--data-dir", str(data), cwd=tmp_path).returncode == 0
    result = cli("listen", "--account", "nobody", "--data-dir", str(data), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, "callbridge: account nobody not found\n")
