"""Admitting a click-to-call: ExoPhone and device checks, then busy mark + call row in one step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from callbridge.domain.calls import Call, CallState, Direction, Leg, LegSide, LegStatus
from callbridge.domain.options import CallOptions
from callbridge.errors import SipCapacityExhausted, VoipNotAllowed
from callbridge.ids import new_sid
from callbridge.numbers import ContactUri
from callbridge.store.accounts import Account
from callbridge.telephony.base import CapacityExhausted, CapacityReserving

from .core import CallEngine, CallRunner
from .outbound import OutboundRunner
from .writes import ADMIT, Admission, Admitted

RunnerFactory = Callable[[Admitted, str], CallRunner]
"""Builds the runner of an admitted call, given the account's timezone."""


@dataclass(frozen=True, slots=True)
class ClickToCall:
    account: Account
    from_uri: ContactUri
    to_uri: ContactUri | None
    """None for a call that runs a flow once `from` answers (v1's `Url=…/exoml/start/…`)."""
    virtual_number: str
    options: CallOptions
    custom_field: str | None = None
    app: tuple[str, str | None] | None = None
    """(flow id, flow name) of the flow such a call runs."""


async def admit_click_to_call(
    engine: CallEngine,
    request: ClickToCall,
    *,
    runner: RunnerFactory | None = None,
) -> Call:
    """Validate, mark the agent busy and create the call atomically, then start dialling.

    Raises the Exotel error for the first failed check, in SPEC §2.2's order. `runner` drives
    the call once admitted (default: the two-leg click-to-call)."""
    account = request.account
    engine.check_admitting()
    to_is_sip = request.to_uri is not None and request.to_uri.is_sip
    if (request.from_uri.is_sip or to_is_sip) and not account.allow_voip:
        raise VoipNotAllowed(
            "SIP contact URIs are not allowed for this account (allow_voip is false)"
        )
    now: datetime = engine.clock.now()
    call = Call(
        sid=new_sid(),
        account_sid=account.sid,
        direction=Direction.OUTBOUND,
        virtual_number=request.virtual_number,
        from_uri=request.from_uri.uri,
        to_uri=request.to_uri.uri if request.to_uri is not None else None,
        state=CallState.ACTIVE,
        status=None,
        created_at=now,
        updated_at=now,
        start_at=now,
        custom_field=request.custom_field,
        app_id=request.app[0] if request.app else None,
        app_name=request.app[1] if request.app else None,
    )
    from_leg = Leg(
        sid=new_sid(),
        call_sid=call.sid,
        side=LegSide.FROM,
        seq=1,
        contact_uri=request.from_uri.uri,
        name=None,
        status=LegStatus.QUEUED,
        created_at=now,
        updated_at=now,
    )
    driver = engine.driver
    reserving = driver if isinstance(driver, CapacityReserving) else None
    if reserving is not None:
        # Room for both legs first: a full driver refuses the request before any busy mark
        # or call row exists, rather than admitting a call that could never be dialled.
        try:
            reserving.reserve(call.sid)
        except CapacityExhausted as exc:
            raise SipCapacityExhausted(f"{exc}; retry later") from exc
    try:
        admitted: Admitted = await engine.writer.submit(
            ADMIT, Admission(call, from_leg, request.options, engine.node_id)
        )
    except BaseException:
        if reserving is not None:
            reserving.release(call.sid)
        raise
    engine.remember(admitted.call)
    engine.notify(admitted.call)
    if runner is None:
        engine.launch(
            OutboundRunner(
                engine, admitted.call, admitted.options, account.timezone, admitted.from_leg
            )
        )
    else:
        engine.launch(runner(admitted, account.timezone))
    return admitted.call
