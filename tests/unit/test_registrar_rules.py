"""The registrar's pure parts: SIP request parsing, RFC 3261 §10.3 binding rules and digest
responses (checked against RFC 2617's worked example)."""

from __future__ import annotations

import pytest

from callbridge.clock import ManualClock
from callbridge.domain.registration import (
    ExpiryPolicy,
    RegisterPlan,
    RegisterRefusal,
    RegisterRequest,
    RequestedContact,
    StoredBinding,
    plan_register,
)
from callbridge.registrar.digest import NonceCheck, Nonces, ha1, response_matches
from callbridge.registrar.message import (
    SipParseError,
    parse_name_addr,
    parse_request,
    render_response,
    split_values,
)

POLICY = ExpiryPolicy(min_s=60, max_s=3600, default_s=1800, max_bindings=2)


def req(
    *contacts: tuple[str, int | None], header: int | None = None, cseq: int = 2
) -> RegisterRequest:
    return RegisterRequest(
        tuple(RequestedContact(u, e) for u, e in contacts), False, header, "cid", cseq
    )


def test_parse_request_expands_compact_headers_and_folding() -> None:
    raw = (
        b"REGISTER sip:d.test SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9\r\nt: <sip:1@d.test>\r\n"
        b"m: <sip:1@h:5>;expires=30,\r\n <sip:1@h:6>\r\ni: x\r\nCSeq: 1 REGISTER\r\n\r\n"
    )
    request = parse_request(raw)
    assert request.method == "REGISTER" and request.get("call-id") == "x"
    assert request.get_all("contact") == ["<sip:1@h:5>;expires=30", "<sip:1@h:6>"]


@pytest.mark.parametrize(
    "raw",
    [b"HELLO", b"REGISTER sip:x SIP/3.0\r\n\r\n", b"REGISTER sip:x SIP/2.0\r\nbad line\r\n\r\n"],
)
def test_parse_request_refuses_garbage(raw: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_request(raw)


def test_name_addr_params_belong_to_the_header_outside_brackets() -> None:
    inside = parse_name_addr('"A, B" <sip:1@h;transport=tcp>;expires=60;q=0.5')
    assert inside.uri == "sip:1@h;transport=tcp"
    assert inside.params == {"expires": "60", "q": "0.5"}
    bare = parse_name_addr("sip:1@h;expires=10")
    assert (bare.uri, bare.params) == ("sip:1@h", {"expires": "10"})
    assert split_values('"A, B" <sip:1@h>, <sip:2@h>') == ['"A, B" <sip:1@h>', "<sip:2@h>"]


def test_response_copies_dialog_headers_and_tags_the_to() -> None:
    request = parse_request(
        b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;rport;branch=z9\r\nVia: SIP/2.0/UDP b\r\n"
        b"From: <sip:a@x>;tag=1\r\nTo: <sip:x>\r\nCall-ID: c\r\nCSeq: 7 OPTIONS\r\n\r\n"
    )
    text = render_response(request, 200, "OK", to_tag="t9", source=("10.0.0.1", 4000)).decode()
    assert text.startswith("SIP/2.0 200 OK\r\n")
    assert "Via: SIP/2.0/UDP a;rport=4000;branch=z9;received=10.0.0.1\r\nVia: SIP/2.0/UDP b" in text
    assert "To: <sip:x>;tag=t9" in text and "CSeq: 7 OPTIONS" in text
    assert text.endswith("Content-Length: 0\r\n\r\n")


def test_plan_binds_with_contact_param_then_header_then_default_and_caps_at_max() -> None:
    plan = plan_register(
        RegisterRequest(
            (RequestedContact("sip:a", 120), RequestedContact("sip:b", None)),
            False,
            7200,
            "cid",
            1,
        ),
        {},
        POLICY,
    )
    assert plan == RegisterPlan({"sip:a": 120, "sip:b": 3600}, frozenset())
    assert plan_register(req(("sip:a", None)), {}, POLICY) == RegisterPlan(
        {"sip:a": 1800}, frozenset()
    )


def test_plan_refuses_too_brief_out_of_order_and_too_many() -> None:
    brief = plan_register(req(("sip:a", 10)), {}, POLICY)
    assert brief == RegisterRefusal(423, "Interval Too Brief", min_expires_s=60)
    stored = {"sip:a": StoredBinding("cid", 5)}
    assert plan_register(req(("sip:a", 120), cseq=5), stored, POLICY) == RegisterRefusal(
        500, "out-of-order REGISTER (CSeq not higher)"
    )
    # Another Call-ID starts its own CSeq count: not out of order.
    other_call = {"sip:a": StoredBinding("old", 9)}
    assert plan_register(req(("sip:a", 120), cseq=1), other_call, POLICY) == RegisterPlan(
        {"sip:a": 120}, frozenset()
    )
    many = plan_register(req(("sip:b", 120), ("sip:c", 120)), stored, POLICY)
    assert isinstance(many, RegisterRefusal) and many.status == 403


def test_plan_expires_zero_removes_and_query_changes_nothing() -> None:
    stored = {"sip:a": StoredBinding("cid", 1), "sip:b": StoredBinding("cid", 1)}
    assert plan_register(req(("sip:a", 0)), stored, POLICY) == RegisterPlan(
        {}, frozenset({"sip:a"})
    )
    assert plan_register(req(), stored, POLICY) == RegisterPlan({}, frozenset())
    assert plan_register(req(("sip:new", 0)), stored, POLICY) == RegisterPlan({}, frozenset())


def test_wildcard_removes_all_but_bindings_of_a_newer_cseq_in_its_call_id() -> None:
    stored = {"sip:a": StoredBinding("cid", 9), "sip:b": StoredBinding("other", 50)}
    star = RegisterRequest((), True, 0, "cid", 3)
    assert plan_register(star, stored, POLICY) == RegisterPlan({}, frozenset({"sip:b"}))
    bad = RegisterRequest((), True, 60, "cid", 3)
    assert isinstance(plan_register(bad, stored, POLICY), RegisterRefusal)


def test_digest_matches_rfc2617_example() -> None:
    # RFC 2617 §3.5 (HTTP GET, qop=auth): the same arithmetic SIP uses.
    stored = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    credentials = {
        "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "uri": "/dir/index.html",
        "qop": "auth",
        "nc": "00000001",
        "cnonce": "0a4f113b",
        "response": "6629fae49393a05397450978507c4ef1",
    }
    assert response_matches(credentials, "GET", stored)
    assert not response_matches({**credentials, "nc": "00000002"}, "GET", stored)
    assert not response_matches({**credentials, "qop": "auth-int"}, "GET", stored)


async def test_nonces_expire_and_need_the_same_key() -> None:
    clock = ManualClock()
    nonces = Nonces(b"k" * 32, clock, ttl_s=300)
    nonce = nonces.issue("r")
    assert nonces.check(nonce, "r") is NonceCheck.OK
    assert Nonces(b"k" * 32, clock).check(nonce, "r") is NonceCheck.OK  # another node
    assert Nonces(b"x" * 32, clock).check(nonce, "r") is NonceCheck.BAD
    assert nonces.check(nonce, "other-realm") is NonceCheck.BAD
    await clock.advance(301)
    assert nonces.check(nonce, "r") is NonceCheck.STALE


def test_non_ascii_credentials_are_refused_not_raised() -> None:
    nonces = Nonces(b"k" * 32, ManualClock())
    assert nonces.check("1.é", "r") is NonceCheck.BAD
    assert not response_matches({"nonce": "n", "uri": "u", "response": "é"}, "REGISTER", "x")
