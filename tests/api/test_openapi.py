"""`/openapi.json` publishes every mounted API route (the plain Starlette ones too) with its
request body, its answer schema and Basic auth, and is a valid OpenAPI document; a 405 says
which methods the path allows. Generated requests against it are in test_fuzz.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import schemathesis
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from callbridge.api.app import create_app
from callbridge.clock import ManualClock
from callbridge.settings import Settings
from callbridge.store.repo import Store

from ..harness import ACCOUNT, Harness, running_app

NOT_API: dict[tuple[str, str], str] = {
    ("GET", "/openapi.json"): "the document itself",
    ("GET", "/docs"): "the Swagger UI page that renders the document",
    ("GET", "/docs/oauth2-redirect"): "part of the Swagger UI page",
    ("GET", "/dashboard"): "the dashboard's HTML page (its data stream is documented)",
    ("GET", "/v3/accounts/calls"): "answers 400/1001 for a path without its account sid",
    ("POST", "/v3/accounts/calls"): "answers 400/1001 for a path without its account sid",
    ("GET", "/v3/accounts//calls"): "answers 400/1001 for a path without its account sid",
    ("POST", "/v3/accounts//calls"): "answers 400/1001 for a path without its account sid",
}
"""Mounted routes that are not API operations, each with why. Nothing else may be missing."""

BODILESS: dict[tuple[str, str], str] = {
    ("post", "/v3/accounts/{account_sid}/calls/{call_sid}/callbacks/{delivery_id}/replay"): "",
    ("post", "/v3/accounts/{account_sid}/webhook-secret/rotate"): "",
    ("post", "/v3/accounts/{account_sid}/recordings/{recording_id}/links"): "",
    ("post", "/v2/accounts/{account_sid}/users/{user_id}/devices/{device_id}/verification"): "",
    **{
        (method, f"/{dialect}/Accounts/{{account_sid}}/{{rest}}"): ""
        for method in ("post", "put")
        for dialect in ("v1", "v2_beta")
    },
}
"""POST and PUT operations that take no body: the path says everything (the v1 and v2_beta
catch-alls answer 404, naming Exotel APIs callbridge does not provide, whatever is sent)."""


def _document() -> dict[str, Any]:
    doc: dict[str, Any] = create_app(Settings(driver="sim")).openapi()
    return doc


def _in_document_form(path: str) -> str:
    return re.sub(r"{([^}:]+):[^}]+}", r"{\1}", path)


def test_document_lists_every_mounted_api_route() -> None:
    app = create_app(Settings(driver="sim"))
    paths = app.openapi()["paths"]
    missing: list[str] = []
    seen = 0
    for route in iter_route_contexts(app.routes):
        original = route.original_route
        path = getattr(route, "path", None)
        if isinstance(original, Mount) or getattr(route, "methods", None) is None:
            # A mounted sub-application (e.g. a metrics endpoint): some operation under it.
            if path is not None and not any(p.startswith(path) for p in paths):
                missing.append(f"mount {path}")
            continue
        assert path is not None
        for method in sorted(route.methods - {"HEAD"}):  # HEAD comes with every GET
            seen += 1
            if (method, path) in NOT_API:
                continue
            if method.lower() not in paths.get(_in_document_form(path), {}):
                missing.append(f"{method} {path}")
    assert not missing, f"routes missing from /openapi.json (add @documented): {missing}"
    assert seen >= 50


def test_plain_routes_are_published_with_their_schemas() -> None:
    doc = _document()
    calls = doc["paths"]["/v3/accounts/{account_sid}/calls"]
    body = calls["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CreateCallIn"}
    answer = calls["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    details = answer["properties"]["response"]["properties"]["call_details"]
    assert details == {"$ref": "#/components/schemas/CallDetails"}
    assert "get" in calls
    assert "get" in doc["paths"]["/v3/accounts/{account_sid}/calls/{call_sid}"]
    assert "get" in doc["paths"]["/v3/accounts/{account_sid}/calls/{call_sid}/legs"]
    create = doc["components"]["schemas"]["CreateCallIn"]
    assert {"from", "to", "virtual_number"} <= set(create["required"])
    assert "streaming" in create["properties"]
    for probe in ("/healthz", "/readyz"):
        assert doc["paths"][probe]["get"]["security"] == []


def test_every_operation_is_basic_auth_unless_public_and_takes_its_body() -> None:
    doc = _document()
    assert doc["components"]["securitySchemes"]["basicAuth"] == {
        "type": "http",
        "scheme": "basic",
        "description": "API key as the user name, API token as the password.",
    }
    assert doc["security"] == [{"basicAuth": []}]
    public = set()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            security = operation.get("security", doc["security"])
            if security == []:
                public.add(path)
            else:
                assert {"basicAuth": []} in security, (method, path)
            assert "default" in operation["responses"], (method, path)
            if method in ("post", "put") and (method, path) not in BODILESS:
                assert "requestBody" in operation, (method, path)
    assert public == {"/healthz", "/readyz"}


def test_document_is_valid_openapi() -> None:
    schemathesis.openapi.from_dict(_document()).validate()


@pytest.fixture
async def app(store: Store, clock: ManualClock) -> AsyncIterator[Harness]:
    async with running_app(store, clock) as harness:
        yield harness


async def test_openapi_json_is_served_and_405_names_the_allowed_methods(app: Harness) -> None:
    r = await app.client.get("/openapi.json")
    assert r.status_code == 200
    assert "/v3/accounts/{account_sid}/calls" in r.json()["paths"]
    r = await app.client.delete(f"/v3/accounts/{ACCOUNT}/calls", headers=app.auth)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, HEAD, POST"
    assert r.json()["response"]["error_data"]["code"] == 405
    r = await app.client.patch(f"/v2/accounts/{ACCOUNT}/users/u1", headers=app.auth)
    assert r.status_code == 405
    assert r.headers["Allow"] == "DELETE, GET, PUT"
    r = await app.client.post("/healthz")
    assert r.headers["Allow"] == "GET, HEAD"
