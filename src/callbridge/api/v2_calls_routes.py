"""The older CCM v2 calls API: a thin adapter that finds the user's device and admits the call
through the same engine as v3 (same checks, same busy compare-and-set), answering in v2 names."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from starlette.requests import Request
from starlette.responses import Response

from callbridge.api.envelope import success
from callbridge.api.openapi import documented, envelope
from callbridge.api.openapi_models import V2CallDetails
from callbridge.api.schemas import (
    MAX_URL_LENGTH,
    Flag,
    Seconds,
    StatusCallbackIn,
    describe_validation_error,
    parse_json_object,
)
from callbridge.api.services import Services, api_account, request_id, services
from callbridge.api.urls import check_call_urls
from callbridge.domain.calls import Call, Leg, LegSide
from callbridge.domain.options import (
    CallbackContentType,
    CallbackEvent,
    CallbackMethod,
    CallOptions,
    RecordingChannels,
    RecordingFormat,
    RecordingOptions,
    StatusCallback,
)
from callbridge.domain.users import V2Agent, pick_call_device, v2_call_details
from callbridge.domain.views import call_details
from callbridge.engine.admission import ClickToCall, admit_click_to_call
from callbridge.errors import (
    CallNotFound,
    DeviceNotFound,
    InvalidRecordingChannels,
    NoDeviceForUser,
    UserNotFound,
    ValidationFailed,
    VirtualNumberNotFound,
)
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.store import calls as call_store
from callbridge.store import users as user_store
from callbridge.store.accounts import Account
from callbridge.store.users import DeviceRow, UserRow

router = APIRouter()


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class V2FromIn(_Lenient):
    user_id: str | None = Field(default=None, min_length=1, max_length=64)
    user_contact_uri: str | None = Field(default=None, min_length=1, max_length=255)
    device_id: str | None = Field(default=None, min_length=1, max_length=64)


class V2ToIn(_Lenient):
    customer_contact_uri: str = Field(min_length=1, max_length=255)


class V2CreateCallIn(_Lenient):
    from_: V2FromIn = Field(alias="from")
    to: V2ToIn
    virtual_number: str = Field(min_length=1, max_length=64)
    recording: Flag = False
    recording_channels: Literal["single", "dual"] = "single"
    recording_format: Literal["mp3", "mp3-hq"] = "mp3"
    wait_audio_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    max_time_limit: Seconds = Field(default=14400, ge=1, le=14400)
    attempt_time_out: Seconds = Field(default=30, ge=1, le=600)
    custom_field: Annotated[str, StringConstraints(strip_whitespace=False)] | None = Field(
        default=None, max_length=128
    )
    status_callback: list[StatusCallbackIn] = Field(default_factory=list, max_length=10)

    @field_validator("status_callback", mode="before")
    @classmethod
    def _single_url(cls, value: Any) -> Any:
        """v2 clients also send one URL (or one object): the terminal event, POSTed as JSON."""
        if isinstance(value, str):
            return [{"event": "terminal", "url": value}] if value.strip() else []
        if isinstance(value, dict):
            return [value]
        return value

    def options(self) -> CallOptions:
        return CallOptions(
            attempt_timeout_s=self.attempt_time_out,
            max_time_limit_s=self.max_time_limit,
            recording=RecordingOptions(
                record=self.recording,
                channels=RecordingChannels(self.recording_channels),
                format=RecordingFormat(self.recording_format),
            ),
            wait_audio_url=self.wait_audio_url or None,
            status_callbacks=tuple(
                StatusCallback(
                    event=CallbackEvent(c.event),
                    url=c.url,
                    method=CallbackMethod(c.method),
                    content_type=CallbackContentType(c.content_type),
                )
                for c in self.status_callback
            ),
            state_management=True,
        )


def parse_v2_create_call(body: bytes) -> V2CreateCallIn:
    data = parse_json_object(body)
    channels = data.get("recording_channels")
    if channels is not None and channels not in ("single", "dual"):
        raise InvalidRecordingChannels(
            f"recording_channels must be single or dual, not {str(channels)[:32]!r}"
        )
    try:
        parsed = V2CreateCallIn.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(describe_validation_error(exc)) from exc
    if parsed.from_.user_id is None and parsed.from_.user_contact_uri is None:
        raise ValidationFailed("from: give user_id or user_contact_uri")
    return parsed


async def _agent_device(
    svc: Services, account: Account, caller: V2FromIn
) -> tuple[UserRow, DeviceRow]:
    """The user and the device to ring, with SPEC's not-found errors in order:
    user (10731) → any device (10806) → the named device (10702)."""
    async with svc.store.read() as conn:
        if caller.user_id is not None:
            user = await user_store.get_user(conn, account.sid, caller.user_id)
            if user is None:
                raise UserNotFound(f"user {caller.user_id[:64]} not found")
            devices = (await user_store.devices_of(conn, [user.id]))[user.id]
        else:
            assert caller.user_contact_uri is not None
            try:
                uri = normalise(caller.user_contact_uri, account.region).uri
            except InvalidContactUri as exc:
                raise ValidationFailed(f"from.user_contact_uri: {exc}") from exc
            found = await user_store.device_by_contact(conn, account.sid, uri)
            if found is None:
                raise UserNotFound(f"no user has a device with contact_uri {uri}")
            device, user = found
            return user, device
    if not devices:
        raise NoDeviceForUser(f"user {user.id} has no device")
    if caller.device_id is not None:
        named = [d for d in devices if d.id == caller.device_id]
        if not named:
            raise DeviceNotFound(f"device {caller.device_id[:64]} not found for this user")
        return user, named[0]
    chosen = pick_call_device(devices)
    assert isinstance(chosen, DeviceRow)
    return user, chosen


def v2_view(
    call: Call, legs: list[Leg], agent: V2Agent, tz_name: str, svc: Services
) -> dict[str, Any]:
    to_legs = [leg for leg in legs if leg.side is LegSide.TO]
    details = call_details(call, tz_name, lambda rid: svc.recording_link(rid, call.account_sid))
    return v2_call_details(
        details,
        agent=agent,
        customer_uri=call.to_uri,
        customer_status=to_legs[-1].status.value if to_legs else None,
    )


@router.post("/v2/accounts/{account_sid}/calls")
@documented(
    "Click-to-call for a user (v2)",
    "calls",
    envelope("data", V2CallDetails),
    body=V2CreateCallIn,
)
async def create_call(request: Request, account_sid: str) -> Response:
    account = await api_account(request, account_sid)
    with services(request).metrics.admission(account.sid, "v2"):
        return await _admit(request, account)


async def _admit(request: Request, account: Account) -> Response:
    svc = services(request)
    payload = parse_v2_create_call(await request.body())
    try:
        to_uri = normalise(payload.to.customer_contact_uri, account.region)
    except InvalidContactUri as exc:
        raise ValidationFailed(f"to.customer_contact_uri: {exc}") from exc
    try:
        virtual_number = normalise(payload.virtual_number, account.region)
    except InvalidContactUri as exc:
        raise VirtualNumberNotFound(f"virtual_number: {exc}") from exc
    user, device = await _agent_device(svc, account, payload.from_)
    options = replace(payload.options(), v2_agent=(user.id, user.name))
    await check_call_urls(svc.guard, options)
    call = await admit_click_to_call(
        svc.engine,
        ClickToCall(
            account=account,
            from_uri=normalise(device.contact_uri, account.region),
            to_uri=to_uri,
            virtual_number=virtual_number.uri,
            options=options,
            custom_field=payload.custom_field,
        ),
    )
    view = v2_view(call, [], V2Agent(user.id, user.name), account.timezone, svc)
    return success(request_id(request), "POST", {"data": view})


@router.get("/v2/accounts/{account_sid}/calls/{call_sid}")
@documented("A call in v2 names", "calls", envelope("data", V2CallDetails))
async def get_call(request: Request, account_sid: str, call_sid: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    async with svc.store.read() as conn:
        call = await call_store.get_call(conn, account.sid, call_sid)
        if call is None:
            raise CallNotFound(f"call {call_sid[:64]} not found")
        legs = await call_store.get_legs(conn, call.sid)
        found = await user_store.device_by_contact(conn, account.sid, call.from_uri)
    agent = V2Agent(found[1].id, found[1].name) if found else V2Agent(None, None)
    view = v2_view(call, legs, agent, account.timezone, svc)
    return success(request_id(request), "GET", {"data": view})
