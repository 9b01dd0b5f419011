"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from callbridge.api.openapi import documented, plain
from callbridge.api.openapi_models import Health, Readiness
from callbridge.api.plain import plain_route
from callbridge.api.services import Services

router = APIRouter()


@plain_route(router, "/healthz", "GET")
@documented("Liveness: the process is up", "probes", plain(Health), auth="none")
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@plain_route(router, "/readyz", "GET")
@documented(
    "Readiness: database reachable and driver started (else 503)",
    "probes",
    plain(Readiness),
    auth="none",
)
async def readyz(request: Request) -> Response:
    svc: Services | None = getattr(request.app.state, "services", None)
    if svc is None:
        # Still waiting for the database at start.
        return JSONResponse(
            {"status": "not ready", "database": False, "driver": False}, status_code=503
        )
    database = await svc.store.ping()
    ready = svc.ready and database
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "database": database, "driver": svc.ready},
        status_code=200 if ready else 503,
    )
