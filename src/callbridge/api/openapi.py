"""The OpenAPI document at `/openapi.json`: every public route, the plain Starlette ones too,
with its request body and answer schemas and Basic auth.

Routes read their own bodies (so the plain hot-path routes and the FastAPI ones behave the
same), so FastAPI cannot see what they take or answer. Each handler says it instead, with
`@documented(...)` next to its route; the document is built from the mounted routes and those
declarations. FastAPI routes that declare their parameters the FastAPI way (the v1 dialect's
form fields and response models) are documented by FastAPI itself and merged in. A route
with neither is left out, and the test that compares the document with the mounted routes
fails until it has one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from callbridge.api.openapi_models import ListingMetadata

F = TypeVar("F", bound=Callable[..., Any])

Auth = Literal["basic", "none", "basic_or_link"]
Refs = dict[tuple[type[BaseModel], str], dict[str, Any]]
"""(model, "validation" | "serialization") → its `$ref` in components/schemas."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a successful call answers: `response.<key>` of the envelope (`object`), a
    `response` list of `{code, status, <key>}` items (`listing`), a bare JSON object
    (`plain`), or a non-JSON body (`media`)."""

    kind: Literal["object", "listing", "plain", "media"]
    model: type[BaseModel] | None = None
    key: str | None = None
    media_type: str = "application/json"
    metadata: bool = False
    """An `object` answer with `metadata` (`{count}`) instead of null."""


def envelope(key: str, model: type[BaseModel], *, metadata: bool = False) -> Answer:
    return Answer("object", model, key, metadata=metadata)


def listing(key: str, model: type[BaseModel]) -> Answer:
    return Answer("listing", model, key)


def plain(model: type[BaseModel]) -> Answer:
    return Answer("plain", model)


def media(media_type: str) -> Answer:
    return Answer("media", media_type=media_type)


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    description: str
    schema: dict[str, Any]
    location: Literal["query", "header"] = "query"
    required: bool = False


def int_param(name: str, description: str, low: int, high: int) -> Param:
    return Param(name, description, {"type": "integer", "minimum": low, "maximum": high})


def str_param(name: str, description: str, **schema: Any) -> Param:
    return Param(name, description, {"type": "string", **schema})


def header_param(name: str, description: str, **schema: Any) -> Param:
    return Param(name, description, {"type": "string", **schema}, location="header")


PAGING = (
    int_param("offset", "Items to skip.", 0, 10**9),
    int_param("limit", "Items per page (at most 50).", 0, 50),
)


@dataclass(frozen=True, slots=True)
class OperationDoc:
    summary: str
    tag: str
    answer: Answer
    body: type[BaseModel] | None = None
    status: int = 200
    auth: Auth = "basic"
    params: tuple[Param, ...] = ()
    description: str | None = None


_DOCS: dict[Callable[..., Any], OperationDoc] = {}


def documented(
    summary: str,
    tag: str,
    answer: Answer,
    *,
    body: type[BaseModel] | None = None,
    status: int = 200,
    auth: Auth = "basic",
    params: tuple[Param, ...] = (),
    description: str | None = None,
) -> Callable[[F], F]:
    """Declare what a route handler takes and answers, for the OpenAPI document."""

    def register(endpoint: F) -> F:
        _DOCS[endpoint] = OperationDoc(
            summary, tag, answer, body, status, auth, params, description
        )
        return endpoint

    return register


def mounted_routes(app: FastAPI) -> Iterator[Any]:
    """Every route the app serves, those of included routers too (FastAPI keeps them nested)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: routers are flattened into app.routes
        yield from app.routes
        return
    yield from iter_route_contexts(app.routes)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at `path` (for a 405's `Allow`): routes with the same
    path but other methods are separate routes, and the router reports only one of them."""
    methods: set[str] = set()
    for route in mounted_routes(app):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


_CONVERTER = re.compile(r"{([^}:]+):[^}]+}")
_PATH_PARAM = re.compile(r"{([^}]+)}")


def document_path(route_path: str) -> str:
    """`/sim/v1/numbers/{contact_uri:path}` → `/sim/v1/numbers/{contact_uri}`."""
    return _CONVERTER.sub(r"{\1}", route_path)


def build_document(app: FastAPI) -> dict[str, Any]:
    operations: list[tuple[str, str, OperationDoc]] = []
    for route in mounted_routes(app):
        endpoint = getattr(route, "endpoint", None)
        doc = _DOCS.get(endpoint) if endpoint is not None else None
        methods = getattr(route, "methods", None)
        if doc is None or not methods:
            continue
        for method in sorted(set(methods) - {"HEAD"}):
            operations.append((document_path(route.path), method, doc))
    schemas, refs = _schemas(operations)
    paths: dict[str, dict[str, Any]] = {}
    for path, method, doc in operations:
        paths.setdefault(path, {})[method.lower()] = _operation(path, method, doc, refs)
    _add_introspected(app, paths, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": app.title,
            "version": app.version,
            "description": "Exotel CCM-compatible calling API. Every JSON answer is the Exotel "
            "envelope; failures carry `response.error_data` with the Exotel code and a message "
            "naming the field.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "basicAuth": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "API key as the user name, API token as the password.",
                }
            },
        },
        "security": [{"basicAuth": []}],
    }


def _add_introspected(
    app: FastAPI, paths: dict[str, dict[str, Any]], schemas: dict[str, Any]
) -> None:
    """Add what FastAPI itself documents: routes that declare their parameters, form fields
    and response models the FastAPI way (the v1 dialect) need no `@documented`. Their
    operations are Basic-authenticated like every other."""
    routes = [
        route
        for route in (getattr(r, "original_route", r) for r in mounted_routes(app))
        if isinstance(route, APIRoute) and route.include_in_schema and route.endpoint not in _DOCS
    ]
    if not routes:
        return
    generated = get_openapi(title=app.title, version=app.version, routes=routes)
    for path, operations in generated.get("paths", {}).items():
        for method, operation in operations.items():
            operation.setdefault("security", [{"basicAuth": []}])
            responses = operation["responses"]
            # Invalid input is the dialect's own 400, never FastAPI's 422 shape; any other
            # failure has the shape of the errors the route declares.
            responses.pop("422", None)
            errors = [r for code, r in responses.items() if code[0] in "45" and r.get("content")]
            responses.setdefault(
                "default", errors[0] if errors else {"description": "Error", **_ERROR_RESPONSE}
            )
            paths.setdefault(path, {}).setdefault(method, operation)
    for name, schema in generated.get("components", {}).get("schemas", {}).items():
        schemas.setdefault(name, schema)


def install(app: FastAPI) -> None:
    """Serve the built document at the app's `openapi_url` (built once, on first request)."""
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not built:
            built.update(build_document(app))
        return built

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


# -- pieces --------------------------------------------------------------------------------

_REF = "#/components/schemas/{model}"
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorEnvelope")}}}
_ERROR_RESPONSE = {"content": _ERROR_CONTENT}
_ID_HEADER = {
    "X-Request-Id": {"description": "The request id, as in the body.", "schema": {"type": "string"}}
}
_ERROR_DATA = {
    "type": "object",
    "required": ["code", "description", "message"],
    "properties": {
        "code": {"type": "integer", "description": "Exotel error code"},
        "description": {"type": "string"},
        "message": {"type": "string", "description": "What was wrong, naming the field"},
    },
}
ERROR_ENVELOPE = {
    "type": "object",
    "required": ["request_id", "method", "http_code", "response"],
    "properties": {
        "request_id": {"type": "string"},
        "method": {"type": "string"},
        "http_code": {"type": "integer"},
        "metadata": {"type": "null"},
        "response": {
            "type": "object",
            "required": ["code", "status", "error_data"],
            "properties": {
                "code": {"type": "integer"},
                "status": {"const": "failure"},
                "error_data": {"$ref": "#/components/schemas/ErrorData"},
            },
        },
    },
}


def _schemas(operations: list[tuple[str, str, OperationDoc]]) -> tuple[dict[str, Any], Refs]:
    wanted: dict[tuple[type[BaseModel], Any], None] = {(ListingMetadata, "serialization"): None}
    for _, _, doc in operations:
        if doc.body is not None:
            wanted[(doc.body, "validation")] = None
        if doc.answer.model is not None:
            wanted[(doc.answer.model, "serialization")] = None
    found, defs = models_json_schema(list(wanted), ref_template=_REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["ErrorData"] = _ERROR_DATA
    schemas["ErrorEnvelope"] = ERROR_ENVELOPE
    refs: Refs = {}
    for (model, mode), ref in found.items():
        refs[(cast(type[BaseModel], model), mode)] = dict(ref)
    return schemas, refs


def _operation(
    path: str,
    method: str,
    doc: OperationDoc,
    refs: Refs,
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(path)
    ]
    parameters += [
        {
            "name": p.name,
            "in": p.location,
            "required": p.required,
            "description": p.description,
            "schema": p.schema,
        }
        for p in doc.params
    ]
    operation: dict[str, Any] = {
        "tags": [doc.tag],
        "summary": doc.summary,
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{method}{path}").strip("_").lower(),
        "parameters": parameters,
        "responses": {
            str(doc.status): {
                "description": doc.summary,
                "headers": _ID_HEADER,
                "content": {doc.answer.media_type: {"schema": _answer_schema(doc.answer, refs)}},
            },
            "default": {
                "description": "Failure: the Exotel envelope with error_data.",
                "headers": _ID_HEADER,
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model="ErrorEnvelope")}}
                },
            },
        },
    }
    if doc.description:
        operation["description"] = doc.description
    if doc.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(doc.body, "validation")]}},
        }
    if doc.auth == "none":
        operation["security"] = []
    elif doc.auth == "basic_or_link":
        operation["security"] = [{"basicAuth": []}, {}]
    if doc.auth != "none":
        operation["responses"]["429"] = {
            "description": "Too many requests (rate limit, or too many failed logins).",
            "headers": {
                **_ID_HEADER,
                "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
            },
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model="ErrorEnvelope")}}
            },
        }
    return operation


def _answer_schema(answer: Answer, refs: Refs) -> dict[str, Any]:
    if answer.kind == "media":
        return {"type": "string", "format": "binary"}
    assert answer.model is not None
    ref = refs[(answer.model, "serialization")]
    if answer.kind == "plain":
        return ref
    assert answer.key is not None
    if answer.kind == "object":
        response: dict[str, Any] = {
            "type": "object",
            "required": ["code", "status", answer.key],
            "properties": {
                "code": {"type": "integer"},
                "error_data": {"type": "null"},
                "status": {"const": "success"},
                answer.key: ref,
            },
        }
        metadata: dict[str, Any] = (
            refs[(ListingMetadata, "serialization")] if answer.metadata else {"type": "null"}
        )
    else:
        response = {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["code", "status", answer.key],
                "properties": {
                    "code": {"type": "integer"},
                    "status": {"const": "success"},
                    answer.key: ref,
                },
            },
        }
        metadata = refs[(ListingMetadata, "serialization")]
    return {
        "type": "object",
        "required": ["request_id", "method", "http_code", "metadata", "response"],
        "properties": {
            "request_id": {"type": "string"},
            "method": {"type": "string"},
            "http_code": {"type": "integer"},
            "metadata": metadata,
            "response": response,
        },
    }
