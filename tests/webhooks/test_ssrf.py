"""The SSRF guard: URL syntax, public-address checks, connections pinned to checked addresses."""

from __future__ import annotations

import httpx
import pytest

from callbridge.webhooks.ssrf import (
    WS_SCHEMES,
    PinnedTransport,
    UnresolvableUrl,
    UnsafeUrl,
    UrlGuard,
    validate_syntax,
)

from .helpers import Receiver


class FixedResolver:
    """A resolver returning the given answers in turn (the last one repeats)."""

    def __init__(self, *answers: list[str] | Exception) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        answer = self.answers[min(len(self.calls), len(self.answers) - 1)]
        self.calls.append(host)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/status",
        "http://hooks.example.com:8080/a?b=c#frag",
        "https://93.184.216.34/x",
        "https://[2606:4700:4700::1111]/x",
        "https://bücher.example/x",
        "http://under_score.example.com/",
    ],
)
def test_public_urls_pass_syntax(url: str) -> None:
    validate_syntax(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("example.com/x", "scheme"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "port"),
        ("http://example.com:0/", "port"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com/\r\nX: y", "control"),
        ("http://example.com\\@evil.com/", "backslash"),
        ("http://127.1/", "not a valid"),
        ("http://2130706433/", "not a valid"),
        ("http://0x7f.1/", "not a valid"),
        ("http://exa$mple.com/", "not a valid"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://" + "a" * 3000 + ".com/", "longer"),
        ("", "empty"),
    ],
)
def test_malformed_urls_are_rejected(url: str, message: str) -> None:
    with pytest.raises(UnsafeUrl, match=message):
        validate_syntax(url)


def test_credentials_are_rejected_and_never_echoed() -> None:
    with pytest.raises(UnsafeUrl) as info:
        validate_syntax("https://admin:hunter2@hooks.example.com/x")
    assert "credentials" in str(info.value)
    assert "hunter2" not in str(info.value) and "admin" not in str(info.value)
    with pytest.raises(UnsafeUrl):
        validate_syntax("https://token@hooks.example.com/x")


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "not globally routable"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "private"),
        ("[::1]", "loopback"),
        ("[::]", "unspecified"),
        ("[fe80::1]", "link-local"),
        ("[fc00::1]", "private"),
        ("[fd12:3456::1]", "private"),
        ("[ff02::1]", "multicast"),
        ("[fec0::1]", "site-local"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:10.0.0.1]", "private"),
        ("[::ffff:169.254.169.254]", "link-local"),
        ("[2002:7f00:1::]", "loopback"),
        ("[64:ff9b::a00:1]", "private"),
        ("[2001:db8::1]", "private"),
    ],
)
def test_non_public_literal_hosts_are_rejected(host: str, reason: str) -> None:
    with pytest.raises(UnsafeUrl, match=reason):
        validate_syntax(f"http://{host}/hook")
    validate_syntax(f"http://{host}/hook", allow_private=True)


def test_other_schemes_for_streams() -> None:
    validate_syntax("wss://stream.example.com/ws", WS_SCHEMES)
    with pytest.raises(UnsafeUrl, match="ws, wss"):
        validate_syntax("https://stream.example.com/ws", WS_SCHEMES)


async def test_guard_accepts_a_name_resolving_to_public_addresses() -> None:
    guard = UrlGuard(False, resolver=FixedResolver(["93.184.216.34", "2606:2800:220:1::1"]))
    resolved = await guard.check("https://hooks.example.com/x")
    assert resolved.host == "hooks.example.com"
    assert resolved.port == 443
    assert resolved.addresses == ("93.184.216.34", "2606:2800:220:1::1")


async def test_guard_rejects_a_name_with_any_private_address() -> None:
    guard = UrlGuard(False, resolver=FixedResolver(["93.184.216.34", "10.0.0.5"]))
    with pytest.raises(UnsafeUrl, match="resolves to a non-public address"):
        await guard.check("https://hooks.example.com/x")


async def test_guard_checks_ipv4_mapped_answers_as_ipv4() -> None:
    guard = UrlGuard(False, resolver=FixedResolver(["::ffff:127.0.0.1"]))
    with pytest.raises(UnsafeUrl, match="loopback"):
        await guard.check("https://hooks.example.com/x")
    allowing = UrlGuard(True, resolver=FixedResolver(["::ffff:127.0.0.1"]))
    assert (await allowing.check("http://h.example/")).addresses == ("127.0.0.1",)


async def test_guard_reports_names_that_do_not_resolve() -> None:
    answers: list[list[str] | Exception] = [[], OSError("nxdomain")]
    for answer in answers:
        guard = UrlGuard(False, resolver=FixedResolver(answer))
        with pytest.raises(UnresolvableUrl):
            await guard.check("https://nowhere.example.com/x")


async def test_localhost_via_the_system_resolver_is_rejected() -> None:
    with pytest.raises(UnsafeUrl, match="loopback"):
        await UrlGuard(False).check("http://localhost:9/x")
    resolved = await UrlGuard(True).check("http://localhost:9/x")
    assert set(resolved.addresses) <= {"127.0.0.1", "::1"}


async def test_ip_literals_are_not_resolved() -> None:
    resolver = FixedResolver(OSError("must not be called"))
    resolved = await UrlGuard(True, resolver=resolver).check("http://127.0.0.1:8/x")
    assert resolved.addresses == ("127.0.0.1",)
    assert resolver.calls == []


async def test_transport_connects_to_the_checked_address_with_the_original_host(
    receiver: Receiver,
) -> None:
    # "callback.test" resolves nowhere in real DNS: the request can only arrive through the pin.
    guard = UrlGuard(True, resolver=FixedResolver(["127.0.0.1"]))
    async with httpx.AsyncClient(transport=PinnedTransport(guard)) as client:
        response = await client.post(f"http://callback.test:{receiver.port}/hook", content=b"x")
    assert response.status_code == 200
    assert receiver.requests[0].headers["host"] == f"callback.test:{receiver.port}"


async def test_transport_rechecks_at_send_time_against_dns_rebinding(receiver: Receiver) -> None:
    # Public when the call was accepted, loopback when the callback is sent.
    resolver = FixedResolver(["93.184.216.34"], ["127.0.0.1"])
    guard = UrlGuard(False, resolver=resolver)
    url = f"http://rebind.example:{receiver.port}/hook"
    await guard.check(url)
    async with httpx.AsyncClient(transport=PinnedTransport(guard)) as client:
        with pytest.raises(UnsafeUrl, match="loopback"):
            await client.post(url, content=b"x")
    assert receiver.requests == []


async def test_transport_rejects_private_literals(receiver: Receiver) -> None:
    async with httpx.AsyncClient(transport=PinnedTransport(UrlGuard(False))) as client:
        with pytest.raises(UnsafeUrl):
            await client.get(receiver.url())
    assert receiver.requests == []
