"""SSRF guard for client-supplied URLs: syntax rules, public-address checks, and an httpx transport
that connects only to the addresses the guard resolved and checked (no DNS rebinding).

Error messages describe the problem and never echo the URL, so credentials in it cannot leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx
import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

HTTP_SCHEMES: frozenset[str] = frozenset({"http", "https"})
WS_SCHEMES: frozenset[str] = frozenset({"ws", "wss"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_S = 5.0

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_FORBIDDEN_CHARS = re.compile(r"[\s\x00-\x1f\x7f\\]")
PRIVATE_URLS_HINT = (
    "the server allows such URLs only with CALLBRIDGE_ALLOW_PRIVATE_URLS=true"
    " (--allow-private-urls)"
)
"""Appended to a refusal of a non-public address: how an operator allows it (local tests)."""


class UnsafeUrl(ValueError):
    """A URL we refuse to call; the message is safe to show to the client who supplied it."""


class UnresolvableUrl(UnsafeUrl):
    """The host did not resolve (now); at send time this is worth retrying, unlike UnsafeUrl."""


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    scheme: str
    host: str  # lowercase; IDNA (punycode) for names; no brackets for IPv6 literals
    port: int
    literal_ip: IPAddress | None


@dataclass(frozen=True, slots=True)
class ResolvedUrl:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]  # checked addresses, in the order to try them


def non_public_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (ip.sixtofour) or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            reason = non_public_reason(embedded)
            if reason is not None:
                return f"{reason} (embedded in IPv6)"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("private", ip.is_private),
        ("not globally routable", not ip.is_global),
    )
    for reason, hit in checks:
        if hit:
            return reason
    return None


def _parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _split(url: str) -> SplitResult:
    if not isinstance(url, str) or not url:
        raise UnsafeUrl("URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"URL is longer than {MAX_URL_LENGTH} characters")
    if _FORBIDDEN_CHARS.search(url):
        raise UnsafeUrl("URL contains whitespace, control characters or backslashes")
    try:
        return urlsplit(url)
    except ValueError:
        raise UnsafeUrl("URL cannot be parsed") from None


def validate_syntax(
    url: str, schemes: Collection[str] = HTTP_SCHEMES, *, allow_private: bool = False
) -> ParsedUrl:
    """Check a URL without any I/O: scheme, no credentials, a well-formed host and port.

    An IP-literal host must also be public unless `allow_private`; names are resolved later, by
    `UrlGuard.check`.
    """
    parts = _split(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        allowed = ", ".join(sorted(schemes))
        raise UnsafeUrl(f"URL scheme must be one of: {allowed}")
    netloc = parts.netloc
    if "@" in netloc:
        raise UnsafeUrl("URL must not contain credentials")
    if not netloc or not parts.hostname:
        raise UnsafeUrl("URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise UnsafeUrl("URL port is invalid") from None
    if port == 0:
        raise UnsafeUrl("URL port is invalid")
    raw_host = parts.hostname.lower()
    if "%" in raw_host:
        raise UnsafeUrl("URL host must not carry an IPv6 zone or percent-escapes")
    literal = _parse_ip(raw_host)
    if literal is None and netloc.startswith("["):
        raise UnsafeUrl("URL host is not a valid IPv6 address")
    if (
        literal is not None
        and isinstance(literal, ipaddress.IPv6Address)
        and not netloc.startswith("[")
    ):
        raise UnsafeUrl("URL host is not valid")
    if literal is None:
        try:
            # The same IDNA 2008 encoding httpx applies, so both read the same host.
            host = raw_host if raw_host.isascii() else idna.encode(raw_host).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise UnsafeUrl("URL host is not a valid domain name") from None
        if not _HOSTNAME_RE.match(host):
            raise UnsafeUrl("URL host is not a valid domain name")
        if host.rstrip(".").rsplit(".", 1)[-1].isdigit():
            # "127.1", "2130706433", "0x7f.1" style hosts: ambiguous numeric forms.
            raise UnsafeUrl("URL host is not a valid domain name or IP address")
    else:
        host = raw_host
        if not allow_private:
            reason = non_public_reason(literal)
            if reason is not None:
                raise UnsafeUrl(f"URL host is a non-public address ({reason}); {PRIVATE_URLS_HINT}")
    return ParsedUrl(scheme, host, port or DEFAULT_PORTS.get(scheme, 0), literal)


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


class UrlGuard:
    """Resolves a URL's host once and accepts it only if every address is public.

    `allow_private` (operator setting) skips the address checks but still resolves, so
    connections stay pinned to what was resolved.
    """

    def __init__(
        self,
        allow_private: bool,
        *,
        resolver: Resolver | None = None,
        resolve_timeout_s: float = RESOLVE_TIMEOUT_S,
    ) -> None:
        self.allow_private = allow_private
        self._resolver = resolver or _system_resolver
        self._resolve_timeout_s = resolve_timeout_s

    def validate_syntax(self, url: str, schemes: Collection[str] = HTTP_SCHEMES) -> ParsedUrl:
        return validate_syntax(url, schemes, allow_private=self.allow_private)

    async def check(self, url: str, schemes: Collection[str] = HTTP_SCHEMES) -> ResolvedUrl:
        """Validate, resolve and check `url`; raises UnsafeUrl (or UnresolvableUrl)."""
        parsed = validate_syntax(url, schemes, allow_private=self.allow_private)
        if parsed.literal_ip is not None:
            address = str(parsed.literal_ip)
            return ResolvedUrl(url, parsed.scheme, parsed.host, parsed.port, (address,))
        try:
            async with asyncio.timeout(self._resolve_timeout_s):
                found = await self._resolver(parsed.host, parsed.port)
        except (OSError, TimeoutError):
            raise UnresolvableUrl("URL host does not resolve") from None
        addresses: list[str] = []
        for text in found:
            ip = _parse_ip(text.split("%", 1)[0])
            if ip is None:
                continue
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not self.allow_private:
                reason = non_public_reason(ip)
                if reason is not None:
                    raise UnsafeUrl(
                        f"URL host resolves to a non-public address ({reason}); {PRIVATE_URLS_HINT}"
                    )
            if str(ip) not in addresses:
                addresses.append(str(ip))
        if not addresses:
            raise UnresolvableUrl("URL host does not resolve")
        return ResolvedUrl(url, parsed.scheme, parsed.host, parsed.port, tuple(addresses))


# --- the pinned transport -------------------------------------------------------------------

_PoolKey = tuple[str, str, int]


async def _connect(
    addresses: tuple[str, ...], port: int, timeout_s: float | None
) -> httpcore.AsyncNetworkStream:
    """A TCP connection to the first reachable checked address (the only way we connect)."""
    backend = httpcore.AnyIOBackend()
    error: Exception | None = None
    for address in addresses:
        try:
            return await backend.connect_tcp(address, port, timeout=timeout_s)
        except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
            error = exc
    raise error or httpcore.ConnectError("no address to connect to")


_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _map_httpcore_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_type, httpx_type in _EXCEPTIONS:
            if isinstance(exc, core_type):
                mapped: Any = httpx_type
                raise mapped(str(exc), request=request) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request, on_close: Callable[[], Any]) -> None:
        self._stream = stream
        self._request = request
        self._on_close: Callable[[], Any] | None = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _map_httpcore_errors(self._request):
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        try:
            with _map_httpcore_errors(self._request):
                await self._stream.aclose()
        finally:
            if self._on_close is not None:
                on_close, self._on_close = self._on_close, None
                await on_close()


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks every request with the guard and connects to the checked IP.

    The request keeps its hostname, so the Host header, TLS SNI and certificate verification use
    the name while the socket goes to an address that passed the check; sockets are opened only
    from checked addresses. A request the guard rejects raises UnsafeUrl from `client.send`.

    HTTP/1.1 only, on httpcore's connection class with a small keep-alive pool of our own
    (httpcore's pool costs grow with the square of its size and dominate at ~64 connections).
    """

    def __init__(
        self,
        guard: UrlGuard,
        *,
        max_connections: int = 100,
        keepalive_expiry_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._guard = guard
        self._ssl_context = ssl_context or httpx.create_ssl_context()
        self._keepalive_expiry_s = keepalive_expiry_s
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_connections
        self._idle: dict[_PoolKey, list[httpcore.AsyncHTTP11Connection]] = {}
        self._idle_count = 0
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resolved = await self._guard.check(str(request.url))
        scheme = request.url.scheme
        host = request.url.raw_host.decode("ascii").lower()
        port = request.url.port or DEFAULT_PORTS[scheme]
        if (host, port) != (resolved.host, resolved.port):
            # The guard and httpx read the URL differently: refuse rather than guess.
            raise UnsafeUrl("URL host is ambiguous")
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        key = (scheme, host, port)
        await self._slots.acquire()
        connection: httpcore.AsyncHTTP11Connection | None = None
        try:
            with _map_httpcore_errors(request):
                connection = await self._checkout(key, resolved.addresses, request)
                response = await connection.handle_async_request(core_request)
        except BaseException:
            if connection is not None:
                await connection.aclose()
            self._slots.release()
            raise

        async def release() -> None:
            assert connection is not None
            self._slots.release()
            await self._checkin(key, connection)

        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request, release),
            extensions=response.extensions,
        )

    async def _checkout(
        self, key: _PoolKey, addresses: tuple[str, ...], request: httpx.Request
    ) -> httpcore.AsyncHTTP11Connection:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if connection.is_idle() and not connection.has_expired():
                return connection
            await connection.aclose()
        timeouts = request.extensions.get("timeout", {})
        connect_timeout = timeouts.get("connect")
        scheme, host, port = key
        stream = await _connect(addresses, port, connect_timeout)
        try:
            if scheme == "https":
                stream = await stream.start_tls(
                    self._ssl_context, server_hostname=host, timeout=connect_timeout
                )
        except BaseException:
            await stream.aclose()
            raise
        return httpcore.AsyncHTTP11Connection(
            origin=httpcore.Origin(scheme.encode("ascii"), host.encode("ascii"), port),
            stream=stream,
            keepalive_expiry=self._keepalive_expiry_s,
        )

    async def _checkin(self, key: _PoolKey, connection: httpcore.AsyncHTTP11Connection) -> None:
        if self._closed or not connection.is_idle() or self._idle_count >= self._max_idle:
            await connection.aclose()
            return
        self._idle.setdefault(key, []).append(connection)
        self._idle_count += 1

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle, self._idle_count = self._idle, {}, 0
        for connections in idle.values():
            for connection in connections:
                await connection.aclose()
