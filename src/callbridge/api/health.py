"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from callbridge.api.services import services

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    svc = services(request)
    database = await svc.store.ping()
    ready = svc.ready and database
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "database": database, "driver": svc.ready},
        status_code=200 if ready else 503,
    )
