"""Device verification: call the device, play a short numeric code, and mark the device
verified when the person keys that code back (DTMF) within the attempt.

Each attempt is a small runner on the call engine (it receives its leg's events like a call
does) but has no call row: its only durable trace is the digest of the code in
`devices.verification_code`, which a newer attempt or a changed number replaces, so a stale
attempt can never verify the wrong number.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from callbridge.domain.calls import Call, CallState, Direction
from callbridge.domain.options import CallOptions
from callbridge.errors import Conflict, DeviceBusy
from callbridge.ids import new_sid
from callbridge.store import accounts as account_store
from callbridge.store import busy as busy_store
from callbridge.store import users as user_store
from callbridge.store.accounts import Account
from callbridge.store.users import DeviceRow
from callbridge.telephony.base import (
    FRAME_BYTES,
    SAMPLE_RATE,
    DialRequest,
    DriverError,
    Handle,
    LegEventKind,
)

from .core import CallEngine, CallRunner, Message, Shutdown, TimerFired

log = logging.getLogger(__name__)

CODE_DIGITS = 4
RING_TIMEOUT_S = 30.0
ENTRY_TIMEOUT_S = 45.0
MAX_TRIES = 3


class VerificationStatus(StrEnum):
    CALLING = "calling"
    AWAITING_CODE = "awaiting_code"
    VERIFIED = "verified"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    WRONG_CODE = "wrong_code"
    TIMED_OUT = "timed_out"
    HUNG_UP = "hung_up"
    SUPERSEDED = "superseded"
    ABORTED = "aborted"

    @property
    def is_final(self) -> bool:
        return self not in (VerificationStatus.CALLING, VerificationStatus.AWAITING_CODE)


@dataclass(frozen=True, slots=True)
class VerificationAttempt:
    id: str
    account_sid: str
    user_id: str
    device_id: str
    contact_uri: str
    status: VerificationStatus
    ring_timeout_s: float
    entry_timeout_s: float

    def view(self) -> dict[str, object]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "contact_uri": self.contact_uri,
            "status": self.status.value,
            "ring_timeout": self.ring_timeout_s,
            "code_entry_timeout": self.entry_timeout_s,
        }


def new_code(digits: int = CODE_DIGITS) -> str:
    return "".join(str(secrets.randbelow(10)) for _ in range(digits))


def code_audio(code: str, *, tone_hz: float = 880.0) -> bytes:
    """The code as beeps a person can count: digit d is d short beeps (0 is ten), with a
    pause between digits and a longer one before the code repeats. 8 kHz 16-bit PCM."""

    def tone(seconds: float) -> bytes:
        n = int(SAMPLE_RATE * seconds)
        return b"".join(
            struct.pack("<h", int(9000 * math.sin(2 * math.pi * tone_hz * i / SAMPLE_RATE)))
            for i in range(n)
        )

    def silence(seconds: float) -> bytes:
        return b"\x00\x00" * int(SAMPLE_RATE * seconds)

    beep = tone(0.15)
    parts: list[bytes] = []
    for char in code:
        count = int(char) or 10
        for _ in range(count):
            parts += [beep, silence(0.15)]
        parts.append(silence(0.7))
    parts.append(silence(1.5))
    pcm = b"".join(parts)
    return pcm + b"\x00" * (-len(pcm) % FRAME_BYTES)


class VerificationRunner(CallRunner):
    """One verification call: ring (bounded), play the code, collect digits (bounded)."""

    def __init__(
        self,
        service: VerificationService,
        attempt: VerificationAttempt,
        code: str,
        caller_id: str,
        tz_name: str,
    ) -> None:
        engine = service.engine
        now = engine.clock.now()
        call = Call(
            sid=attempt.id,
            account_sid=attempt.account_sid,
            direction=Direction.OUTBOUND,
            virtual_number=caller_id,
            from_uri=attempt.contact_uri,
            to_uri=None,
            state=CallState.ACTIVE,
            status=None,
            created_at=now,
            updated_at=now,
        )
        super().__init__(engine, call, CallOptions(), tz_name)
        self.service = service
        self.attempt = attempt
        self.code = code
        self.digest = user_store.verification_digest(attempt.device_id, attempt.contact_uri, code)
        self.leg_sid = new_sid()
        self.caller_id = caller_id
        self.entered = ""
        self.tries = 0
        self.player: Handle | None = None

    async def begin(self) -> None:
        self.own_leg(self.leg_sid)
        try:
            await self.driver.dial(
                DialRequest(
                    leg_sid=self.leg_sid,
                    call_sid=self.attempt.id,
                    account_sid=self.attempt.account_sid,
                    contact_uri=self.attempt.contact_uri,
                    caller_id=self.caller_id,
                    ring_timeout_s=self.attempt.ring_timeout_s,
                )
            )
        except DriverError as exc:
            log.warning(
                "verification dial failed",
                extra={"device": self.attempt.device_id, "error": str(exc)},
            )
            await self._finish(VerificationStatus.FAILED)
            return
        self.start_timer("ring", self.attempt.ring_timeout_s)

    async def handle(self, message: Message) -> None:
        if self.finished:
            return
        if isinstance(message, Shutdown):
            await self._end(VerificationStatus.ABORTED)
        elif isinstance(message, TimerFired):
            if message.name == "ring" and self.attempt.status is VerificationStatus.CALLING:
                await self._end(VerificationStatus.NO_ANSWER)
            elif message.name == "entry":
                await self._end(VerificationStatus.TIMED_OUT)
        elif message.leg_sid != self.leg_sid:
            return
        elif message.kind is LegEventKind.ANSWERED:
            await self._answered()
        elif message.kind is LegEventKind.DTMF:
            await self._digits(message.digits or "")
        elif message.kind is LegEventKind.RINGING:
            return
        else:
            self.disown_leg(self.leg_sid)
            status = (
                VerificationStatus.HUNG_UP
                if self.attempt.status is VerificationStatus.AWAITING_CODE
                else VerificationStatus.NO_ANSWER
                if message.kind
                in (LegEventKind.NO_ANSWER, LegEventKind.BUSY, LegEventKind.REJECTED)
                else VerificationStatus.FAILED
            )
            await self._finish(status)

    async def abort(self, reason: str) -> None:
        log.error(
            "verification aborted", extra={"device": self.attempt.device_id, "reason": reason}
        )
        try:
            await self._end(VerificationStatus.ABORTED)
        except Exception:
            log.exception("verification abort failed", extra={"device": self.attempt.device_id})
            self.finished = True

    async def _answered(self) -> None:
        self.cancel_timer("ring")
        self._set(VerificationStatus.AWAITING_CODE)
        self.start_timer("entry", self.attempt.entry_timeout_s)
        try:
            self.player = await self.driver.play(self.leg_sid, code_audio(self.code), loop=True)
        except DriverError as exc:
            log.warning("verification playback failed", extra={"error": str(exc)})

    async def _digits(self, digits: str) -> None:
        if self.attempt.status is not VerificationStatus.AWAITING_CODE:
            return
        for char in digits:
            if char in "*#":
                self.entered = ""  # the person starts over
                continue
            if not char.isdigit():
                continue
            self.entered += char
            if len(self.entered) < len(self.code):
                continue
            guess, self.entered = self.entered, ""
            if hmac.compare_digest(guess, self.code):
                await self._succeed()
                return
            self.tries += 1
            if self.tries >= self.service.max_tries:
                await self._end(VerificationStatus.WRONG_CODE)
                return

    async def _succeed(self) -> None:
        async with self.engine.store.tx() as conn:
            ok = await user_store.complete_verification(
                conn, self.attempt.device_id, self.digest, self.attempt.contact_uri, self.now()
            )
        await self._end(VerificationStatus.VERIFIED if ok else VerificationStatus.SUPERSEDED)

    async def _end(self, status: VerificationStatus) -> None:
        """Hang up our leg (if still up) and finish with `status`."""
        await self.hangup_quietly(self.leg_sid)
        await self._finish(status)

    async def _finish(self, status: VerificationStatus) -> None:
        self.cancel_all_timers()
        if self.player is not None:
            self.player.stop()
            self.player = None
        if status is not VerificationStatus.VERIFIED:
            try:
                async with self.engine.store.tx() as conn:
                    await user_store.abandon_verification(conn, self.attempt.device_id, self.digest)
            except Exception:
                log.exception(
                    "clearing verification failed", extra={"device": self.attempt.device_id}
                )
        self._set(status)
        self.finished = True
        log.info(
            "device verification ended",
            extra={"device": self.attempt.device_id, "status": status.value, "tries": self.tries},
        )

    def _set(self, status: VerificationStatus) -> None:
        self.attempt = replace(self.attempt, status=status)
        self.service.attempts[self.attempt.device_id] = self.attempt


class VerificationService:
    """Starts verification calls on this node and remembers each device's latest attempt."""

    def __init__(
        self,
        engine: CallEngine,
        *,
        ring_timeout_s: float = RING_TIMEOUT_S,
        entry_timeout_s: float = ENTRY_TIMEOUT_S,
        max_tries: int = MAX_TRIES,
        code_factory: Callable[[], str] = new_code,
    ) -> None:
        self.engine = engine
        self.ring_timeout_s = ring_timeout_s
        self.entry_timeout_s = entry_timeout_s
        self.max_tries = max_tries
        self.code_factory = code_factory
        self.attempts: dict[str, VerificationAttempt] = {}

    def in_progress(self, device_id: str) -> bool:
        attempt = self.attempts.get(device_id)
        return attempt is not None and not attempt.status.is_final

    async def start(self, account: Account, device: DeviceRow) -> VerificationAttempt:
        """Record the attempt and start calling; raises if the device is on a call or is
        already being verified from this node."""
        if self.in_progress(device.id):
            raise Conflict("a verification call to this device is already in progress")
        code = self.code_factory()
        attempt = VerificationAttempt(
            id=new_sid(),
            account_sid=account.sid,
            user_id=device.user_id,
            device_id=device.id,
            contact_uri=device.contact_uri,
            status=VerificationStatus.CALLING,
            ring_timeout_s=self.ring_timeout_s,
            entry_timeout_s=self.entry_timeout_s,
        )
        async with self.engine.store.tx() as conn:
            busy = await busy_store.busy_uris(conn, account.sid, [device.contact_uri])
            if busy:
                raise DeviceBusy(f"{device.contact_uri} is on a call; verify it when it is free")
            phones = await account_store.list_exophones(conn, account.sid)
            await user_store.begin_verification(
                conn,
                device.id,
                user_store.verification_digest(device.id, device.contact_uri, code),
                self.engine.clock.now(),
            )
        caller_id = phones[0].number if phones else ""
        runner = VerificationRunner(self, attempt, code, caller_id, account.timezone)
        self.attempts[device.id] = attempt
        self.engine.launch(runner)
        log.info("device verification started", extra={"device": device.id, "attempt": attempt.id})
        return attempt
