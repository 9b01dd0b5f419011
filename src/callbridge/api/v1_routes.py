"""Exotel's v1 Calls API on the same engine as v3: `Calls/connect` (two numbers, or a number
and a flow), call details and bulk call details. Paths answer XML, or JSON with `.json`;
errors are v1's `RestException` (rendered by `v1_dialect.error_response`).

v1 Exotel endpoints callbridge does not provide (SMS, number lookup…) answer 404 with a message
that says so; any other unknown v1 path is a 404 in the same shape.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query
from starlette.requests import Request
from starlette.responses import Response

from callbridge.api.services import Services, services, v1_account
from callbridge.api.urls import check_call_urls
from callbridge.api.v1_dialect import legacy_response
from callbridge.api.v1_forms import URL_LABELS, V1ConnectForm, call_options, flow_target
from callbridge.api.v1_listing import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    ListQuery,
    build_search,
    list_page,
    page_metadata,
)
from callbridge.api.v1_schemas import (
    V1_ERRORS,
    XML_BODY,
    V1CallList,
    V1CallResponse,
    add_catch_all,
)
from callbridge.domain.options import CallOptions
from callbridge.domain.v1_views import v1_call
from callbridge.engine.admission import ClickToCall, RunnerFactory, admit_click_to_call
from callbridge.engine.core import CallRunner
from callbridge.engine.flow_call import FlowCallRunner
from callbridge.engine.inbound import InboundService, options_for
from callbridge.engine.writes import Admitted
from callbridge.errors import (
    CallNotFound,
    MethodNotAllowed,
    NotFound,
    NotProvided,
    ValidationFailed,
    VirtualNumberNotFound,
)
from callbridge.numbers import ContactUri, InvalidContactUri, normalise
from callbridge.store import calls as call_store
from callbridge.store import flows as flow_store
from callbridge.store.accounts import Account

router = APIRouter(tags=["Exotel v1"])

ConnectForm = Annotated[V1ConnectForm, Form()]
V1Account = Annotated[Account, Depends(v1_account)]
"""Authenticated (and rate-limited) before the form or query is validated, so a request
without credentials is a 401 whatever else it lacks."""
XML_ANSWER: dict[int | str, dict[str, object]] = {
    200: {"content": XML_BODY},
    **{status: {"content": XML_BODY, "description": "RestException"} for status in V1_ERRORS},
}

NOT_PROVIDED = {
    "sms": "SMS API (Sms/send, Sms/Messages)",
    "numbers": "number lookup and metadata API (Numbers/{number})",
    "customerwhitelist": "customer whitelist API",
    "customer": "customer whitelist API",
    "incomingphonenumbers": (
        "v1 ExoPhone API: list ExoPhones at /v2_beta/Accounts/{sid}/IncomingPhoneNumbers "
        "and manage them at /v2/accounts/{sid}/exophones"
    ),
    "availablephonenumbers": "ExoPhone purchase API",
}
"""v1 endpoint families Exotel has and callbridge does not, by their first path segment."""


def _number(raw: str, field: str, region: str) -> ContactUri:
    try:
        return normalise(raw, region)
    except InvalidContactUri as exc:
        raise ValidationFailed(f"{field}: {exc}") from exc


async def _caller_id(svc: Services, account: Account, raw: str) -> str:
    try:
        number = normalise(raw, account.region).uri
    except InvalidContactUri as exc:
        raise VirtualNumberNotFound(f"CallerId: {exc}") from exc
    async with svc.store.read() as conn:
        if await flow_store.find_exophone(conn, account.sid, number=number) is None:
            raise VirtualNumberNotFound(f"CallerId: {number} is not an ExoPhone of this account")
    return number


def _flow_runner(svc: Services, account: Account, flow: flow_store.Flow) -> RunnerFactory:
    inbound: InboundService = svc.extras["inbound"]

    def build(admitted: Admitted, tz_name: str) -> CallRunner:
        return FlowCallRunner(
            svc.engine,
            admitted.call,
            admitted.options,
            tz_name,
            inbound,
            account,
            flow.definition,
            admitted.from_leg,
        )

    return build


async def _connect(
    request: Request, account: Account, form: V1ConnectForm, *, as_json: bool
) -> Response:
    svc = services(request)
    raw = await request.form()
    from_uri = _number(form.From, "From", account.region)
    virtual_number = await _caller_id(svc, account, form.CallerId)
    if form.Url is not None and form.To is not None:
        raise ValidationFailed(
            "To, Url: give To to connect two numbers or Url for a flow, not both"
        )
    to_uri: ContactUri | None = None
    app: tuple[str, str | None] | None = None
    runner: RunnerFactory | None = None
    if form.Url is not None:
        target = flow_target(form.Url)
        if target.account_sid not in (None, account.sid):
            raise ValidationFailed(f"Url: names account {target.account_sid[:64]}, not this one")
        async with svc.store.read() as conn:
            flow = await flow_store.get_flow(conn, account.sid, target.app_id)
        if flow is None:
            raise NotFound(f"Url: flow {target.app_id[:64]} not found")
        base = options_for(flow.definition)
        app, runner = (flow.id, flow.name), _flow_runner(svc, account, flow)
    elif form.To is not None:
        to_uri = _number(form.To, "To", account.region)
        base = CallOptions()
    else:
        raise ValidationFailed("To: Field required (or Url, to connect From to a flow)")
    options = call_options(form, raw, base)
    await check_call_urls(svc.guard, options, URL_LABELS)
    call = await admit_click_to_call(
        svc.engine,
        ClickToCall(
            account=account,
            from_uri=from_uri,
            to_uri=to_uri,
            virtual_number=virtual_number,
            options=options,
            custom_field=form.CustomField,
            app=app,
        ),
        runner=runner,
    )
    return legacy_response({"Call": v1_call(call, [], account.timezone)}, as_json=as_json)


@router.post(
    "/v1/Accounts/{account_sid}/Calls/connect.json",
    response_model=V1CallResponse,
    responses=V1_ERRORS,
    summary="Connect two numbers, or a number to a flow (JSON)",
)
async def connect_json(request: Request, account: V1Account, form: ConnectForm) -> Response:
    return await _connect(request, account, form, as_json=True)


@router.post(
    "/v1/Accounts/{account_sid}/Calls/connect",
    response_class=Response,
    responses=XML_ANSWER,
    summary="Connect two numbers, or a number to a flow (XML)",
)
async def connect_xml(request: Request, account: V1Account, form: ConnectForm) -> Response:
    return await _connect(request, account, form, as_json=False)


RecordingUrlValidity = Annotated[
    int | None,
    Query(
        alias="RecordingUrlValidity",
        ge=5,
        le=60,
        description="Minutes the recording link in the answer stays valid",
    ),
]


async def _details(
    request: Request, account: Account, call_sid: str, validity_min: int | None, *, as_json: bool
) -> Response:
    svc = services(request)
    async with svc.store.read() as conn:
        call = await call_store.get_call(conn, account.sid, call_sid)
        if call is None:
            raise CallNotFound(f"call {call_sid[:64]} not found")
        legs = await call_store.get_legs(conn, call.sid)
    ttl_s = validity_min * 60 if validity_min is not None else None

    def link(rid: str) -> str:
        return svc.recording_link(rid, account.sid, ttl_s)

    return legacy_response({"Call": v1_call(call, legs, account.timezone, link)}, as_json=as_json)


@router.get(
    "/v1/Accounts/{account_sid}/Calls/{call_sid}.json",
    response_model=V1CallResponse,
    responses=V1_ERRORS,
    summary="Call details (JSON)",
)
async def call_details_json(
    request: Request, account: V1Account, call_sid: str, validity: RecordingUrlValidity = None
) -> Response:
    return await _details(request, account, call_sid, validity, as_json=True)


@router.get(
    "/v1/Accounts/{account_sid}/Calls/{call_sid}",
    response_class=Response,
    responses=XML_ANSWER,
    summary="Call details (XML)",
)
async def call_details_xml(
    request: Request, account: V1Account, call_sid: str, validity: RecordingUrlValidity = None
) -> Response:
    return await _details(request, account, call_sid, validity, as_json=False)


def _list_query(
    page_size: Annotated[int, Query(alias="PageSize", ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    sort_by: Annotated[str | None, Query(alias="SortBy", max_length=32)] = None,
    before: Annotated[str | None, Query(alias="Before", max_length=128)] = None,
    after: Annotated[str | None, Query(alias="After", max_length=128)] = None,
    sid: Annotated[str | None, Query(alias="Sid", max_length=8192)] = None,
    date_created: Annotated[str | None, Query(alias="DateCreated", max_length=128)] = None,
    status: Annotated[str | None, Query(alias="Status", max_length=128)] = None,
    from_: Annotated[str | None, Query(alias="From", max_length=512)] = None,
    to: Annotated[str | None, Query(alias="To", max_length=512)] = None,
) -> ListQuery:
    return ListQuery(page_size, sort_by, before, after, sid, date_created, status, from_, to)


ListParams = Annotated[ListQuery, Depends(_list_query)]


async def _list(request: Request, account: Account, query: ListQuery, *, as_json: bool) -> Response:
    svc = services(request)
    search, wanted = build_search(account, query)
    page = await list_page(svc.store, search, query.page_size, wanted)

    def link(rid: str) -> str:
        return svc.recording_link(rid, account.sid)

    body = {
        "Metadata": page_metadata(request.url.path, query, page),
        "Calls": [v1_call(call, legs, account.timezone, link) for call, legs in page.items],
    }
    return legacy_response(body, as_json=as_json)


@router.get(
    "/v1/Accounts/{account_sid}/Calls.json",
    response_model=V1CallList,
    responses=V1_ERRORS,
    summary="Bulk call details (JSON)",
)
async def list_calls_json(request: Request, account: V1Account, query: ListParams) -> Response:
    return await _list(request, account, query, as_json=True)


@router.get(
    "/v1/Accounts/{account_sid}/Calls",
    response_class=Response,
    responses=XML_ANSWER,
    summary="Bulk call details (XML)",
)
async def list_calls_xml(request: Request, account: V1Account, query: ListParams) -> Response:
    return await _list(request, account, query, as_json=False)


async def other_v1(request: Request, account_sid: str, rest: str) -> Response:
    """Exotel v1 endpoints callbridge does not provide answer 404 saying so; others 404."""
    family = rest.split("/", 1)[0].lower().removesuffix(".json")
    if family in NOT_PROVIDED:
        raise NotProvided(f"callbridge does not provide Exotel's {NOT_PROVIDED[family]}")
    if family == "calls" and rest.count("/") <= 1:
        raise MethodNotAllowed(
            f"{request.method} is not allowed on /v1/Accounts/{{sid}}/{rest[:64]}"
        )
    raise NotFound(f"no such v1 resource: {request.url.path[:128]}")


add_catch_all(
    router,
    "/v1/Accounts/{account_sid}/{rest:path}",
    other_v1,
    summary="Other v1 endpoints: 404, saying so for Exotel's that callbridge does not provide",
)
