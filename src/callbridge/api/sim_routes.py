"""The simulated carrier's control API (SPEC §7), mounted only when the driver is `sim`.

Every route is scoped to the credentials' account. Behaviours are the account's own (its calls
use them; another account's calls never do) and a phone's state and actions cover only the
legs of the account's calls. A number that is another account's device or ExoPhone, and none
of the caller's (its users' devices, its ExoPhones, or a number one of its calls has a leg up
on), answers 404 like anything else of another account; so does another account's ExoPhone
given to `POST /sim/v1/incoming`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from callbridge.api.openapi import documented, plain
from callbridge.api.openapi_models import SimIncoming, SimPhone, SimReset
from callbridge.api.schemas import Number, describe_validation_error, parse_json_object
from callbridge.api.services import authenticated, services
from callbridge.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.store import accounts as account_store
from callbridge.store.accounts import Account
from callbridge.telephony.sim import Behaviour, Outcome, SimulatedCarrier, TooManyBehaviours

router = APIRouter()

MAX_SIM_DELAY_S = 24 * 3600


class BehaviourIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    outcome: Literal[
        "answer", "busy", "no-answer", "reject", "unreachable", "switched-off", "manual"
    ] = "answer"
    answer_after: Annotated[float, Number] = Field(default=1.0, ge=0, le=MAX_SIM_DELAY_S)
    hangup_after: Annotated[float | None, Number] = Field(default=None, ge=0, le=MAX_SIM_DELAY_S)
    dtmf: str | None = Field(default=None, pattern=r"^[0-9*#A-Da-d]{1,64}$")


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    action: Literal["answer", "reject", "hangup", "dtmf"]
    digits: str | None = Field(default=None, pattern=r"^[0-9*#A-Da-d]{1,64}$")


class IncomingIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    from_: str = Field(alias="from", min_length=1, max_length=255)
    to: str = Field(min_length=1, max_length=255)


async def _sim(request: Request) -> tuple[SimulatedCarrier, Account]:
    svc = services(request)
    account = await authenticated(request)
    if svc.sim is None:
        raise NotFound("the simulated carrier is not running")
    return svc.sim, account


async def _number(request: Request, sim: SimulatedCarrier, account: Account, raw: str) -> str:
    """The normalised number, if the account may see it (else 404)."""
    try:
        uri = normalise(raw, account.region).uri
    except InvalidContactUri as exc:
        raise ValidationFailed(f"contact_uri: {exc}") from exc
    if sim.has_live_leg(uri, account.sid):
        return uri
    async with services(request).store.read() as conn:
        owners = await account_store.number_owners(conn, uri)
    if owners and account.sid not in owners:
        raise NotFound(f"number {uri} not found")
    return uri


def _view(sim: SimulatedCarrier, uri: str, account_sid: str) -> dict[str, Any]:
    b = sim.behaviour(uri, account_sid)
    return {
        "contact_uri": uri,
        "outcome": b.outcome.value,
        "answer_after": b.answer_after_s,
        "hangup_after": b.hangup_after_s,
        "dtmf": b.dtmf,
        "state": sim.phone_state(uri, account_sid).value,
    }


def _model(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(describe_validation_error(exc)) from exc


@router.put("/sim/v1/numbers/{contact_uri:path}")
@documented(
    "Script how a number answers the caller's calls", "sim", plain(SimPhone), body=BehaviourIn
)
async def put_number(request: Request, contact_uri: str) -> Response:
    sim, account = await _sim(request)
    uri = await _number(request, sim, account, contact_uri)
    body: BehaviourIn = _model(BehaviourIn, parse_json_object(await request.body()))
    behaviour = Behaviour(
        outcome=Outcome(body.outcome),
        answer_after_s=body.answer_after,
        hangup_after_s=body.hangup_after,
        dtmf=body.dtmf,
    )
    try:
        sim.set_behaviour(uri, behaviour, account.sid)
    except TooManyBehaviours as exc:
        raise Conflict(f"{exc}; DELETE /sim/v1/numbers resets them") from exc
    return JSONResponse(_view(sim, uri, account.sid))


@router.post("/sim/v1/numbers/{contact_uri:path}/actions")
@documented("Drive the number's legs of the caller's calls", "sim", plain(SimPhone), body=ActionIn)
async def act(request: Request, contact_uri: str) -> Response:
    sim, account = await _sim(request)
    uri = await _number(request, sim, account, contact_uri)
    body: ActionIn = _model(ActionIn, parse_json_object(await request.body()))
    if body.action == "dtmf" and not body.digits:
        raise ValidationFailed("digits: required for the dtmf action")
    touched = sim.act(uri, body.action, body.digits, account.sid)
    return JSONResponse({**_view(sim, uri, account.sid), "legs_affected": touched})


@router.get("/sim/v1/numbers/{contact_uri:path}")
@documented("A number's behaviour and live state", "sim", plain(SimPhone))
async def get_number(request: Request, contact_uri: str) -> Response:
    sim, account = await _sim(request)
    uri = await _number(request, sim, account, contact_uri)
    return JSONResponse(_view(sim, uri, account.sid))


@router.delete("/sim/v1/numbers")
@documented("Forget the caller's behaviours", "sim", plain(SimReset))
async def reset_numbers(request: Request) -> Response:
    """Forget the caller's behaviours; other accounts keep theirs."""
    sim, account = await _sim(request)
    sim.reset(account.sid)
    return JSONResponse({"status": "reset"})


@router.post("/sim/v1/incoming")
@documented(
    "A customer calls one of the caller's ExoPhones", "sim", plain(SimIncoming), body=IncomingIn
)
async def incoming(request: Request) -> Response:
    svc = services(request)
    _, account = await _sim(request)
    body: IncomingIn = _model(IncomingIn, parse_json_object(await request.body()))
    start_inbound = svc.extras.get("start_inbound")
    if start_inbound is None:
        raise ServiceUnavailable("inbound calls are not available")
    try:
        caller = normalise(body.from_, account.region).uri
    except InvalidContactUri as exc:
        raise ValidationFailed(f"from: {exc}") from exc
    call_sid: str = await start_inbound(caller, body.to, account.sid)
    return JSONResponse({"call_sid": call_sid})
