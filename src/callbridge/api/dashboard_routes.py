"""The live view's routes: the dashboard page and its SSE stream of calls and agents.

`GET /dashboard` serves the page (no credentials; it asks for them). The stream is
`GET /v3/accounts/{sid}/live` (the path account must be the credentials') or
`GET /dashboard/live` (the credentials' own account, so the page needs only key and token).
The hub is created on the first subscription and attached to the engine's commit listener.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from callbridge.api.openapi import documented, media
from callbridge.api.services import Services, api_account, authenticated, request_id, services
from callbridge.dashboard.live import LiveHub, Subscription, SubscriptionClosed, TooManySubscribers
from callbridge.dashboard.page import load_page
from callbridge.dashboard.views import KEEP_ALIVE_FRAME, sse_frame
from callbridge.errors import TooManyRequests
from callbridge.store.accounts import Account

router = APIRouter()

HUB_KEY = "dashboard_hub"
"""Where the hub lives in `Services.extras`; a test may put a tuned `LiveHub` there first."""
RETRY_AFTER_S = 5


def live_hub(svc: Services) -> LiveHub:
    """The app's hub, created and attached to the engine on first use."""
    hub = svc.extras.get(HUB_KEY)
    if not isinstance(hub, LiveHub):
        hub = LiveHub(svc.store, svc.clock)
        svc.extras[HUB_KEY] = hub
    if not hub.attached:
        svc.engine.add_listener(hub.on_call)
        hub.attached = True
    return hub


def close_live_streams(app: Any) -> None:
    """End every open live stream of `app` at once. Open streams otherwise hold a server's
    graceful shutdown for its whole timeout; call this from the server's exit hook, on the
    event loop's thread (e.g. `loop.call_soon_threadsafe(close_live_streams, app)`)."""
    svc = getattr(app.state, "services", None)
    hub = svc.extras.get(HUB_KEY) if svc is not None else None
    if isinstance(hub, LiveHub):
        hub.close_streams()


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page() -> Response:
    page = load_page()
    return Response(page.html, media_type="text/html; charset=utf-8", headers=page.headers)


@router.get("/dashboard/live")
@documented(
    "Live events of the credentials' account (Server-Sent Events)",
    "dashboard",
    media("text/event-stream"),
)
async def own_live_stream(request: Request) -> Response:
    svc = services(request)
    account = await authenticated(request)
    svc.rate_limiter.check(account.sid, account.rate_limit_per_minute)
    return _open_stream(request, account)


@router.get("/v3/accounts/{account_sid}/live")
@documented(
    "Live events of the account (Server-Sent Events)", "dashboard", media("text/event-stream")
)
async def live_stream(request: Request, account_sid: str) -> Response:
    account = await api_account(request, account_sid)
    return _open_stream(request, account)


class _LiveResponse(StreamingResponse):
    """Unsubscribes when the response ends however it ends, even if the body never started
    (the client left before the first frame)."""

    def __init__(self, frames: AsyncIterator[str], on_close: Callable[[], None], rid: str) -> None:
        super().__init__(
            frames,
            media_type="text/event-stream",
            headers={
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                "X-Request-Id": rid,
            },
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _open_stream(request: Request, account: Account) -> Response:
    hub = live_hub(services(request))
    try:
        subscription = hub.subscribe(account)
    except TooManySubscribers as exc:
        raise TooManyRequests(
            RETRY_AFTER_S, f"at most {hub.max_subscribers} live streams per account"
        ) from exc
    return _LiveResponse(
        _frames(hub, subscription), lambda: hub.unsubscribe(subscription), request_id(request)
    )


async def _frames(hub: LiveHub, subscription: Subscription) -> AsyncIterator[str]:
    try:
        # A first comment flushes the headers at once, so the page knows it is connected.
        yield ": callbridge live\n\n"
        while True:
            try:
                frame = await subscription.next_frame(hub.keepalive_s)
            except SubscriptionClosed as exc:
                yield sse_frame("closed", {"reason": exc.reason})
                return
            yield KEEP_ALIVE_FRAME if frame is None else frame
    finally:
        hub.unsubscribe(subscription)
