"""The v3 calls API: click-to-call, call details and legs (SPEC §2.2 to §2.5)."""

from __future__ import annotations

import json

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from callbridge.api.envelope import EnvelopeResponse, failure, success
from callbridge.api.idempotency import body_hash
from callbridge.api.openapi import (
    documented,
    envelope,
    header_param,
    int_param,
    listing,
    str_param,
)
from callbridge.api.openapi_models import CallDetails, LegDetails
from callbridge.api.params import query_int
from callbridge.api.plain import plain_route
from callbridge.api.schemas import CreateCallIn, parse_create_call
from callbridge.api.services import api_account, request_id, services
from callbridge.api.urls import check_call_urls
from callbridge.domain.views import call_details, leg_details
from callbridge.engine.admission import ClickToCall, admit_click_to_call
from callbridge.errors import (
    AccountSidMissing,
    CallbridgeError,
    CallNotFound,
    LegsCallNotFound,
    ValidationFailed,
    VirtualNumberNotFound,
)
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.store import calls as call_store
from callbridge.store.accounts import Account

router = APIRouter()


@plain_route(router, "/v3/accounts/{account_sid}/calls", "POST")
@documented(
    "Click-to-call: dial the agent (from), then the customer (to)",
    "calls",
    envelope("call_details", CallDetails),
    body=CreateCallIn,
    params=(
        header_param(
            "Idempotency-Key",
            "Replays of the same key and body within the TTL answer the first response.",
            maxLength=255,
        ),
    ),
)
async def create_call(request: Request) -> Response:
    svc = services(request)
    account = await api_account(request, request.path_params["account_sid"])
    body = await request.body()
    key = request.headers.get("idempotency-key")
    if key is None:
        return await _create_call(request, account, body)
    stored = await svc.idempotency.begin(account.sid, key, body_hash(body), svc.clock.now())
    if stored is not None:
        return Response(
            stored.body,
            status_code=stored.status,
            media_type="application/json",
            headers={
                "Idempotent-Replayed": "true",
                "X-Request-Id": _replayed_id(stored.body) or request_id(request),
            },
        )
    try:
        response = await _create_call(request, account, body)
    except CallbridgeError as exc:
        response = failure(request_id(request), "POST", exc)
    except BaseException:
        await svc.idempotency.finish(account.sid, key, 500, "")
        raise
    await svc.idempotency.finish(
        account.sid, key, response.status_code, bytes(response.body).decode()
    )
    return response


def _replayed_id(body: str) -> str:
    """The request id of a replayed response: the original's, as its body says."""
    try:
        rid = json.loads(body).get("request_id")
    except (ValueError, AttributeError):
        rid = None
    return rid if isinstance(rid, str) else ""


async def _create_call(request: Request, account: Account, body: bytes) -> EnvelopeResponse:
    with services(request).metrics.admission(account.sid, "v3"):
        return await _admit(request, account, body)


async def _admit(request: Request, account: Account, body: bytes) -> EnvelopeResponse:
    svc = services(request)
    payload = parse_create_call(body)
    region = account.region
    try:
        from_uri = normalise(payload.from_.contact_uri, region)
    except InvalidContactUri as exc:
        raise ValidationFailed(f"from.contact_uri: {exc}") from exc
    try:
        to_uri = normalise(payload.to.contact_uri, region)
    except InvalidContactUri as exc:
        raise ValidationFailed(f"to.contact_uri: {exc}") from exc
    try:
        virtual_number = normalise(payload.virtual_number, region)
    except InvalidContactUri as exc:
        raise VirtualNumberNotFound(f"virtual_number: {exc}") from exc
    options = payload.options()
    await check_call_urls(svc.guard, options)
    call = await admit_click_to_call(
        svc.engine,
        ClickToCall(
            account=account,
            from_uri=from_uri,
            to_uri=to_uri,
            virtual_number=virtual_number.uri,
            options=options,
            custom_field=payload.custom_field,
        ),
    )
    details = call_details(call, account.timezone)
    return success(request_id(request), "POST", {"call_details": details})


@plain_route(router, "/v3/accounts/{account_sid}/calls/{call_sid}", "GET")
@documented("A call's details", "calls", envelope("call_details", CallDetails))
async def get_call(request: Request) -> Response:
    svc = services(request)
    account = await api_account(request, request.path_params["account_sid"])
    call_sid: str = request.path_params["call_sid"]
    call = svc.engine.snapshot(account.sid, call_sid)
    if call is None:
        async with svc.store.read() as conn:
            call = await call_store.get_call(conn, account.sid, call_sid)
    if call is None:
        raise CallNotFound(f"call {call_sid[:64]} not found")
    # A signed link a CRM or a browser can fetch without credentials (which also still open it).
    details = call_details(call, account.timezone, lambda rid: svc.recording_link(rid, account.sid))
    return success(request_id(request), "GET", {"call_details": details})


@plain_route(router, "/v3/accounts/{account_sid}/calls/{call_sid}/legs", "GET")
@documented("A call's legs", "calls", envelope("leg_details", LegDetails))
async def get_legs(request: Request) -> Response:
    svc = services(request)
    account = await api_account(request, request.path_params["account_sid"])
    call_sid: str = request.path_params["call_sid"]
    async with svc.store.read() as conn:
        call = await call_store.get_call(conn, account.sid, call_sid)
        if call is None:
            raise LegsCallNotFound(f"call {call_sid[:64]} not found")
        legs = await call_store.get_legs(conn, call.sid)
    details = leg_details(account.sid, call.sid, legs, account.timezone)
    return success(request_id(request), "GET", {"leg_details": details})


@plain_route(router, "/v3/accounts/{account_sid}/calls", "GET")
@documented(
    "Recent calls, newest first",
    "calls",
    listing("call_details", CallDetails),
    params=(
        int_param("limit", "How many calls.", 1, 200),
        str_param("state", "`active`: only calls not yet ended.", enum=["active"]),
    ),
)
async def list_calls(request: Request) -> Response:
    svc = services(request)
    account = await api_account(request, request.path_params["account_sid"])
    limit = query_int(request.query_params.get("limit"), "limit", 50, 1, 200)
    active = request.query_params.get("state") == "active"
    async with svc.store.read() as conn:
        found = await call_store.list_calls(conn, account.sid, limit=limit, active_only=active)

    def recording_url(rid: str) -> str:
        return svc.recording_link(rid, account.sid)

    items = [
        {
            "code": 200,
            "status": "success",
            "call_details": call_details(c, account.timezone, recording_url),
        }
        for c in found
    ]
    return success(
        request_id(request),
        "GET",
        items,
        metadata={"count": len(items), "limit": limit},
    )


@router.api_route("/v3/accounts//calls", methods=["GET", "POST"], include_in_schema=False)
@router.api_route("/v3/accounts/calls", methods=["GET", "POST"], include_in_schema=False)
async def calls_without_account(request: Request) -> Response:
    raise AccountSidMissing("the path must name the account: /v3/accounts/{account_sid}/calls")
