"""Recording downloads: with the account's credentials, or with a signed link that expires.

Downloads honour `Range` (206 with `Content-Range`; 416 for a range past the end), so browser
players can seek, from the data directory and from S3 storage alike.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from callbridge.api.byte_ranges import requested_range
from callbridge.api.envelope import failure, success
from callbridge.api.openapi import documented, envelope, media, str_param
from callbridge.api.openapi_models import RecordingLink
from callbridge.api.services import api_account, request_id, services
from callbridge.errors import NotFound, RangeNotSatisfiable
from callbridge.media.service import RecordingService

router = APIRouter()

_ID = re.compile(r"^[0-9a-f]{32}$")


def _recordings(request: Request) -> RecordingService:
    service: RecordingService | None = services(request).extras.get("recordings")
    if service is None:
        raise NotFound("recordings are not available")
    return service


async def _authorise(request: Request, account_sid: str, recording_id: str) -> None:
    """A valid signed link opens the recording; otherwise the account's credentials must.

    A link that has expired (or was tampered with) is a 404 on its own, but the credentials
    still open the same URL, so a client that kept a link and has the key loses nothing."""
    service = _recordings(request)
    expires = request.query_params.get("expires")
    signature = request.query_params.get("signature")
    if expires is not None and signature is not None:
        if service.link_is_valid(recording_id, expires, signature):
            return
        if request.headers.get("authorization") is None:
            raise NotFound("recording link is invalid or has expired")
    await api_account(request, account_sid)


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
    await _authorise(request, account_sid, recording_id)
    size = await service.size_of(account_sid, recording_id)
    if size is None:
        raise NotFound("recording not found")
    headers = {
        "Content-Disposition": f'inline; filename="{recording_id}.mp3"',
        "Accept-Ranges": "bytes",
    }
    try:
        wanted = requested_range(request.headers.get("range"), size)
    except RangeNotSatisfiable as exc:
        response = failure(request_id(request), request.method, exc)
        response.headers["Content-Range"] = f"bytes */{exc.size}"
        response.headers["Accept-Ranges"] = "bytes"
        return response
    if wanted is None:
        data = await service.read(account_sid, recording_id)
        if data is None:
            raise NotFound("recording not found")
        return Response(data, media_type="audio/mpeg", headers=headers)
    start, end = wanted
    part = await service.read_range(account_sid, recording_id, start, end)
    if part is None:
        raise NotFound("recording not found")
    headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{size}"
    return Response(part, status_code=206, media_type="audio/mpeg", headers=headers)


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
    if not _ID.match(recording_id) or await service.size_of(account.sid, recording_id) is None:
        raise NotFound("recording not found")
    link, expires = svc.links.link_and_expiry(account.sid, recording_id)
    return success(
        request_id(request),
        "POST",
        {"recording": {"id": recording_id, "url": link, "expires": expires}},
    )
