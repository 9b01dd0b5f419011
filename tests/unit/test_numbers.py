from __future__ import annotations

import pytest

from callbridge.numbers import InvalidContactUri, UriType, normalise


@pytest.mark.parametrize("raw", ["08516043026", "8516043026", "+918516043026", " +91 85160 43026 "])
def test_indian_forms_of_one_mobile_are_the_same_device(raw: str) -> None:
    assert normalise(raw).uri == "+918516043026"


def test_landline_keeps_std_code() -> None:
    assert normalise("08026702400").uri == "+918026702400"


def test_sip_uris_are_canonical_and_typed() -> None:
    uri = normalise("SIP:agent1@PBX.Example.com;transport=udp")
    assert uri.uri == "sip:agent1@pbx.example.com"
    assert uri.type is UriType.SIP


@pytest.mark.parametrize("raw", ["", "hello", "12", "sip:", "+91abc"])
def test_garbage_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidContactUri):
        normalise(raw)
