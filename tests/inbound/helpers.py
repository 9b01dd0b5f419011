"""Inbound test helpers: configs with many agents, flow/ExoPhone setup over the API, placing
calls through the sim API, reading busy marks, and a real HTTP server for dynamic URLs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import func, select

from callbridge.store.tables import busy_marks, outbox, users

from ..harness import ACCOUNT, EXOPHONE, KEY, TOKEN, Harness

CUSTOMER = "+919800000001"
CUSTOMER_2 = "+919800000002"


def agent(i: int) -> str:
    return f"+9199000{i:05d}"


def agent_email(i: int) -> str:
    return f"agent{i}@example.com"


def config(
    n_agents: int = 3,
    *,
    off: tuple[int, ...] = (),
    unverified: tuple[int, ...] = (),
) -> str:
    """Account `acme` with agents 1..n (agent(i) is their device), plus account `other`."""
    parts = [
        f"""
[[accounts]]
sid = "{ACCOUNT}"
api_key = "{KEY}"
api_token = "{TOKEN}"
timezone = "Asia/Kolkata"
allow_voip = true
rate_limit_per_minute = 0
exophones = ["{EXOPHONE}", "+918047091999"]
"""
    ]
    for i in range(1, n_agents + 1):
        parts.append(
            f"""
[[accounts.users]]
first_name = "Agent"
last_name = "No{i}"
email = "{agent_email(i)}"

[[accounts.users.devices]]
contact_uri = "{agent(i)}"
name = "Agent {i} phone"
available = {"false" if i in off else "true"}
verified = {"false" if i in unverified else "true"}
"""
        )
    parts.append(
        """
[[accounts]]
sid = "other"
api_key = "k_other"
api_token = "t_other"
exophones = ["+918047091000"]
"""
    )
    return "".join(parts)


async def user_id(h: Harness, i: int) -> str:
    async with h.services.store.read() as conn:
        uid = (
            await conn.execute(select(users.c.id).where(users.c.email == agent_email(i)))
        ).scalar_one()
    return str(uid)


async def make_flow(h: Harness, name: str = "Support", **definition: Any) -> dict[str, Any]:
    r = await h.client.post(
        f"/v2/accounts/{ACCOUNT}/flows", json={"name": name, **definition}, headers=h.auth
    )
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["response"]["data"]
    return data


async def attach(h: Harness, flow_id: str | None, number: str = EXOPHONE) -> None:
    r = await h.client.put(
        f"/v2/accounts/{ACCOUNT}/exophones/{number}", json={"flow_id": flow_id}, headers=h.auth
    )
    assert r.status_code == 200, r.text


async def flow_for(
    h: Harness, agents: list[int], *, strategy: str = "sequential", **connect: Any
) -> dict[str, Any]:
    """A flow over users `agents` (by index), attached to EXOPHONE."""
    destinations = [{"user_id": await user_id(h, i)} for i in agents]
    no_agent = connect.pop("no_agent", {"action": "message", "message_s": 5})
    flow = await make_flow(
        h,
        connect={"destinations": destinations, "strategy": strategy, **connect},
        no_agent=no_agent,
    )
    await attach(h, flow["id"])
    return flow


async def incoming(h: Harness, from_: str = CUSTOMER, to: str = EXOPHONE) -> str:
    r = await h.client.post("/sim/v1/incoming", json={"from": from_, "to": to}, headers=h.auth)
    assert r.status_code == 200, r.text
    await h.settle()
    sid: str = r.json()["call_sid"]
    return sid


async def busy(h: Harness) -> dict[str, str]:
    """Every busy mark: contact URI → call sid."""
    async with h.services.store.read() as conn:
        rows = await conn.execute(select(busy_marks.c.contact_uri, busy_marks.c.call_sid))
        return {r[0]: r[1] for r in rows}


async def outbox_events(h: Harness, call_sid: str) -> list[str]:
    async with h.services.store.read() as conn:
        rows = await conn.execute(
            select(outbox.c.event_type).where(outbox.c.call_sid == call_sid).order_by(outbox.c.id)
        )
        return [r[0] for r in rows]


async def count_outbox(h: Harness) -> int:
    async with h.services.store.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(outbox))).scalar_one())


def to_legs(legs: dict[str, Any]) -> list[tuple[str, str]]:
    return [(leg["contact_uri"], leg["status"]) for leg in legs["to"]]


# -- a real HTTP server for dynamic URLs ---------------------------------------------------


@dataclass
class Request:
    target: str
    headers: dict[str, str]

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.target).query).items()}


@dataclass
class RouteServer:
    """Answers each GET with the next of `answers` (the last one repeats): (status, body, delay)."""

    answers: list[tuple[int, Any, float]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    on_request: Callable[[Request], None] | None = None
    _server: asyncio.Server | None = None

    def url(self, path: str = "/route") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, body: Any, status: int = 200, delay_s: float = 0.0) -> None:
        self.answers.append((status, body, delay_s))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            _, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            self.requests.append(Request(target, headers))
            status, body, delay = self.answers[0] if self.answers else (200, [], 0.0)
            if len(self.answers) > 1:
                self.answers.pop(0)
            if delay:
                await asyncio.sleep(delay)
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
