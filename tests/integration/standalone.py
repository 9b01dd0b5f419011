"""A `callbridge serve` started the way a user starts it (an installed wheel, the container's
start-up sequence), driven with a synchronous client: ready, then the demo's call to its end."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from ..conftest import basic

AUTH = basic("demo_key", "demo_token")


def wait_ready(client: httpx.Client, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not ready: {log.read_text()[-3000:]}")


def call_to_the_end(client: httpx.Client) -> dict[str, Any]:
    """The demo account's click-to-call, with the customer told to hang up after 1 s; the
    call's details once it is terminal."""
    r = client.put("/sim/v1/numbers/%2B919800000001", json={"hangup_after": 1}, headers=AUTH)
    assert r.status_code == 200, r.text
    r = client.post(
        "/v3/accounts/demo/calls",
        json={
            "from": {"contact_uri": "+919900000001"},
            "to": {"contact_uri": "+919800000001"},
            "virtual_number": "+912241499102",
        },
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    sid = r.json()["response"]["call_details"]["sid"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = client.get(f"/v3/accounts/demo/calls/{sid}", headers=AUTH)
        details: dict[str, Any] = r.json()["response"]["call_details"]
        if details["state"] == "terminal":
            return details
        time.sleep(0.2)
    raise AssertionError("the call did not end")
