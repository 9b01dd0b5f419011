"""Pure SIP mappings: contact URI → Request-URI on the trunk, caller id, inbound header → contact
URI, and final status → leg outcome."""

from __future__ import annotations

import pytest

from callbridge.telephony.base import LegEventKind
from callbridge.telephony.sip_uri import (
    SipTargetError,
    Trunk,
    caller_id_uri,
    contact_from_header,
    dial_target,
    format_number,
    leg_outcome,
)

TRUNK = Trunk(host="trunk.example.net", port=5060)


@pytest.mark.parametrize(
    ("contact", "number_format", "expected"),
    [
        ("+919900000001", "e164", "sip:+919900000001@trunk.example.net:5060"),
        ("09900000001", "e164", "sip:+919900000001@trunk.example.net:5060"),
        ("9900000001", "e164_no_plus", "sip:919900000001@trunk.example.net:5060"),
        ("+919900000001", "national", "sip:09900000001@trunk.example.net:5060"),
        ("tel:+912241499102", "national", "sip:02241499102@trunk.example.net:5060"),
    ],
)
def test_phone_numbers_go_to_the_trunk_in_its_number_format(
    contact: str, number_format: str, expected: str
) -> None:
    trunk = Trunk(host="trunk.example.net", number_format=number_format)  # type: ignore[arg-type]
    assert dial_target(contact, trunk) == expected


def test_tcp_trunk_adds_transport_parameter() -> None:
    trunk = Trunk(host="10.0.0.5", port=5080, transport="tcp")
    assert dial_target("+919900000001", trunk) == "sip:+919900000001@10.0.0.5:5080;transport=tcp"


def test_ipv6_trunk_host_is_bracketed() -> None:
    assert dial_target("+919900000001", Trunk(host="::1")) == "sip:+919900000001@[::1]:5060"


def test_sip_uri_with_host_is_dialled_directly_keeping_parameters() -> None:
    assert dial_target("sip:Alice@PBX.example.com", TRUNK) == "sip:Alice@pbx.example.com"
    assert (
        dial_target("sip:alice@10.1.1.1:5070;transport=tcp", TRUNK)
        == "sip:alice@10.1.1.1:5070;transport=tcp"
    )


def test_sip_uri_without_host_goes_to_the_trunk() -> None:
    assert dial_target("sip:1001", TRUNK) == "sip:1001@trunk.example.net:5060"


def test_number_without_a_trunk_cannot_be_routed() -> None:
    with pytest.raises(SipTargetError, match="TRUNK_HOST"):
        dial_target("+919900000001", Trunk(host=None))


@pytest.mark.parametrize("bad", ["", "hello", "+91 12", "sip:"])
def test_unroutable_contacts_raise(bad: str) -> None:
    with pytest.raises(SipTargetError):
        dial_target(bad, TRUNK)


def test_caller_id_is_the_exophone_in_e164() -> None:
    exophone = caller_id_uri("02241499102", "trunk.example.net")
    assert exophone == "sip:+912241499102@trunk.example.net"
    assert caller_id_uri("sip:desk", "10.0.0.1") == "sip:desk@10.0.0.1"


def test_format_number_national_keeps_trunk_prefix() -> None:
    assert format_number("+912241499102", "national") == "02241499102"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('"Customer" <sip:919900000001@10.0.0.9:5060>;tag=abc', "+919900000001"),
        ("<sip:+919900000001@10.0.0.9>;tag=1", "+919900000001"),
        ("sip:09900000001@10.0.0.9", "+919900000001"),
        ("<sip:9900000001@gw>", "+919900000001"),
        ("<sip:Alice@PBX.example.com;transport=tcp>", "sip:Alice@pbx.example.com"),
        ("<sip:anonymous@anonymous.invalid>", "sip:anonymous@anonymous.invalid"),
    ],
)
def test_inbound_header_becomes_a_contact_uri(header: str, expected: str) -> None:
    assert contact_from_header(header) == expected


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (486, LegEventKind.BUSY),
        (600, LegEventKind.BUSY),
        (603, LegEventKind.REJECTED),
        (404, LegEventKind.FAILED),
        (403, LegEventKind.FAILED),
        (401, LegEventKind.FAILED),
        (407, LegEventKind.FAILED),
        (484, LegEventKind.FAILED),
        (604, LegEventKind.FAILED),
        (488, LegEventKind.REJECTED),
        (408, LegEventKind.NO_ANSWER),
        (480, LegEventKind.NO_ANSWER),
        (487, LegEventKind.NO_ANSWER),
        (500, LegEventKind.FAILED),
        (503, LegEventKind.FAILED),
        (0, LegEventKind.FAILED),
        (302, LegEventKind.FAILED),
    ],
)
def test_final_status_maps_to_leg_outcome(code: int, kind: LegEventKind) -> None:
    assert leg_outcome(code) is kind
