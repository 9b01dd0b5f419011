"""`GET /metrics`: this process's Prometheus metrics in the text exposition format."""

from __future__ import annotations

import hmac

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response

from callbridge.errors import AuthenticationFailed
from callbridge.metrics import Metrics


def metrics_router(metrics: Metrics, token: SecretStr | None) -> APIRouter:
    """The route, open (as Prometheus scrapes by default) unless a bearer `token` is set."""
    router = APIRouter()
    expected = f"Bearer {token.get_secret_value()}".encode() if token is not None else None

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        description="Calls, admissions, callbacks, streams, leases and request latency of this "
        "process; `Authorization: Bearer …` when `CALLBRIDGE_METRICS_TOKEN` is set.",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def get_metrics(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise AuthenticationFailed("metrics need Authorization: Bearer <metrics token>")
        body = await metrics.render(getattr(request.app.state, "services", None))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
