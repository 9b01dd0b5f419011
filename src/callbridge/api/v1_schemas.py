"""Response schemas of the v1 and v2_beta dialects, for the OpenAPI document only: handlers
build their bodies with `domain/v1_views.py` and answer them as they are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import Response


class V1Leg(BaseModel):
    Id: int
    OnCallDuration: int


class V1LegItem(BaseModel):
    Leg: V1Leg


class V1CallDetails(BaseModel):
    ConversationDuration: int
    Leg1Status: str | None
    Leg2Status: str | None
    Legs: list[V1LegItem]


class V1Call(BaseModel):
    Sid: str
    ParentCallSid: str | None
    DateCreated: str | None
    DateUpdated: str | None
    AccountSid: str
    To: str | None
    From: str
    PhoneNumberSid: str
    Status: str
    StartTime: str | None
    EndTime: str | None
    Duration: int | None
    Price: float | None
    Direction: str
    AnsweredBy: str | None
    ForwardedFrom: str | None
    CallerName: str | None
    Uri: str
    RecordingUrl: str | None
    PreSignedRecordingUrl: str | None
    CustomField: str | None
    Details: V1CallDetails


class V1CallResponse(BaseModel):
    Call: V1Call


class V1PageMetadata(BaseModel):
    PageSize: int
    FirstPageUri: str
    PrevPageUri: str | None
    NextPageUri: str | None


class V1CallList(BaseModel):
    Metadata: V1PageMetadata
    Calls: list[V1Call]


class V1RestExceptionBody(BaseModel):
    Status: int
    Message: str
    Code: int


class V1RestException(BaseModel):
    RestException: V1RestExceptionBody


class PhoneCapabilities(BaseModel):
    voice: bool
    sms: bool


class IncomingPhoneNumber(BaseModel):
    sid: str
    account_sid: str
    friendly_name: str
    phone_number: str
    voice_url: str | None
    sms_url: str | None
    capabilities: PhoneCapabilities
    number_type: str | None
    date_created: str | None
    date_updated: str | None
    uri: str


class IncomingPhoneNumberList(BaseModel):
    page: int
    page_size: int
    uri: str
    first_page_uri: str
    next_page_uri: str | None
    previous_page_uri: str | None
    incoming_phone_numbers: list[IncomingPhoneNumber]


XML_BODY = {"application/xml": {"schema": {"type": "string"}}}

V1_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": V1RestException, "description": "RestException"}
    for status in (400, 401, 404, 409, 429)
}
"""Errors documented on the JSON routes; the XML routes answer the same as XML."""

NOT_SERVED: dict[int | str, dict[str, object]] = {
    status: {"model": V1RestException, "description": "RestException"} for status in (404, 405)
}
ANY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE")


def add_catch_all(
    router: APIRouter, path: str, endpoint: Callable[..., Any], *, summary: str
) -> None:
    """Routes `path` to `endpoint` for every method, one route per method so that each has its
    own operation in the OpenAPI document, answering a documented RestException."""
    for method in ANY_METHOD:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            operation_id=f"{endpoint.__name__}_{method.lower()}",
            response_class=Response,
            responses=NOT_SERVED,
            summary=summary,
        )
