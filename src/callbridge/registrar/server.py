"""The registrar's sockets (UDP and TCP on one port, in the API process) and its wiring into a
running app: the SIP driver asks it where a registered phone is before dialling it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol, cast, runtime_checkable

from callbridge.clock import Clock
from callbridge.domain.registration import ExpiryPolicy
from callbridge.registrar.digest import Nonces
from callbridge.registrar.handler import RegistrarConfig, RegistrarHandler
from callbridge.registrar.message import MAX_MESSAGE_BYTES
from callbridge.settings import Settings
from callbridge.store import registrations as reg_store
from callbridge.store.repo import Store
from callbridge.tasks import cancel_and_wait
from callbridge.telephony.sip_uri import SipTargetError

log = logging.getLogger("callbridge.registrar")

MAX_IN_FLIGHT = 256
"""UDP requests handled at once; more are dropped (the phone retransmits)."""
MAX_TCP_CONNECTIONS = 1024
TCP_IDLE_S = 3600 + 120
"""A phone keeps its TCP connection between re-registrations; idle longer than that, it goes."""
PURGE_INTERVAL_S = 300.0
BIND_ATTEMPTS = 20


class ContactResolver(Protocol):
    async def __call__(self, account_sid: str, contact_uri: str) -> str | None: ...


@runtime_checkable
class ResolvesContacts(Protocol):
    """A driver that asks where a `sip:` device is registered before dialling it."""

    def set_contact_resolver(self, resolver: ContactResolver | None) -> None: ...


class DeviceNotRegistered(SipTargetError):
    """The device registers, and has no live binding: it cannot be called now."""


def contact_resolver(store: Store, clock: Clock) -> ContactResolver:
    """None for contact URIs dialled as written; the newest live binding for a registering
    device; DeviceNotRegistered when it has none."""

    async def resolve(account_sid: str, contact_uri: str) -> str | None:
        async with store.read() as conn:
            found = await reg_store.reach(conn, account_sid, contact_uri, clock.now())
        if not found.registers:
            return None
        if found.contact is None:
            raise DeviceNotRegistered(f"{contact_uri} has no live registration")
        return found.contact

    return resolve


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, registrar: Registrar) -> None:
        self._registrar = registrar
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport is not a DatagramTransport subclass at runtime.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._registrar.on_datagram(self, data, addr)


class Registrar:
    """Owns the sockets and the periodic purge of expired bindings."""

    def __init__(
        self, handler: RegistrarHandler, store: Store, clock: Clock, host: str, port: int
    ) -> None:
        self._handler = handler
        self._store = store
        self._clock = clock
        self._host, self._port = host, port
        self._udp: _Udp | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections = 0
        self._purge: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        # Port 0 (tests) picks a free UDP port; the same number may be taken on TCP, so try
        # a few before giving up. A fixed port either binds both or fails.
        for attempt in range(BIND_ATTEMPTS if self._port == 0 else 1):
            try:
                await self._bind()
                break
            except OSError:
                if attempt == BIND_ATTEMPTS - 1 or self._port != 0:
                    raise
        self._purge = asyncio.create_task(self._purge_loop(), name="sip-registrar-purge")
        log.info("sip registrar listening host=%s port=%d (udp, tcp)", self._host, self._port)

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(self._host, self._port)
        )
        port = int(transport.get_extra_info("sockname")[1])
        try:
            self._tcp = await asyncio.start_server(
                self._serve_tcp, self._host, port, limit=MAX_MESSAGE_BYTES
            )
        except OSError:
            transport.close()
            raise
        self._udp = protocol
        self._port = port

    async def stop(self) -> None:
        await cancel_and_wait(self._purge)
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def on_datagram(self, udp: _Udp, data: bytes, addr: tuple[str, int]) -> None:
        if len(self._tasks) >= MAX_IN_FLIGHT:
            return
        task = asyncio.create_task(self._answer_datagram(udp, data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_datagram(self, udp: _Udp, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self._safe_handle(data, addr, "udp")
        if reply is not None and udp.transport is not None and not udp.transport.is_closing():
            udp.transport.sendto(reply, addr)

    async def _safe_handle(
        self, data: bytes, addr: tuple[str, int], transport: str
    ) -> bytes | None:
        try:
            return await self._handler.handle(data, (addr[0], addr[1]), transport)
        except Exception:
            # A database hiccup must not kill the socket; the phone retries.
            log.exception("sip registrar failed to answer source=%s", addr[0])
            return None

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            while True:
                message = await asyncio.wait_for(_read_message(reader), TCP_IDLE_S)
                if message is None:
                    break
                reply = await self._safe_handle(message, peer, "tcp")
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._connections -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _purge_loop(self) -> None:
        while True:
            await self._clock.sleep(PURGE_INTERVAL_S)
            try:
                async with self._store.tx() as conn:
                    await reg_store.purge_expired(conn, self._clock.now())
            except Exception:
                log.exception("sip registrar could not purge expired bindings")


async def _read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One SIP message framed by Content-Length; keep-alive CRLFs are skipped."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None
            raise
        if head.strip():
            break
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            length = int(value.strip() or b"0")
    if not 0 <= length <= MAX_MESSAGE_BYTES:
        raise ValueError("bad Content-Length")
    body = await reader.readexactly(length) if length else b""
    return head.lstrip(b"\r\n") + body


def registrar_from_settings(settings: Settings, store: Store, clock: Clock) -> Registrar | None:
    """The registrar this process should run, or None when `sip_registrar_port` is unset."""
    if settings.sip_registrar_port is None:
        return None
    min_s = settings.sip_registrar_min_expires_s
    max_s = max(settings.sip_registrar_max_expires_s, min_s)
    policy = ExpiryPolicy(
        min_s=min_s,
        max_s=max_s,
        default_s=min(max(settings.sip_registrar_default_expires_s, min_s), max_s),
    )
    key = settings.signing_key.get_secret_value().encode() if settings.signing_key else None
    handler = RegistrarHandler(
        store, clock, RegistrarConfig(settings.sip_registrar_realm, policy), Nonces(key, clock)
    )
    host = settings.sip_registrar_host or settings.sip_bind_host
    return Registrar(handler, store, clock, host, settings.sip_registrar_port)


async def start_registrar(
    settings: Settings, store: Store, clock: Clock, driver: object
) -> Registrar | None:
    """Let the driver reach registered phones (every node, registrar or not: bindings are
    shared) and start this process's registrar when one is configured."""
    if isinstance(driver, ResolvesContacts):
        driver.set_contact_resolver(contact_resolver(store, clock))
    registrar = registrar_from_settings(settings, store, clock)
    if registrar is not None:
        await registrar.start()
    return registrar
