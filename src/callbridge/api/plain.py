"""Plain Starlette routes for the hottest endpoints.

A FastAPI route solves its parameters and dependencies on every request, which costs about
as much again as the rest of the framework for the v3 calls API. Handlers registered here
take the `Request` alone and read their path parameters from it; errors go through the same
middleware and exception handlers as every other route. Like every route they state what they
take and answer with `@documented` (api/openapi.py), which puts them in `/openapi.json`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

Endpoint = Callable[[Request], Awaitable[Response]]


def plain_route(router: APIRouter, path: str, *methods: str) -> Callable[[Endpoint], Endpoint]:
    """Register `endpoint(request)` for `path` and `methods` without FastAPI's parameter solving."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_route(path, endpoint, methods=list(methods), include_in_schema=False)
        return endpoint

    return register
