"""Recording downloads: with the account's credentials, or with a signed link that expires."""

from __future__ import annotations

import re

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from callbridge.api.envelope import success
from callbridge.api.openapi import documented, envelope, media, str_param
from callbridge.api.openapi_models import RecordingLink
from callbridge.api.services import api_account, request_id, services
from callbridge.errors import NotFound
from callbridge.media.service import RecordingService

router = APIRouter()

_ID = re.compile(r"^[0-9a-f]{32}$")


def _recordings(request: Request) -> RecordingService:
    service: RecordingService | None = services(request).extras.get("recordings")
    if service is None:
        raise NotFound("recordings are not available")
    return service


@router.get("/v3/accounts/{account_sid}/recordings/{recording_id}.mp3")
@documented(
    "A recording (MP3): with the account's credentials or a signed link",
    "recordings",
    media("audio/mpeg"),
    auth="basic_or_link",
    params=(
        str_param("expires", "Signed link: expiry (Unix seconds)."),
        str_param("signature", "Signed link: its signature."),
    ),
)
async def download(request: Request, account_sid: str, recording_id: str) -> Response:
    service = _recordings(request)
    if not _ID.match(recording_id):
        raise NotFound("recording not found")
    expires = request.query_params.get("expires")
    signature = request.query_params.get("signature")
    if expires is not None and signature is not None:
        if not service.link_is_valid(recording_id, expires, signature):
            raise NotFound("recording link is invalid or has expired")
    else:
        await api_account(request, account_sid)
    data = await service.read(account_sid, recording_id)
    if data is None:
        raise NotFound("recording not found")
    return Response(
        data,
        media_type="audio/mpeg",
        headers={"Content-Disposition": f'inline; filename="{recording_id}.mp3"'},
    )


@router.post("/v3/accounts/{account_sid}/recordings/{recording_id}/links")
@documented(
    "Mint a signed, expiring link to a recording",
    "recordings",
    envelope("recording", RecordingLink),
)
async def create_link(request: Request, account_sid: str, recording_id: str) -> Response:
    """A signed link that anyone can use until it expires (`recording_link_ttl_s`)."""
    svc = services(request)
    account = await api_account(request, account_sid)
    service = _recordings(request)
    if not _ID.match(recording_id) or await service.read(account.sid, recording_id) is None:
        raise NotFound("recording not found")
    query = service.signed_query(recording_id)
    url = svc.recording_url(recording_id, account.sid)
    link = f"{url}?expires={query['expires']}&signature={query['signature']}"
    return success(
        request_id(request),
        "POST",
        {"recording": {"id": recording_id, "url": link, "expires": int(query["expires"])}},
    )
