"""Admitting a click-to-call: ExoPhone and device checks, then busy mark + call row in one step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from callbridge.domain.calls import Call, CallState, Direction, Leg, LegSide, LegStatus
from callbridge.domain.options import CallOptions
from callbridge.domain.presence import DeviceSnapshot, device_refusal
from callbridge.errors import DeviceBusy, VirtualNumberNotFound, VoipNotAllowed
from callbridge.ids import new_sid
from callbridge.numbers import ContactUri
from callbridge.store import accounts as account_store
from callbridge.store import busy as busy_store
from callbridge.store import calls as call_store
from callbridge.store import users as user_store
from callbridge.store.accounts import Account

from .core import CallEngine
from .outbound import OutboundRunner


@dataclass(frozen=True, slots=True)
class ClickToCall:
    account: Account
    from_uri: ContactUri
    to_uri: ContactUri
    virtual_number: str
    options: CallOptions
    custom_field: str | None = None


async def admit_click_to_call(
    engine: CallEngine, request: ClickToCall, *, reachable: bool = True
) -> Call:
    """Validate, mark the agent busy and create the call atomically, then start dialling.

    Raises the Exotel error for the first failed check, in SPEC §2.2's order."""
    account = request.account
    if (request.from_uri.is_sip or request.to_uri.is_sip) and not account.allow_voip:
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
        to_uri=request.to_uri.uri,
        state=CallState.ACTIVE,
        status=None,
        created_at=now,
        updated_at=now,
        start_at=now,
        custom_field=request.custom_field,
    )
    options = request.options
    try:
        async with engine.store.tx() as conn:
            if await account_store.find_exophone(conn, account.sid, request.virtual_number) is None:
                raise VirtualNumberNotFound(
                    f"virtual_number {request.virtual_number} is not an ExoPhone of this account"
                )
            found = await user_store.device_by_contact(conn, account.sid, request.from_uri.uri)
            leg_name: str | None = None
            if found is not None:
                device, user = found
                leg_name = user.name
                refusal = device_refusal(
                    DeviceSnapshot(
                        available=device.available,
                        verified=device.verified,
                        reachable=reachable,
                        busy=False,
                    )
                )
                if refusal is not None:
                    raise refusal
                if not options.state_management:
                    from dataclasses import replace

                    options = replace(options, state_management=True)
            if options.state_management:
                await busy_store.mark_busy(
                    conn,
                    account_sid=account.sid,
                    contact_uri=request.from_uri.uri,
                    call_sid=call.sid,
                    owner_node=engine.node_id,
                    now=now,
                )
            await call_store.insert_call(conn, call, options, engine.node_id)
            from_leg = Leg(
                sid=new_sid(),
                call_sid=call.sid,
                side=LegSide.FROM,
                seq=1,
                contact_uri=request.from_uri.uri,
                name=leg_name,
                status=LegStatus.QUEUED,
                created_at=now,
                updated_at=now,
            )
            await call_store.insert_leg(conn, from_leg)
    except busy_store.AlreadyBusy as exc:
        raise DeviceBusy(f"{request.from_uri.uri} is on another call") from exc
    engine.launch(OutboundRunner(engine, call, options, account.timezone, from_leg))
    return call
