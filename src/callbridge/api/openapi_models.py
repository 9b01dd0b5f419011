"""The shapes of what the API answers, as pydantic models, for the OpenAPI document only.

Handlers build their answers from the views in `domain/`; these models describe those views
(names, types, nullability) so that `/openapi.json` states them and the schema tests can check
real answers against them. Extra fields are allowed, as clients must tolerate new ones.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


Time = str | None
"""`YYYY-MM-DD HH:mm:ss+05:30` in the account's timezone, or null until known."""


class Recording(_Shape):
    url: str


class CallDetails(_Shape):
    sid: str
    direction: Literal["outbound", "inbound"]
    virtual_number: str
    state: Literal["active", "terminal"]
    status: str | None
    legs: str
    created_time: Time
    updated_time: Time
    start_time: Time
    end_time: Time
    total_duration: int | None
    total_talk_time: int | None
    custom_field: str | None
    app_id: str | None
    app_name: str | None
    digits: str | None
    recordings: list[Recording] | None


class FromLeg(_Shape):
    sid: str
    name: str | None
    contact_uri: str
    date_created: Time
    date_updated: Time
    status: str


class ToLeg(FromLeg):
    group_id: int | None
    group_name: str | None


class LegDetails(_Shape):
    call_sid: str
    account_sid: str
    from_: list[FromLeg] = Field(alias="from")
    to: list[ToLeg]


class AgentDetails(_Shape):
    user_id: str | None
    user_name: str | None


class CustomerDetails(_Shape):
    contact_uri: str | None
    status: str | None


class V2CallDetails(_Shape):
    call_sid: str
    direction: str
    virtual_number: str
    call_state: str
    call_status: str | None
    assigned_agent_details: AgentDetails
    customer_details: CustomerDetails
    created_time: Time
    updated_time: Time
    start_time: Time
    end_time: Time
    total_talk_time: int | None
    total_duration: int | None
    recordings: list[Recording] | None
    custom_field: str | None
    digits: str | None


class Device(_Shape):
    id: str
    name: str | None
    contact_uri: str
    type: Literal["tel", "sip"]
    available: bool
    verified: bool
    status: Literal["free", "busy"]
    date_created: Time
    date_updated: Time


class User(_Shape):
    id: str
    first_name: str
    last_name: str
    email: str | None
    role: str
    date_created: Time
    date_updated: Time
    devices: list[Device] | None = None
    """Present unless `fields` leaves devices out."""
    active_call: str | None = None


class VerificationAttempt(_Shape):
    id: str
    user_id: str
    device_id: str
    contact_uri: str
    status: str
    ring_timeout: float
    code_entry_timeout: float


class VerificationStatus(_Shape):
    device_id: str
    verified: bool
    attempt: VerificationAttempt | None


class ExoPhone(_Shape):
    id: str
    number: str
    flow_id: str | None
    flow_name: str | None
    date_created: Time
    date_updated: Time


class Flow(_Shape):
    id: str
    name: str
    connect: dict[str, Any]
    no_agent: dict[str, Any]
    status_callback: list[dict[str, Any]]
    exophones: list[str]
    date_created: Time
    date_updated: Time


class GroupMember(_Shape):
    id: str
    name: str | None


class Group(_Shape):
    id: int
    name: str
    users: list[GroupMember]
    date_created: Time


class CallbackAttempt(_Shape):
    attempt: int
    time: Time
    status_code: int | None
    latency_ms: float | None
    error: str | None
    next_attempt_time: Time


class CallbackDelivery(_Shape):
    id: int
    event_sid: str
    event_type: str
    url: str
    method: str
    content_type: str
    status: str
    attempt_count: int
    next_attempt_time: Time
    last_error: str | None
    date_created: Time
    date_delivered: Time
    attempts: list[CallbackAttempt]


class CallbackDeliveries(RootModel[list[CallbackDelivery]]):
    pass


class WebhookSecret(_Shape):
    current: str
    previous: str | None


class RecordingLink(_Shape):
    id: str
    url: str
    expires: int


class SimPhone(_Shape):
    contact_uri: str
    outcome: str
    answer_after: float
    hangup_after: float | None
    dtmf: str | None
    state: Literal["idle", "ringing", "in-call"]
    legs_affected: int | None = None
    """Only in the answer to an action: how many of the caller's legs it touched."""


class SimReset(_Shape):
    status: Literal["reset"]


class SimIncoming(_Shape):
    call_sid: str


class Health(_Shape):
    status: str


class Readiness(_Shape):
    status: Literal["ready", "not ready"]
    database: bool
    driver: bool


class ListingMetadata(_Shape):
    count: int
    total: int | None = None
    offset: int | None = None
    limit: int | None = None
