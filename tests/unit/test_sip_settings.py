"""The SIP pool and NAT settings: defaults sized for a host, STUN servers and the public
address checked when the settings load, and a bad value stopping `serve` with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from callbridge.settings import Settings
from tests.unit.test_cli import one_line_error, run


def test_defaults_give_four_workers_rtp_ports_for_512_calls_each() -> None:
    settings = Settings()
    assert settings.sip_workers == 4
    ports = settings.sip_rtp_port_max - settings.sip_rtp_port_min + 1
    assert ports // settings.sip_workers == 2 * 512
    assert settings.sip_worker_max_calls is None
    assert settings.sip_public_address is None and settings.stun_servers() == ()


def test_stun_servers_are_a_comma_separated_list_of_host_or_host_port() -> None:
    settings = Settings(sip_stun_servers="stun.example.com, 203.0.113.9:3479,[2001:db8::1]:3478")
    assert settings.stun_servers() == ("stun.example.com", "203.0.113.9:3479", "[2001:db8::1]:3478")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sip_stun_servers", "stun.example.com,", "STUN server '' is not host or host:port"),
        ("sip_stun_servers", "stun://x", "STUN server 'stun://x' is not host or host:port"),
        ("sip_public_address", "203.0.113.9:5060", "is not an IP address or host name"),
        ("sip_public_address", "", "is not an IP address or host name"),
        ("sip_worker_max_calls", 1, "greater than or equal to 2"),
    ],
)
def test_bad_nat_or_pool_setting_names_the_setting(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**{field: value})
    [error] = caught.value.errors()
    assert error["loc"] == (field,)
    assert message in error["msg"]


def test_bad_stun_server_stops_serve_with_one_line(tmp_path: Path) -> None:
    result = run("serve", env={"CALLBRIDGE_SIP_STUN_SERVERS": "stun:bad"}, cwd=tmp_path)
    one_line_error(result, 2, "invalid setting sip_stun_servers")
