"""The simulated carrier's control API (SPEC §7), mounted only when the driver is `sim`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from callbridge.api.schemas import Number, describe_validation_error, parse_json_object
from callbridge.api.services import services
from callbridge.errors import NotFound, ServiceUnavailable, ValidationFailed
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.telephony.sim import Behaviour, Outcome, SimulatedCarrier

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


async def _sim(request: Request) -> SimulatedCarrier:
    svc = services(request)
    await svc.auth.authenticate(request.headers.get("authorization"))
    if svc.sim is None:
        raise NotFound("the simulated carrier is not running")
    return svc.sim


def _uri(raw: str) -> str:
    try:
        return normalise(raw).uri
    except InvalidContactUri as exc:
        raise ValidationFailed(f"contact_uri: {exc}") from exc


def _view(sim: SimulatedCarrier, uri: str) -> dict[str, Any]:
    b = sim.behaviour(uri)
    return {
        "contact_uri": uri,
        "outcome": b.outcome.value,
        "answer_after": b.answer_after_s,
        "hangup_after": b.hangup_after_s,
        "dtmf": b.dtmf,
        "state": sim.phone_state(uri).value,
    }


def _model(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(describe_validation_error(exc)) from exc


@router.put("/sim/v1/numbers/{contact_uri:path}")
async def put_number(request: Request, contact_uri: str) -> Response:
    sim = await _sim(request)
    uri = _uri(contact_uri)
    body: BehaviourIn = _model(BehaviourIn, parse_json_object(await request.body()))
    sim.set_behaviour(
        uri,
        Behaviour(
            outcome=Outcome(body.outcome),
            answer_after_s=body.answer_after,
            hangup_after_s=body.hangup_after,
            dtmf=body.dtmf,
        ),
    )
    return JSONResponse(_view(sim, uri))


@router.post("/sim/v1/numbers/{contact_uri:path}/actions")
async def act(request: Request, contact_uri: str) -> Response:
    sim = await _sim(request)
    uri = _uri(contact_uri)
    body: ActionIn = _model(ActionIn, parse_json_object(await request.body()))
    if body.action == "dtmf" and not body.digits:
        raise ValidationFailed("digits: required for the dtmf action")
    touched = sim.act(uri, body.action, body.digits)
    return JSONResponse({**_view(sim, uri), "legs_affected": touched})


@router.get("/sim/v1/numbers/{contact_uri:path}")
async def get_number(request: Request, contact_uri: str) -> Response:
    sim = await _sim(request)
    return JSONResponse(_view(sim, _uri(contact_uri)))


@router.delete("/sim/v1/numbers")
async def reset_numbers(request: Request) -> Response:
    sim = await _sim(request)
    sim.reset()
    return JSONResponse({"status": "reset"})


@router.post("/sim/v1/incoming")
async def incoming(request: Request) -> Response:
    svc = services(request)
    sim = await _sim(request)
    del sim
    body: IncomingIn = _model(IncomingIn, parse_json_object(await request.body()))
    start_inbound = svc.extras.get("start_inbound")
    if start_inbound is None:
        raise ServiceUnavailable("inbound calls are not available")
    try:
        caller = normalise(body.from_).uri
    except InvalidContactUri as exc:
        raise ValidationFailed(f"from: {exc}") from exc
    call_sid: str = await start_inbound(caller, body.to)
    return JSONResponse({"call_sid": call_sid})
