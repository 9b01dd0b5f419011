"""ExoPhones, flows and groups APIs (v2): manage the numbers customers call, the flow each one
runs, and the groups of users flows ring. Every answer is in the Exotel envelope."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from callbridge.api.envelope import success
from callbridge.api.openapi import PAGING, documented, envelope, listing
from callbridge.api.openapi_models import ExoPhone, Flow, Group, GroupMember
from callbridge.api.params import INT32_MAX, query_int, row_id
from callbridge.api.schemas import describe_validation_error, parse_json_object
from callbridge.api.services import Services, api_account, request_id, services
from callbridge.domain.flows import (
    Destination,
    FlowDefinition,
    FlowDefinitionIn,
    FlowInvalid,
    parse_flow_definition,
)
from callbridge.domain.flows import (
    flow_urls as definition_urls,
)
from callbridge.domain.views import format_time
from callbridge.errors import (
    Conflict,
    NotFound,
    UserNotFound,
    ValidationFailed,
    VirtualNumberNotFound,
    VoipNotAllowed,
)
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.store import flows as flow_store
from callbridge.store import groups as group_store
from callbridge.store.accounts import Account
from callbridge.webhooks.ssrf import UnsafeUrl

router = APIRouter()

MAX_LIMIT = 50
_SID_RE = re.compile(r"^[0-9a-f]{32}$")
FLOW_FIELDS = ("connect", "no_agent", "status_callback")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class ExoPhoneIn(_Lenient):
    number: str = Field(min_length=3, max_length=64)
    flow_id: str | None = Field(default=None, max_length=64)


class ExoPhoneUpdate(_Lenient):
    flow_id: str | None = Field(max_length=64)


class GroupIn(_Lenient):
    name: str = Field(min_length=1, max_length=128)
    user_ids: list[str] = Field(default_factory=list, max_length=500)


class GroupUpdate(_Lenient):
    name: str = Field(min_length=1, max_length=128)


class FlowIn(FlowDefinitionIn):
    """A flow as created: its name and definition (documents the body; parsed by hand)."""

    name: str = Field(min_length=1, max_length=128)


class FlowUpdateIn(FlowDefinitionIn):
    """A flow's new definition; the name is kept when not given."""

    name: str | None = Field(default=None, min_length=1, max_length=128)


class MembersIn(_Lenient):
    user_ids: list[str] = Field(default_factory=list, max_length=500)
    user_id: str | None = Field(default=None, max_length=64)


def _model(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(describe_validation_error(exc)) from exc


async def _body(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


def _paging(request: Request) -> tuple[int, int]:
    offset = query_int(request.query_params.get("offset"), "offset", 0, 0, 10**9)
    limit = query_int(request.query_params.get("limit"), "limit", 20, 0, MAX_LIMIT)
    return offset, limit or MAX_LIMIT


def _listing(
    request: Request, items: list[dict[str, Any]], total: int, offset: int, limit: int
) -> Response:
    body = [{"code": 200, "status": "success", "data": item} for item in items]
    metadata = {"total": total, "count": len(items), "offset": offset, "limit": limit}
    return success(request_id(request), request.method, body, metadata=metadata)


def _one(request: Request, data: dict[str, Any]) -> Response:
    return success(request_id(request), request.method, {"data": data})


# -- ExoPhones -----------------------------------------------------------------------------


def _phone_view(phone: flow_store.ExoPhoneRow, tz: str) -> dict[str, Any]:
    return {
        "id": phone.id,
        "number": phone.number,
        "flow_id": phone.flow_id,
        "flow_name": phone.flow_name,
        "date_created": format_time(phone.created_at, tz),
        "date_updated": format_time(phone.updated_at, tz),
    }


def _number(raw: str, account: Account) -> str:
    try:
        contact = normalise(raw, account.region)
    except InvalidContactUri as exc:
        raise ValidationFailed(f"number: {exc}") from exc
    if contact.is_sip:
        raise ValidationFailed("number: an ExoPhone must be a phone number")
    return contact.uri


async def find_phone(svc: Services, account: Account, ref: str) -> flow_store.ExoPhoneRow:
    """An ExoPhone of the account by its id or its number; 404/10716 when there is none."""
    async with svc.store.read() as conn:
        if _SID_RE.match(ref):
            found = await flow_store.find_exophone(conn, account.sid, id=ref)
            if found is not None:
                return found
        try:
            number = normalise(ref, account.region).uri
        except InvalidContactUri:
            number = ref
        found = await flow_store.find_exophone(conn, account.sid, number=number)
    if found is None:
        raise VirtualNumberNotFound(f"ExoPhone {ref[:64]} not found")
    return found


async def _flow_exists(svc: Services, account: Account, flow_id: str | None) -> None:
    if flow_id is None:
        return
    async with svc.store.read() as conn:
        if await flow_store.get_flow(conn, account.sid, flow_id) is None:
            raise ValidationFailed(f"flow_id: flow {flow_id[:64]} not found")


@router.get("/v2/accounts/{account_sid}/exophones")
@documented("ExoPhones", "inbound", listing("data", ExoPhone), params=PAGING)
async def list_exophones(request: Request, account_sid: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    offset, limit = _paging(request)
    async with svc.store.read() as conn:
        phones, total = await flow_store.list_exophones(
            conn, account.sid, offset=offset, limit=limit
        )
    items = [_phone_view(p, account.timezone) for p in phones]
    return _listing(request, items, total, offset, limit)


@router.post("/v2/accounts/{account_sid}/exophones")
@documented("Add an ExoPhone", "inbound", envelope("data", ExoPhone), body=ExoPhoneIn)
async def add_exophone(request: Request, account_sid: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    body: ExoPhoneIn = _model(ExoPhoneIn, await _body(request))
    number = _number(body.number, account)
    await _flow_exists(svc, account, body.flow_id)
    now = svc.clock.now()
    async with svc.store.tx() as conn:
        if await flow_store.number_taken(conn, number):
            raise Conflict(f"number {number} is already an ExoPhone")
        phone_id = await flow_store.insert_exophone(conn, account.sid, number, body.flow_id, now)
        phone = await flow_store.find_exophone(conn, account.sid, id=phone_id)
    assert phone is not None
    return _one(request, _phone_view(phone, account.timezone))


@router.get("/v2/accounts/{account_sid}/exophones/{ref}")
@documented("An ExoPhone (by id or number)", "inbound", envelope("data", ExoPhone))
async def get_exophone(request: Request, account_sid: str, ref: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    phone = await find_phone(svc, account, ref)
    return _one(request, _phone_view(phone, account.timezone))


@router.put("/v2/accounts/{account_sid}/exophones/{ref}")
@documented(
    "Attach a flow to an ExoPhone", "inbound", envelope("data", ExoPhone), body=ExoPhoneUpdate
)
async def update_exophone(request: Request, account_sid: str, ref: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    body: ExoPhoneUpdate = _model(ExoPhoneUpdate, await _body(request))
    phone = await find_phone(svc, account, ref)
    await _flow_exists(svc, account, body.flow_id)
    async with svc.store.tx() as conn:
        await flow_store.set_exophone_flow(conn, phone.id, body.flow_id, svc.clock.now())
        updated = await flow_store.find_exophone(conn, account.sid, id=phone.id)
    assert updated is not None
    return _one(request, _phone_view(updated, account.timezone))


@router.delete("/v2/accounts/{account_sid}/exophones/{ref}")
@documented("Remove an ExoPhone", "inbound", envelope("data", ExoPhone))
async def remove_exophone(request: Request, account_sid: str, ref: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    phone = await find_phone(svc, account, ref)
    async with svc.store.tx() as conn:
        await flow_store.delete_exophone(conn, phone.id)
    return _one(request, _phone_view(phone, account.timezone))


# -- flows ---------------------------------------------------------------------------------


def _flow_view(flow: flow_store.Flow, numbers: list[str], tz: str) -> dict[str, Any]:
    return {
        "id": flow.id,
        "name": flow.name,
        **flow.definition.to_json(),
        "exophones": numbers,
        "date_created": format_time(flow.created_at, tz),
        "date_updated": format_time(flow.updated_at, tz),
    }


async def _definition(svc: Services, account: Account, data: dict[str, Any]) -> FlowDefinition:
    """Parse and check a flow: its shape, its users/groups exist, its numbers and URLs."""
    unknown = sorted(k for k in data if k != "name" and k not in FLOW_FIELDS)
    if unknown:
        # A typo must not silently reset the routing to its defaults.
        raise ValidationFailed(
            f"{unknown[0][:64]}: unknown field (a flow takes name, {', '.join(FLOW_FIELDS)})"
        )
    try:
        flow = parse_flow_definition({k: v for k, v in data.items() if k in FLOW_FIELDS})
    except FlowInvalid as exc:
        raise ValidationFailed(str(exc)) from exc
    destinations: list[Destination] = []
    for i, d in enumerate(flow.connect.destinations):
        if d.contact_uri is not None:
            try:
                contact = normalise(d.contact_uri, account.region)
            except InvalidContactUri as exc:
                raise ValidationFailed(f"connect.destinations.{i}.contact_uri: {exc}") from exc
            if contact.is_sip and not account.allow_voip:
                raise VoipNotAllowed(f"connect.destinations.{i}.contact_uri: SIP not allowed")
            d = Destination(contact_uri=contact.uri)
        destinations.append(d)
    user_ids = [d.user_id for d in destinations if d.user_id is not None]
    group_ids = [d.group_id for d in destinations if d.group_id is not None]
    async with svc.store.read() as conn:
        users = await group_store.existing_users(conn, account.sid, user_ids)
        groups = await group_store.existing_groups(conn, account.sid, group_ids)
    for i, d in enumerate(destinations):
        if d.user_id is not None and d.user_id not in users:
            raise UserNotFound(f"connect.destinations.{i}.user_id: user {d.user_id} not found")
        if d.group_id is not None and d.group_id not in groups:
            raise ValidationFailed(
                f"connect.destinations.{i}.group_id: group {d.group_id} not found"
            )
    for field, url in definition_urls(flow):
        try:
            await svc.guard.check(url)
        except UnsafeUrl as exc:
            raise ValidationFailed(f"{field}: {exc}") from exc
    return replace(flow, connect=replace(flow.connect, destinations=tuple(destinations)))


def _flow_name(data: dict[str, Any], default: str | None) -> str:
    name = data.get("name", default)
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 128:
        raise ValidationFailed("name: a string of 1 to 128 characters is required")
    return name.strip()


async def _get_flow(svc: Services, account: Account, flow_id: str) -> flow_store.Flow:
    async with svc.store.read() as conn:
        flow = await flow_store.get_flow(conn, account.sid, flow_id)
    if flow is None:
        raise NotFound(f"flow {flow_id[:64]} not found")
    return flow


@router.get("/v2/accounts/{account_sid}/flows")
@documented("Flows", "inbound", listing("data", Flow), params=PAGING)
async def list_flows(request: Request, account_sid: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    offset, limit = _paging(request)
    async with svc.store.read() as conn:
        flows, total = await flow_store.list_flows(conn, account.sid, offset=offset, limit=limit)
        numbers = await flow_store.flow_numbers(conn, [f.id for f in flows])
    items = [_flow_view(f, numbers[f.id], account.timezone) for f in flows]
    return _listing(request, items, total, offset, limit)


@router.post("/v2/accounts/{account_sid}/flows")
@documented("Create a flow", "inbound", envelope("data", Flow), body=FlowIn)
async def create_flow(request: Request, account_sid: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    data = await _body(request)
    name = _flow_name(data, None)
    definition = await _definition(svc, account, data)
    async with svc.store.tx() as conn:
        flow = await flow_store.create_flow(conn, account.sid, name, definition, svc.clock.now())
    return _one(request, _flow_view(flow, [], account.timezone))


@router.get("/v2/accounts/{account_sid}/flows/{flow_id}")
@documented("A flow", "inbound", envelope("data", Flow))
async def get_flow(request: Request, account_sid: str, flow_id: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    flow = await _get_flow(svc, account, flow_id)
    async with svc.store.read() as conn:
        numbers = await flow_store.flow_numbers(conn, [flow.id])
    return _one(request, _flow_view(flow, numbers[flow.id], account.timezone))


@router.put("/v2/accounts/{account_sid}/flows/{flow_id}")
@documented("Replace a flow", "inbound", envelope("data", Flow), body=FlowUpdateIn)
async def update_flow(request: Request, account_sid: str, flow_id: str) -> Response:
    """Replace a flow's definition (fields left out take their defaults); `name` is kept
    when not given. Calls already running keep the definition they started with."""
    svc = services(request)
    account = await api_account(request, account_sid)
    flow = await _get_flow(svc, account, flow_id)
    data = await _body(request)
    name = _flow_name(data, flow.name)
    definition = await _definition(svc, account, data)
    async with svc.store.tx() as conn:
        updated = await flow_store.update_flow(conn, flow, name, definition, svc.clock.now())
        numbers = await flow_store.flow_numbers(conn, [flow.id])
    return _one(request, _flow_view(updated, numbers[flow.id], account.timezone))


@router.delete("/v2/accounts/{account_sid}/flows/{flow_id}")
@documented("Delete a flow (not while attached)", "inbound", envelope("data", Flow))
async def delete_flow(request: Request, account_sid: str, flow_id: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    flow = await _get_flow(svc, account, flow_id)
    async with svc.store.tx() as conn:
        numbers = (await flow_store.flow_numbers(conn, [flow.id]))[flow.id]
        if numbers:
            raise Conflict(f"flow is attached to ExoPhone(s) {', '.join(numbers[:5])}")
        await flow_store.delete_flow(conn, flow)
    return _one(request, _flow_view(flow, [], account.timezone))


# -- groups --------------------------------------------------------------------------------


def _group_view(
    group: group_store.Group, members: list[group_store.Member], tz: str
) -> dict[str, Any]:
    return {
        "id": group.id,
        "name": group.name,
        "users": [{"id": m.user_id, "name": m.name} for m in members],
        "date_created": format_time(group.created_at, tz),
    }


async def _get_group(svc: Services, account: Account, raw_id: str) -> group_store.Group:
    group_id = row_id(raw_id, INT32_MAX)
    group = None
    if group_id is not None:
        async with svc.store.read() as conn:
            group = await group_store.get_group(conn, account.sid, group_id)
    if group is None:
        raise NotFound(f"group {raw_id[:64]} not found")
    return group


async def _check_users(svc: Services, account: Account, user_ids: list[str]) -> None:
    async with svc.store.read() as conn:
        found = await group_store.existing_users(conn, account.sid, user_ids)
    for uid in user_ids:
        if uid not in found:
            raise UserNotFound(f"user {uid[:64]} not found")


async def _group_response(
    request: Request, svc: Services, account: Account, group: group_store.Group
) -> Response:
    async with svc.store.read() as conn:
        members = (await group_store.members(conn, [group.id]))[group.id]
    return _one(request, _group_view(group, members, account.timezone))


@router.get("/v2/accounts/{account_sid}/groups")
@documented("Groups", "inbound", listing("data", Group), params=PAGING)
async def list_groups(request: Request, account_sid: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    offset, limit = _paging(request)
    async with svc.store.read() as conn:
        groups, total = await group_store.list_groups(conn, account.sid, offset=offset, limit=limit)
        members = await group_store.members(conn, [g.id for g in groups])
    items = [_group_view(g, members[g.id], account.timezone) for g in groups]
    return _listing(request, items, total, offset, limit)


@router.post("/v2/accounts/{account_sid}/groups")
@documented("Create a group", "inbound", envelope("data", Group), body=GroupIn)
async def create_group(request: Request, account_sid: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    body: GroupIn = _model(GroupIn, await _body(request))
    await _check_users(svc, account, body.user_ids)
    try:
        async with svc.store.tx() as conn:
            group = await group_store.create_group(conn, account.sid, body.name, svc.clock.now())
            await group_store.add_members(conn, group.id, body.user_ids)
    except group_store.GroupExists as exc:
        raise Conflict(f"a group named {body.name!r} already exists") from exc
    return await _group_response(request, svc, account, group)


@router.get("/v2/accounts/{account_sid}/groups/{group_id}")
@documented("A group", "inbound", envelope("data", Group))
async def get_group(request: Request, account_sid: str, group_id: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    group = await _get_group(svc, account, group_id)
    return await _group_response(request, svc, account, group)


@router.put("/v2/accounts/{account_sid}/groups/{group_id}")
@documented("Rename a group", "inbound", envelope("data", Group), body=GroupUpdate)
async def update_group(request: Request, account_sid: str, group_id: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    body: GroupUpdate = _model(GroupUpdate, await _body(request))
    group = await _get_group(svc, account, group_id)
    try:
        async with svc.store.tx() as conn:
            group = await group_store.rename_group(conn, group, body.name)
    except group_store.GroupExists as exc:
        raise Conflict(f"a group named {body.name!r} already exists") from exc
    return await _group_response(request, svc, account, group)


@router.delete("/v2/accounts/{account_sid}/groups/{group_id}")
@documented("Delete a group (not while a flow uses it)", "inbound", envelope("data", Group))
async def delete_group(request: Request, account_sid: str, group_id: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    group = await _get_group(svc, account, group_id)
    async with svc.store.tx() as conn:
        users = await _flows_using_group(conn, account.sid, group.id)
        if users:
            raise Conflict(f"group is used by flow(s) {', '.join(users[:10])}; change them first")
        members = (await group_store.members(conn, [group.id]))[group.id]
        await group_store.delete_group(conn, group)
    return _one(request, _group_view(group, members, account.timezone))


async def _flows_using_group(conn: AsyncConnection, account_sid: str, group_id: Any) -> list[str]:
    """Names of the account's flows that ring this group."""
    names: list[str] = []
    offset = 0
    while True:
        page, total = await flow_store.list_flows(conn, account_sid, offset=offset, limit=200)
        for flow in page:
            if any(d.group_id == group_id for d in flow.definition.connect.destinations):
                names.append(flow.name)
        offset += len(page)
        if not page or offset >= total:
            return names


@router.get("/v2/accounts/{account_sid}/groups/{group_id}/users")
@documented("A group's users", "inbound", listing("data", GroupMember))
async def list_members(request: Request, account_sid: str, group_id: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    group = await _get_group(svc, account, group_id)
    async with svc.store.read() as conn:
        members = (await group_store.members(conn, [group.id]))[group.id]
    items = [{"id": m.user_id, "name": m.name} for m in members]
    return _listing(request, items, len(items), 0, len(items))


@router.post("/v2/accounts/{account_sid}/groups/{group_id}/users")
@documented("Add users to a group", "inbound", envelope("data", Group), body=MembersIn)
async def add_members(request: Request, account_sid: str, group_id: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    body: MembersIn = _model(MembersIn, await _body(request))
    user_ids = body.user_ids + ([body.user_id] if body.user_id else [])
    if not user_ids:
        raise ValidationFailed("user_ids: at least one user id is required")
    group = await _get_group(svc, account, group_id)
    await _check_users(svc, account, user_ids)
    async with svc.store.tx() as conn:
        await group_store.add_members(conn, group.id, user_ids)
    return await _group_response(request, svc, account, group)


@router.delete("/v2/accounts/{account_sid}/groups/{group_id}/users/{user_id}")
@documented("Remove a user from a group", "inbound", envelope("data", Group))
async def remove_member(
    request: Request, account_sid: str, group_id: str, user_id: str
) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    group = await _get_group(svc, account, group_id)
    async with svc.store.tx() as conn:
        removed = await group_store.remove_member(conn, group.id, user_id)
    if not removed:
        raise UserNotFound(f"user {user_id[:64]} is not in group {group.id}")
    return await _group_response(request, svc, account, group)
