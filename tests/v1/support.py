"""v1 test helpers: placing v1 calls on the in-process app, reading XML answers, and a flow of
the harness's agents for the connect-to-flow variant."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import httpx

from ..harness import ACCOUNT, AGENT, CUSTOMER, EXOPHONE, Harness

CONNECT = f"/v1/Accounts/{ACCOUNT}/Calls/connect"
CALLS = f"/v1/Accounts/{ACCOUNT}/Calls"


async def connect(
    h: Harness,
    *,
    suffix: str = ".json",
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    """POST a form to v1 `Calls/connect` (From=AGENT, To=CUSTOMER, CallerId=EXOPHONE unless
    given; a None value leaves the field out)."""
    form: dict[str, Any] = {"From": AGENT, "To": CUSTOMER, "CallerId": EXOPHONE, **fields}
    data = {k: v for k, v in form.items() if v is not None}
    r = await h.client.post(CONNECT + suffix, data=data, headers=headers or h.auth)
    await h.settle()
    return r


def call_sid(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    sid: str = r.json()["Call"]["Sid"]
    return sid


async def details(h: Harness, sid: str) -> dict[str, Any]:
    r = await h.client.get(f"{CALLS}/{sid}.json", headers=h.auth)
    assert r.status_code == 200, r.text
    call: dict[str, Any] = r.json()["Call"]
    return call


def xml(r: httpx.Response) -> ET.Element:
    assert r.headers["content-type"].startswith("application/xml"), r.headers
    root = ET.fromstring(r.content)
    assert root.tag == "TwilioResponse"
    return root


def rest_exception(r: httpx.Response) -> dict[str, Any]:
    """The RestException of a JSON or an XML answer, as a dict of strings/ints."""
    if r.headers["content-type"].startswith("application/json"):
        body: dict[str, Any] = r.json()["RestException"]
        return body
    found = xml(r).find("RestException")
    assert found is not None, r.text
    return {child.tag: child.text for child in found}


async def flow_of_agent(h: Harness, **connect_fields: Any) -> dict[str, Any]:
    """A flow whose connect step rings AGENT (a registered device) alone."""
    r = await h.client.post(
        f"/v2/accounts/{ACCOUNT}/flows",
        json={
            "name": "Sales line",
            "connect": {"destinations": [{"contact_uri": AGENT}], **connect_fields},
            "no_agent": {"action": "message", "message_s": 2},
        },
        headers=h.auth,
    )
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["response"]["data"]
    return data


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a multipart/form-data body, parsed by the standard library."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    return {
        str(part.get_param("name", header="content-disposition")): str(part.get_content())
        for part in message.iter_parts()
    }
