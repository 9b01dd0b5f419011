"""ExoPhones as Exotel's v2_beta API lists them (`IncomingPhoneNumbers`, JSON only), next to
callbridge's own ExoPhones API. `voice_url` names the attached flow the way v1's `Calls/connect`
accepts it back (`http://my.exotel.com/{sid}/exoml/start_voice/{flow_id}`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response

from callbridge.api.exophones_routes import find_phone
from callbridge.api.services import services, v1_account
from callbridge.api.v1_dialect import legacy_response
from callbridge.api.v1_schemas import (
    V1_ERRORS,
    IncomingPhoneNumber,
    IncomingPhoneNumberList,
    add_catch_all,
)
from callbridge.domain.v1_views import format_v1_time
from callbridge.errors import NotFound, NotProvided
from callbridge.store import flows as flow_store
from callbridge.store.accounts import Account

router = APIRouter(tags=["Exotel v2_beta"])

MAX_PAGE_SIZE = 100


def voice_url(account_sid: str, flow_id: str | None) -> str | None:
    if flow_id is None:
        return None
    return f"http://my.exotel.com/{account_sid}/exoml/start_voice/{flow_id}"


def _phone(phone: flow_store.ExoPhoneRow, account: Account) -> dict[str, Any]:
    return {
        "sid": phone.id,
        "account_sid": account.sid,
        "friendly_name": phone.number,
        "phone_number": phone.number,
        "voice_url": voice_url(account.sid, phone.flow_id),
        "sms_url": None,
        "capabilities": {"voice": True, "sms": False},
        "number_type": None,
        "date_created": format_v1_time(phone.created_at, account.timezone),
        "date_updated": format_v1_time(phone.updated_at, account.timezone),
        "uri": f"/v2_beta/Accounts/{account.sid}/IncomingPhoneNumbers/{phone.id}",
    }


V1Account = Annotated[Account, Depends(v1_account)]
Page = Annotated[int, Query(alias="Page", ge=0, le=1_000_000)]
PageSize = Annotated[int, Query(alias="PageSize", ge=1, le=MAX_PAGE_SIZE)]


@router.get(
    "/v2_beta/Accounts/{account_sid}/IncomingPhoneNumbers",
    response_model=IncomingPhoneNumberList,
    responses=V1_ERRORS,
    summary="List the account's ExoPhones",
)
@router.get(
    "/v2_beta/Accounts/{account_sid}/IncomingPhoneNumbers.json",
    response_model=IncomingPhoneNumberList,
    responses=V1_ERRORS,
    summary="List the account's ExoPhones (.json)",
)
async def list_numbers(
    request: Request, account: V1Account, page: Page = 0, page_size: PageSize = 50
) -> Response:
    svc = services(request)
    async with svc.store.read() as conn:
        phones, total = await flow_store.list_exophones(
            conn, account.sid, offset=page * page_size, limit=page_size
        )

    def uri(number: int) -> str:
        return f"{request.url.path}?Page={number}&PageSize={page_size}"

    body = {
        "page": page,
        "page_size": page_size,
        "uri": uri(page),
        "first_page_uri": uri(0),
        "next_page_uri": uri(page + 1) if (page + 1) * page_size < total else None,
        "previous_page_uri": uri(page - 1) if page > 0 else None,
        "incoming_phone_numbers": [_phone(p, account) for p in phones],
    }
    return legacy_response(body, as_json=True)


@router.get(
    "/v2_beta/Accounts/{account_sid}/IncomingPhoneNumbers/{phone_sid}",
    response_model=IncomingPhoneNumber,
    responses=V1_ERRORS,
    summary="One ExoPhone, by its sid or its number (a .json suffix is allowed)",
)
async def get_number(request: Request, account: V1Account, phone_sid: str) -> Response:
    svc = services(request)
    phone = await find_phone(svc, account, phone_sid.removesuffix(".json"))
    return legacy_response(_phone(phone, account), as_json=True)


async def other_v2_beta(request: Request, account_sid: str, rest: str) -> Response:
    """ExoPhone changes and purchases answer 404 saying callbridge has its own API for them;
    anything else (an ExoPhone id that cannot exist, another family) is a plain 404."""
    family = rest.split("/", 1)[0].lower().removesuffix(".json")
    if family == "incomingphonenumbers" and request.method != "GET":
        raise NotProvided(
            f"callbridge does not provide {request.method} here: change ExoPhones with "
            "/v2/accounts/{sid}/exophones"
        )
    if family == "availablephonenumbers":
        raise NotProvided("callbridge does not provide Exotel's ExoPhone purchase API")
    raise NotFound(f"no such v2_beta resource: {request.url.path[:128]}")


add_catch_all(
    router,
    "/v2_beta/Accounts/{account_sid}/{rest:path}",
    other_v2_beta,
    summary="Other v2_beta endpoints: 404 (ExoPhone changes name callbridge's own API)",
)
