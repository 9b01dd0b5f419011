"""A flow's dynamic URL (Exotel CCM programmable connect): the GET with the call's details, the
bounded answer, and what that answer changes in the call's options."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from datetime import datetime

import httpx

from callbridge.domain.calls import Call
from callbridge.domain.flows import ConnectStep, Strategy
from callbridge.domain.options import CallOptions
from callbridge.domain.routing import DynamicResponseInvalid, DynamicRoute, parse_dynamic_response
from callbridge.domain.views import zone
from callbridge.webhooks.ssrf import PinnedTransport, UnsafeUrl, UrlGuard

log = logging.getLogger(__name__)

MAX_URL_BODY_BYTES = 64 * 1024
EXOTEL_VERSION = "1.1"


def route_params(
    call: Call, *, tz_name: str, now: datetime, last_dialled: str | None
) -> dict[str, str]:
    """The query Exotel sends to a programmable-connect URL (times in the account timezone)."""
    tz = zone(tz_name)
    return {
        "CallSid": call.sid,
        "CallFrom": call.from_uri,
        "CallTo": call.virtual_number,
        "From": call.from_uri,
        "To": call.virtual_number,
        "Direction": "incoming",
        "Created": call.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
        "CurrentTime": now.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
        "flow_id": call.app_id or "",
        "CustomField": call.custom_field or "",
        "DialWhomNumber": last_dialled or "",
        "digits": call.digits or "",
    }


async def fetch_route(
    guard: UrlGuard, connect: ConnectStep, params: dict[str, str], region: str
) -> DynamicRoute | None:
    """GET the flow's dynamic URL; None when it fails (the caller applies the fallback)."""
    url = connect.url
    if url is None:
        return None
    call_sid = params.get("CallSid")
    headers = {"Exotel-Version": EXOTEL_VERSION, "Accept": "application/json"}
    started = asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout(connect.url_timeout_s):
            await guard.check(url)
            transport = PinnedTransport(guard, max_connections=1)
            async with (
                httpx.AsyncClient(transport=transport, timeout=connect.url_timeout_s) as client,
                client.stream(
                    "GET",
                    httpx.URL(url).copy_merge_params(params),
                    headers=headers,
                    follow_redirects=False,
                ) as response,
            ):
                if response.status_code != 200:
                    raise DynamicResponseInvalid(f"HTTP {response.status_code}")
                body = bytearray()
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) > MAX_URL_BODY_BYTES:
                        raise DynamicResponseInvalid("answer too large")
        route = parse_dynamic_response(json.loads(body), region)
    except (UnsafeUrl, httpx.HTTPError, TimeoutError, ValueError) as exc:
        # DynamicResponseInvalid and JSONDecodeError are ValueErrors too.
        log.warning(
            "dynamic URL failed; using the fallback",
            extra={
                "call_sid": call_sid,
                "error": type(exc).__name__,
                "reason": str(exc)[:120] if isinstance(exc, DynamicResponseInvalid) else None,
            },
        )
        return None
    log.info(
        "dynamic URL answered",
        extra={
            "call_sid": call_sid,
            "targets": len(route.targets),
            "elapsed_ms": round((asyncio.get_running_loop().time() - started) * 1000, 1),
        },
    )
    return route


def apply_route(
    options: CallOptions, strategy: Strategy, route: DynamicRoute
) -> tuple[CallOptions, Strategy]:
    """The call's options and strategy once the URL's answer overrides some of them."""
    if route.max_ringing_duration_s is not None:
        options = replace(options, attempt_timeout_s=route.max_ringing_duration_s)
    if route.max_conversation_duration_s is not None:
        options = replace(options, max_time_limit_s=route.max_conversation_duration_s)
    if route.record is not None or route.recording_channels is not None:
        recording = options.recording
        if route.record is not None:
            recording = replace(recording, record=route.record)
        if route.recording_channels is not None:
            recording = replace(recording, channels=route.recording_channels)
        options = replace(options, recording=recording)
    if route.parallel:
        strategy = Strategy.SIMULTANEOUS
    return options, strategy
