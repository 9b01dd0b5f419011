"""Small helpers for the Users API tests, over the in-process harness."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from ..harness import ACCOUNT, Harness

USERS = f"/v2/accounts/{ACCOUNT}/users"


def error_code(r: httpx.Response) -> int:
    code: int = r.json()["response"]["error_data"]["code"]
    return code


def data(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 202), r.text
    value: dict[str, Any] = r.json()["response"]["data"]
    return value


async def create_user(h: Harness, **fields: Any) -> httpx.Response:
    body = {"first_name": "Meera", "last_name": "Iyer", **fields}
    return await h.client.post(USERS, json=body, headers=h.auth)


async def user_by_contact(h: Harness, uri: str) -> dict[str, Any]:
    r = await h.client.get(
        f"{USERS}?devices.contact_uri={quote(uri)}&fields=devices,active_call", headers=h.auth
    )
    assert r.status_code == 200, r.text
    items = r.json()["response"]
    assert len(items) == 1, items
    user: dict[str, Any] = items[0]["data"]
    return user


async def put_device(h: Harness, user_id: str, device_id: str, **body: Any) -> httpx.Response:
    r = await h.client.put(f"{USERS}/{user_id}/devices/{device_id}", json=body, headers=h.auth)
    await h.settle()
    return r
