"""The v2 Users API (SPEC §3): users, their devices, live device status and device verification."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from callbridge.api.envelope import success
from callbridge.api.openapi import documented, envelope, int_param, listing, str_param
from callbridge.api.openapi_models import Device, User, VerificationAttempt, VerificationStatus
from callbridge.api.params import query_int
from callbridge.api.schemas import Switch, describe_validation_error, parse_json_object
from callbridge.api.services import Services, api_account, request_id, services
from callbridge.domain.users import (
    InvalidUserField,
    UserFields,
    device_view,
    sip_password_problem,
    sip_username,
    user_view,
    validate_device_name,
    validate_email,
    validate_name,
    validate_role,
)
from callbridge.engine.verification import VerificationService
from callbridge.errors import (
    Conflict,
    DeviceNotFound,
    NoDeviceForUser,
    UserNotFound,
    ValidationFailed,
    VoipNotAllowed,
)
from callbridge.numbers import ContactUri, InvalidContactUri, normalise
from callbridge.registrar.digest import ha1
from callbridge.store import busy as busy_store
from callbridge.store import users as user_store
from callbridge.store.accounts import Account
from callbridge.store.users import DeviceRow, DuplicateContact, DuplicateEmail, UserRow

router = APIRouter()
M = TypeVar("M", bound=BaseModel)

MAX_PAGE = 50
MAX_FILTER_VALUES = 50
BASE = "/v2/accounts/{account_sid}/users"
ALL_FIELDS = UserFields()


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateUserIn(_Body):
    first_name: str = Field(max_length=256)
    last_name: str = Field(max_length=256)
    email: str | None = Field(default=None, max_length=512)
    role: str | None = Field(default=None, max_length=32)
    device_contact_uri: str | None = Field(default=None, max_length=255)
    device_name: str | None = Field(default=None, max_length=256)


class UpdateUserIn(_Body):
    first_name: str | None = Field(default=None, max_length=256)
    last_name: str | None = Field(default=None, max_length=256)
    email: str | None = Field(default=None, max_length=512)
    role: str | None = Field(default=None, max_length=32)


class UpdateDeviceIn(_Body):
    available: Switch | None = None
    contact_uri: str | None = Field(default=None, min_length=1, max_length=255)
    name: str | None = Field(default=None, max_length=256)
    sip_password: str | None = Field(default=None, max_length=1024)
    """Set the phone's REGISTER password; null removes it (the device then is dialled as
    written). Stored as a digest HA1 only, never echoed."""


def _parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate(parse_json_object(body))
    except ValidationError as exc:
        raise ValidationFailed(describe_validation_error(exc)) from exc


def _check(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except InvalidUserField as exc:
        raise ValidationFailed(str(exc)) from exc


def _contact(account: Account, raw: str, field: str) -> ContactUri:
    try:
        uri = normalise(raw, account.region)
    except InvalidContactUri as exc:
        raise ValidationFailed(f"{field}: {exc}") from exc
    if uri.is_sip and not account.allow_voip:
        raise VoipNotAllowed(f"{field}: SIP devices are not allowed for this account")
    return uri


async def _render_users(
    conn: AsyncConnection, account: Account, found: list[UserRow], fields: UserFields
) -> list[dict[str, Any]]:
    by_user = await user_store.devices_of(conn, [u.id for u in found])
    uris = [d.contact_uri for ds in by_user.values() for d in ds]
    busy = await busy_store.busy_uris(conn, account.sid, uris) if uris else {}
    return [user_view(u, by_user.get(u.id, []), busy, account.timezone, fields) for u in found]


async def _user_data(
    svc: Services, account: Account, user_id: str, fields: UserFields = ALL_FIELDS
) -> dict[str, Any]:
    async with svc.store.read() as conn:
        user = await user_store.get_user(conn, account.sid, user_id)
        if user is None:
            raise UserNotFound(f"user {user_id[:64]} not found")
        return (await _render_users(conn, account, [user], fields))[0]


async def _users_device(
    svc: Services, account_sid: str, user_id: str, device_id: str
) -> user_store.DeviceRow:
    """The user's device: 10731 for an unknown user, 10806 for a user with no device at all,
    10702 for a device that is not theirs."""
    async with svc.store.read() as conn:
        user = await user_store.get_user(conn, account_sid, user_id)
        if user is None:
            raise UserNotFound(f"user {user_id[:64]} not found")
        device = await user_store.get_device(conn, account_sid, device_id)
        if device is None or device.user_id != user.id:
            await _no_such_device(conn, user, device_id)
    return device


async def _no_such_device(conn: AsyncConnection, user: UserRow, device_id: str) -> NoReturn:
    """Raise 10806 when the user has no device at all, else 10702."""
    if not (await user_store.devices_of(conn, [user.id])).get(user.id):
        raise NoDeviceForUser(f"user {user.id[:64]} has no device")
    raise DeviceNotFound(f"device {device_id[:64]} not found for this user")


def _one(request: Request, data: dict[str, Any]) -> Response:
    return success(request_id(request), request.method, {"data": data})


# -- users --------------------------------------------------------------------------------


@router.post(BASE)
@documented("Create a user", "users", envelope("data", User), body=CreateUserIn)
async def create_user(request: Request, account_sid: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    body = _parse(CreateUserIn, await request.body())
    first = _check(validate_name, "first_name", body.first_name)
    last = _check(validate_name, "last_name", body.last_name)
    email = _check(validate_email, body.email)
    role = _check(validate_role, body.role)
    device_name = _check(validate_device_name, body.device_name)
    uri = (
        _contact(account, body.device_contact_uri, "device_contact_uri")
        if body.device_contact_uri
        else None
    )
    now = svc.clock.now()
    try:
        async with svc.store.tx() as conn:
            user_id = await user_store.create_user(
                conn,
                account_sid=account.sid,
                first_name=first,
                last_name=last,
                email=email,
                role=role.value,
                now=now,
            )
            if uri is not None:
                await user_store.add_device(
                    conn,
                    account_sid=account.sid,
                    user_id=user_id,
                    contact_uri=uri.uri,
                    uri_type=uri.type.value,
                    name=device_name,
                    available=True,
                    now=now,
                )
    except DuplicateEmail as exc:
        raise Conflict(f"email {email} is already used by another user of this account") from exc
    except DuplicateContact as exc:
        raise Conflict(f"device_contact_uri {exc} is already another user's device") from exc
    return _one(request, await _user_data(svc, account, user_id))


@router.get(BASE)
@documented(
    "Users, filtered and paged",
    "users",
    listing("data", User),
    params=(
        str_param("fields", "`devices`, `active_call` (comma-separated) to include."),
        str_param("devices.contact_uri", "Only users with these device numbers (comma-separated)."),
        str_param("email", "Only users with these emails (comma-separated)."),
        int_param("offset", "Users to skip.", 0, 10**9),
        int_param("limit", "Users per page (at most 50 are returned).", 1, 10**9),
    ),
)
async def list_users(request: Request, account_sid: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    query = request.query_params
    fields = _check(UserFields.parse, query.get("fields"), False)
    offset = query_int(query.get("offset"), "offset", 0, 0, 10**9)
    limit = min(query_int(query.get("limit"), "limit", MAX_PAGE, 1, 10**9), MAX_PAGE)
    emails: list[str] | None = None
    if query.get("email") is not None:
        emails = [
            e for e in (_check(validate_email, v) for v in _split(query["email"], "email")) if e
        ]
    uris: list[str] | None = None
    if query.get("devices.contact_uri") is not None:
        uris = [
            normalise_filter(account, v)
            for v in _split(query["devices.contact_uri"], "devices.contact_uri")
        ]
    async with svc.store.read() as conn:
        total, found = await user_store.list_users(
            conn, account.sid, emails=emails, contact_uris=uris, offset=offset, limit=limit
        )
        views = await _render_users(conn, account, found, fields)
    items = [{"code": 200, "status": "success", "data": view} for view in views]
    return success(
        request_id(request),
        "GET",
        items,
        metadata={"total": total, "count": len(items), "offset": offset, "limit": limit},
    )


@router.get(BASE + "/{user_id}")
@documented(
    "A user",
    "users",
    envelope("data", User),
    params=(str_param("fields", "`devices`, `active_call` (comma-separated) to include."),),
)
async def get_user(request: Request, account_sid: str, user_id: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    fields = _check(UserFields.parse, request.query_params.get("fields"), True)
    return _one(request, await _user_data(svc, account, user_id, fields))


@router.put(BASE + "/{user_id}")
@documented("Update a user", "users", envelope("data", User), body=UpdateUserIn)
async def update_user(request: Request, account_sid: str, user_id: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    body = _parse(UpdateUserIn, await request.body())
    values: dict[str, Any] = {}
    if body.first_name is not None:
        values["first_name"] = _check(validate_name, "first_name", body.first_name)
    if body.last_name is not None:
        values["last_name"] = _check(validate_name, "last_name", body.last_name)
    if body.role is not None:
        values["role"] = _check(validate_role, body.role).value
    email = _check(validate_email, body.email) if body.email is not None else None
    if not values and email is None:
        raise ValidationFailed("nothing to update: give first_name, last_name, email or role")
    try:
        async with svc.store.tx() as conn:
            user = await user_store.lock_user(conn, account.sid, user_id)
            if user is None:
                raise UserNotFound(f"user {user_id[:64]} not found")
            if email is not None and email != user.email:
                if user.email is not None:
                    raise ValidationFailed("email can be set only when the user has none")
                if await user_store.email_owner(conn, account.sid, email) is not None:
                    raise DuplicateEmail(email)
                values["email"] = email
            if values:
                await user_store.update_user(conn, user.id, values, svc.clock.now())
    except DuplicateEmail as exc:
        raise Conflict(f"email {email} is already used by another user of this account") from exc
    return _one(request, await _user_data(svc, account, user_id))


@router.delete(BASE + "/{user_id}")
@documented("Delete a user (not while on a call)", "users", envelope("data", User))
async def delete_user(request: Request, account_sid: str, user_id: str) -> Response:
    """A user on a call cannot be deleted (409): the call would lose its agent mid-way."""
    svc = services(request)
    account = await api_account(request, account_sid)
    async with svc.store.tx() as conn:
        user = await user_store.lock_user(conn, account.sid, user_id)
        if user is None:
            raise UserNotFound(f"user {user_id[:64]} not found")
        view = (await _render_users(conn, account, [user], ALL_FIELDS))[0]
        for device in (await user_store.devices_of(conn, [user.id]))[user.id]:
            call_sid = await user_store.busy_call_locked(conn, account.sid, device.contact_uri)
            if call_sid is not None:
                raise Conflict(f"user is on call {call_sid}; delete the user after the call ends")
        await user_store.delete_user(conn, user.id)
    return _one(request, view)


# -- devices ------------------------------------------------------------------------------


async def _device_view(svc: Services, account: Account, device: DeviceRow) -> dict[str, Any]:
    async with svc.store.read() as conn:
        busy = await busy_store.busy_uris(conn, account.sid, [device.contact_uri])
    return device_view(device, busy.get(device.contact_uri), account.timezone)


async def _owned_device(
    conn: AsyncConnection, account: Account, user_id: str, device_id: str
) -> tuple[UserRow, DeviceRow]:
    user = await user_store.lock_user(conn, account.sid, user_id)
    if user is None:
        raise UserNotFound(f"user {user_id[:64]} not found")
    device = await user_store.get_device(conn, account.sid, device_id)
    if device is None or device.user_id != user.id:
        await _no_such_device(conn, user, device_id)
    return user, device


@router.get(BASE + "/{user_id}/devices/{device_id}")
@documented("A user's device", "users", envelope("data", Device))
async def get_device(request: Request, account_sid: str, user_id: str, device_id: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    device = await _users_device(svc, account.sid, user_id, device_id)
    return _one(request, await _device_view(svc, account, device))


@router.put(BASE + "/{user_id}/devices/{device_id}")
@documented(
    "Turn a device ON/OFF, rename it or change its number",
    "users",
    envelope("data", Device),
    body=UpdateDeviceIn,
)
async def update_device(
    request: Request, account_sid: str, user_id: str, device_id: str
) -> Response:
    """Turn a device ON/OFF, rename it, or change its number (which must be verified again).

    At most one device per user is ON. A change of `available` while the device is on a
    call is deferred (`pending_available`) and applied when that call ends."""
    svc = services(request)
    account = await api_account(request, account_sid)
    body = _parse(UpdateDeviceIn, await request.body())
    sets_password = "sip_password" in body.model_fields_set
    nothing = body.available is None and body.contact_uri is None and body.name is None
    if nothing and not sets_password:
        raise ValidationFailed(
            "nothing to update: give available, contact_uri, name or sip_password"
        )
    uri = _contact(account, body.contact_uri, "contact_uri") if body.contact_uri else None
    name = _check(validate_device_name, body.name)
    now = svc.clock.now()
    try:
        async with svc.store.tx() as conn:
            user, device = await _owned_device(conn, account, user_id, device_id)
            busy_call = await user_store.busy_call_locked(conn, account.sid, device.contact_uri)
            values: dict[str, Any] = {}
            if body.name is not None:
                values["name"] = name
            if uri is not None and uri.uri != device.contact_uri:
                if busy_call is not None:
                    raise Conflict(
                        f"device is on call {busy_call}; change its number after the call ends"
                    )
                values.update(
                    contact_uri=uri.uri, type=uri.type.value, verified=False, verification_code=None
                )
            if body.available is not None:
                values.update(await _availability(conn, user, device, body.available, busy_call))
            if values:
                await user_store.update_device(conn, device.id, values, now)
            new_uri = values.get("contact_uri", device.contact_uri)
            if sets_password:
                await user_store.set_sip_credentials(
                    conn, device.id, _sip_ha1(svc, new_uri, body.sip_password), now
                )
            elif new_uri != device.contact_uri:
                # The old AOR's credentials and bindings do not carry over to a new address.
                await user_store.set_sip_credentials(conn, device.id, None, now)
            updated = await user_store.get_device(conn, account.sid, device.id)
    except DuplicateContact as exc:
        raise Conflict(f"contact_uri {exc} is already a device of this account") from exc
    assert updated is not None
    return _one(request, await _device_view(svc, account, updated))


def _sip_ha1(svc: Services, contact_uri: str, password: str | None) -> str | None:
    if password is None:
        return None
    problem = sip_password_problem(contact_uri, password)
    if problem is not None:
        raise ValidationFailed(f"sip_password: {problem}")
    return ha1(sip_username(contact_uri), svc.settings.sip_registrar_realm, password)


async def _availability(
    conn: AsyncConnection, user: UserRow, device: DeviceRow, available: bool, busy_call: str | None
) -> dict[str, Any]:
    if available:
        for other in (await user_store.devices_of(conn, [user.id]))[user.id]:
            if other.id != device.id and (other.available or other.pending_available):
                raise Conflict(
                    f"device {other.id} of this user is ON; turn it OFF before turning on another"
                )
    if busy_call is None:
        return {"available": available, "pending_available": None}
    return {"pending_available": None if available == device.available else available}


# -- verification -------------------------------------------------------------------------


def _verifier(svc: Services) -> VerificationService:
    verifier = svc.extras.get("verification")
    if not isinstance(verifier, VerificationService):
        verifier = VerificationService(svc.engine)
        svc.extras["verification"] = verifier
    return verifier


@router.post(BASE + "/{user_id}/devices/{device_id}/verification")
@documented(
    "Call the device and verify it by its keyed-back code",
    "users",
    envelope("data", VerificationAttempt),
    status=202,
)
async def verify_device(
    request: Request, account_sid: str, user_id: str, device_id: str
) -> Response:
    """Call the device and play a code; keying it back (DTMF) marks the device verified."""
    svc = services(request)
    account = await api_account(request, account_sid)
    device = await _users_device(svc, account.sid, user_id, device_id)
    if device.verified:
        raise Conflict("device is already verified")
    if device.type == "sip" and not account.allow_voip:
        raise VoipNotAllowed("SIP devices are not allowed for this account")
    attempt = await _verifier(svc).start(account, device)
    return success(request_id(request), "POST", {"data": attempt.view()}, http_code=202)


@router.get(BASE + "/{user_id}/devices/{device_id}/verification")
@documented("A device's verification state", "users", envelope("data", VerificationStatus))
async def verification_status(
    request: Request, account_sid: str, user_id: str, device_id: str
) -> Response:
    """The device's `verified` flag, and the latest attempt this server placed (if any)."""
    svc = services(request)
    account = await api_account(request, account_sid)
    device = await _users_device(svc, account.sid, user_id, device_id)
    attempt = _verifier(svc).attempts.get(device.id)
    return _one(
        request,
        {
            "device_id": device.id,
            "verified": device.verified,
            "attempt": attempt.view() if attempt is not None else None,
        },
    )


# -- query helpers ------------------------------------------------------------------------


def _split(raw: str, name: str) -> list[str]:
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if name == "devices.contact_uri":
        # A `+` that was not URL-encoded arrives as a space.
        values = [
            "+" + v.strip() if v.startswith(" ") and v.strip()[:1].isdigit() else v.strip()
            for v in raw.split(",")
            if v.strip()
        ]
    if not values:
        raise ValidationFailed(f"{name}: give at least one value")
    if len(values) > MAX_FILTER_VALUES:
        raise ValidationFailed(f"{name}: at most {MAX_FILTER_VALUES} values")
    return values


def normalise_filter(account: Account, raw: str) -> str:
    try:
        return normalise(raw, account.region).uri
    except InvalidContactUri as exc:
        raise ValidationFailed(f"devices.contact_uri: {exc}") from exc
