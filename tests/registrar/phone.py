"""A scripted SIP phone for registrar tests: sends REGISTER/OPTIONS over real UDP (or TCP) on
127.0.0.1, answers digest challenges with its own MD5 code (independent of the registrar's),
and reads responses back."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass, field

DOMAIN = "agents.callbridge.test"


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    def challenge(self) -> dict[str, str]:
        header = self.get("www-authenticate") or ""
        return dict(re.findall(r'(\w+)="?([^",]*)"?', header))


def parse_response(data: bytes) -> Response:
    lines = data.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = []
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return Response(status, headers)


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)


@dataclass
class Phone:
    """One phone (AOR `sip:user@DOMAIN`) talking to the registrar at 127.0.0.1:port."""

    user: str
    password: str
    port: int
    contact: str = ""
    local_port: int = 0
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    cseq: int = 0
    _transport: asyncio.DatagramTransport | None = None
    _protocol: _Client | None = None

    async def open(self) -> Phone:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _Client, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", self.port)
        )
        self._transport, self._protocol = transport, protocol
        self.local_port = transport.get_extra_info("sockname")[1]
        self.contact = self.contact or f"sip:{self.user}@127.0.0.1:{self.local_port}"
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def send(self, message: str, timeout_s: float = 5.0) -> Response:
        assert self._transport is not None and self._protocol is not None
        self._transport.sendto(message.encode())
        data = await asyncio.wait_for(self._protocol.queue.get(), timeout_s)
        return parse_response(data)

    def register_message(
        self,
        *,
        contacts: list[str] | None = None,
        expires: int | None = None,
        authorization: str | None = None,
        cseq: int | None = None,
    ) -> str:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        aor = f"sip:{self.user}@{DOMAIN}"
        lines = [
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{secrets.token_hex(6)};rport",
            f"From: <{aor}>;tag={self.call_id[:6]}",
            f"To: <{aor}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} REGISTER",
            "Max-Forwards: 70",
            "User-Agent: test-phone",
        ]
        for contact in [f"<{self.contact}>"] if contacts is None else contacts:
            lines.append(f"Contact: {contact}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if authorization is not None:
            lines.append(f"Authorization: {authorization}")
        return "\r\n".join([*lines, "Content-Length: 0", "", ""])

    def authorization(self, challenge: dict[str, str], password: str | None = None) -> str:
        realm, nonce = challenge["realm"], challenge["nonce"]
        uri = f"sip:{DOMAIN}"
        ha1 = md5(f"{self.user}:{realm}:{password or self.password}")
        ha2 = md5(f"REGISTER:{uri}")
        cnonce, nc = secrets.token_hex(4), "00000001"
        response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        return (
            f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"'
        )

    async def register(
        self,
        *,
        expires: int | None = None,
        contacts: list[str] | None = None,
        password: str | None = None,
    ) -> Response:
        """REGISTER, answer the 401 challenge, and return the final response."""
        first = await self.send(self.register_message(contacts=contacts, expires=expires))
        if first.status != 401:
            return first
        auth = self.authorization(first.challenge(), password)
        return await self.send(
            self.register_message(contacts=contacts, expires=expires, authorization=auth)
        )
