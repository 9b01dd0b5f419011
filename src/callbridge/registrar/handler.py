"""Answering one SIP request at the registrar: REGISTER (digest challenge, credentials checked
against every device with that AOR, bindings written in one transaction), OPTIONS (200, so a
proxy can health-check us), and 405 for anything else. Transport-free: bytes in, bytes out."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from callbridge.clock import Clock
from callbridge.domain.registration import (
    ExpiryPolicy,
    RegisterPlan,
    RegisterRefusal,
    RegisterRequest,
    RequestedContact,
    plan_register,
)
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.registrar.digest import NonceCheck, Nonces, challenge, response_matches
from callbridge.registrar.message import (
    SipParseError,
    SipRequest,
    is_request,
    parse_name_addr,
    parse_params,
    parse_request,
    render_response,
)
from callbridge.store import registrations as reg_store
from callbridge.store.repo import Store

log = logging.getLogger("callbridge.registrar")

ALLOW = "REGISTER, OPTIONS"
SERVER = "callbridge-registrar"
MAX_FIELD = 255
"""Call-ID, Contact and User-Agent longer than the store's columns are refused (400)."""


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    realm: str
    policy: ExpiryPolicy


class _Refused(Exception):
    def __init__(self, status: int, reason: str, *extra: tuple[str, str]) -> None:
        super().__init__(reason)
        self.status, self.reason, self.extra = status, reason, extra


class RegistrarHandler:
    def __init__(self, store: Store, clock: Clock, config: RegistrarConfig, nonces: Nonces) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._nonces = nonces
        self._tag = secrets.token_hex(6)

    async def handle(self, data: bytes, source: tuple[str, int], transport: str) -> bytes | None:
        """The response to send back to `source`, or None (responses, ACKs, garbage)."""
        if not data.strip() or not is_request(data):
            return None
        try:
            request = parse_request(data)
        except SipParseError as exc:
            log.info("sip registrar dropped a message from %s: %s", source[0], exc)
            return None
        if request.method == "ACK":
            return None
        if not all(request.get(h) for h in ("via", "from", "to", "call-id", "cseq")):
            return render_response(request, 400, "Missing Mandatory Header", source=source)
        try:
            if request.method == "REGISTER":
                return await self._register(request, source, transport)
            if request.method == "OPTIONS":
                return self._reply(request, 200, "OK", ("Accept", "application/sdp"), source=source)
            return self._reply(request, 405, "Method Not Allowed", source=source)
        except _Refused as exc:
            return self._reply(request, exc.status, exc.reason, *exc.extra, source=source)

    def _reply(
        self,
        request: SipRequest,
        status: int,
        reason: str,
        *extra: tuple[str, str],
        source: tuple[str, int] | None = None,
    ) -> bytes:
        headers = [("Allow", ALLOW), ("Server", SERVER), *extra]
        return render_response(
            request,
            status,
            reason,
            headers,
            to_tag=self._tag if status > 100 else None,
            source=source,
        )

    async def _register(
        self, request: SipRequest, source: tuple[str, int], transport: str
    ) -> bytes:
        aor = _aor(request)
        call_id, cseq = _call_id_and_cseq(request)
        realm = self._config.realm
        auth = request.get("authorization")
        if auth is None:
            raise _Refused(401, "Unauthorized", _www_auth(self._nonces, realm))
        credentials = _credentials(auth)
        if credentials.get("realm") != realm:
            raise _Refused(401, "Unauthorized", _www_auth(self._nonces, realm))
        state = self._nonces.check(credentials.get("nonce", ""), realm)
        if state is not NonceCheck.OK:
            raise _Refused(
                401, "Unauthorized", _www_auth(self._nonces, realm, stale=state is NonceCheck.STALE)
            )
        user = aor.split(":", 1)[1].split("@", 1)[0]
        if credentials.get("username") != user:
            raise _Refused(403, "Forbidden")
        request_data = _register_request(request, call_id, cseq)
        now = self._clock.now()
        async with self._store.read() as conn:
            candidates = await reg_store.devices_for_aor(conn, aor)
        matched = [d for d in candidates if response_matches(credentials, "REGISTER", d.ha1)]
        if not matched:
            # Unknown AOR and wrong password look the same, so AORs cannot be probed.
            log.info("sip register refused aor=%s source=%s", aor, source[0])
            raise _Refused(403, "Forbidden")
        user_agent = (request.get("user-agent") or "")[:128] or None
        contacts: list[str] = []
        async with self._store.tx() as conn:
            for device in matched:
                stored = await reg_store.lock_bindings(conn, device.id, now)
                if stored is None:
                    continue
                outcome = plan_register(request_data, stored, self._config.policy)
                if isinstance(outcome, RegisterRefusal):
                    extra = (
                        [("Min-Expires", str(outcome.min_expires_s))]
                        if outcome.min_expires_s
                        else []
                    )
                    raise _Refused(outcome.status, outcome.reason, *extra)
                await reg_store.apply_plan(
                    conn,
                    device.id,
                    outcome,
                    stored,
                    call_id=call_id,
                    cseq=cseq,
                    source=f"{transport}:{source[0]}:{source[1]}"[:128],
                    user_agent=user_agent,
                    now=now,
                )
                if not contacts:
                    contacts = [
                        f"<{b.contact}>;expires={max(0, int((b.expires_at - now).total_seconds()))}"
                        for b in await reg_store.bindings_of(conn, device.id, now)
                    ]
                _log_plan(aor, device.id, outcome, source)
        extra = [("Contact", c) for c in contacts]
        return self._reply(request, 200, "OK", *extra, ("Date", _http_date(now)), source=source)


def _aor(request: SipRequest) -> str:
    try:
        to = parse_name_addr(request.get("to") or "")
        aor = normalise(to.uri).uri
    except (SipParseError, InvalidContactUri) as exc:
        raise _Refused(400, "Bad To header") from exc
    if not aor.startswith("sip:") or "@" not in aor:
        raise _Refused(404, "Not Found")
    return aor


def _call_id_and_cseq(request: SipRequest) -> tuple[str, int]:
    call_id = request.get("call-id") or ""
    number, _, method = (request.get("cseq") or "").partition(" ")
    if len(call_id) > MAX_FIELD or not number.isdigit() or method.strip().upper() != "REGISTER":
        raise _Refused(400, "Bad Call-ID or CSeq")
    cseq = int(number)
    if cseq >= 2**31:
        raise _Refused(400, "Bad CSeq")
    return call_id, cseq


def _credentials(header: str) -> dict[str, str]:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        raise _Refused(400, "Only Digest authorization is supported")
    try:
        return parse_params(rest)
    except SipParseError as exc:
        raise _Refused(400, "Malformed Authorization") from exc


def _register_request(request: SipRequest, call_id: str, cseq: int) -> RegisterRequest:
    expires_header: int | None = None
    raw_expires = request.get("expires")
    if raw_expires is not None:
        if not raw_expires.strip().isdigit():
            raise _Refused(400, "Bad Expires")
        expires_header = min(int(raw_expires.strip()), 2**31 - 1)
    contacts: list[RequestedContact] = []
    wildcard = False
    for value in request.get_all("contact"):
        if value.strip() == "*":
            wildcard = True
            continue
        try:
            name_addr = parse_name_addr(value)
        except SipParseError as exc:
            raise _Refused(400, "Bad Contact") from exc
        if len(name_addr.uri) > MAX_FIELD or not name_addr.uri.lower().startswith("sip"):
            raise _Refused(400, "Bad Contact")
        raw = name_addr.params.get("expires")
        if raw is not None and not raw.isdigit():
            raise _Refused(400, "Bad Contact expires")
        expires = min(int(raw), 2**31 - 1) if raw is not None else None
        contacts.append(RequestedContact(name_addr.uri, expires))
    return RegisterRequest(tuple(contacts), wildcard, expires_header, call_id, cseq)


def _www_auth(nonces: Nonces, realm: str, *, stale: bool = False) -> tuple[str, str]:
    return ("WWW-Authenticate", challenge(realm, nonces.issue(realm), stale=stale))


def _log_plan(aor: str, device_id: str, plan: RegisterPlan, source: tuple[str, int]) -> None:
    log.info(
        "sip register aor=%s device=%s bound=%d removed=%d source=%s",
        aor,
        device_id,
        len(plan.upserts),
        len(plan.removals),
        source[0],
    )


def _http_date(now: datetime) -> str:
    return format_datetime(now.astimezone(UTC), usegmt=True)
