"""The real SIP driver: the `TelephonyDriver` protocol over a pool of pjsua2 media worker
processes (`sip_pool.py`), dispatching each call's legs to one worker.

All legs of a call live on one worker so they can be bridged: a click-to-call reserves two
slots on a worker when it is admitted (`reserve`; a full pool refuses it there), and every leg
of a `call_sid` is placed on the worker holding the call. A worker that dies has its legs
reported as `failed` (not yet answered) or `hangup` (answered), its recordings keep what
was encoded, and it is replaced. Recordings are made and encoded in the workers (`record`);
only stream taps send audio frames to this process.

Inbound calls: register `set_incoming_handler(cb)`; an INVITE to any worker rings (180) and
`cb(IncomingCall)` runs on the event loop. The engine then calls `bind_call(leg_sid, call_sid)`
(before dialling agents for it, so they land on the caller's worker), and `answer(leg_sid)`
(200 OK; an `answered` event follows on ACK) or `hangup(leg_sid)` (480 while unanswered).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from callbridge.clock import Clock, SystemClock
from callbridge.domain.options import RecordingChannels, RecordingFormat
from callbridge.settings import Settings
from callbridge.telephony import base
from callbridge.telephony.base import (
    AudioConsumer,
    CapacityExhausted,
    DialRequest,
    DriverError,
    EventSink,
    Handle,
    IncomingHandler,
    LegEvent,
    LegEventKind,
    RecordingHandle,
    UnknownLeg,
)
from callbridge.telephony.sip_pool import RESERVED_PER_CALL, WorkerHandle, WorkerPool
from callbridge.telephony.sip_protocol import EngineInfo
from callbridge.telephony.sip_recording import SipRecording
from callbridge.telephony.sip_uri import (
    SipTargetError,
    Trunk,
    caller_id_uri,
    contact_from_header,
    dial_target,
)

log = logging.getLogger("callbridge.sip")

ContactResolver = Callable[[str, str], Awaitable[str | None]]

_TERMINAL = frozenset(
    {
        LegEventKind.BUSY,
        LegEventKind.NO_ANSWER,
        LegEventKind.REJECTED,
        LegEventKind.FAILED,
        LegEventKind.HANGUP,
    }
)


@dataclass(frozen=True, slots=True)
class IncomingCall(base.IncomingCall):
    """An INVITE that reached a worker; it is ringing (180) until answered or hung up.

    `from_uri` is the caller as a contact URI (E.164 when the From user part is a number,
    else `sip:`); `to_uri` the dialled number (an ExoPhone, E.164) or the To `sip:` URI.
    A `base.IncomingCall`, so the engine's handler for any driver takes it."""

    sip_from: str = ""
    sip_to: str = ""


@dataclass(eq=False)
class _LegRef:
    leg_sid: str
    worker: WorkerHandle
    key: str
    incoming: bool
    answered: bool = False
    terminal: bool = False
    hung_up_by_engine: bool = False


class _StopHandle:
    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop: Callable[[], None] | None = stop

    def stop(self) -> None:
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()


class SipDriver:
    """`TelephonyDriver` on SIP. Construct with the Settings; `start` spawns the workers."""

    name = "sip"

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        workers: int | None = None,
        start_timeout_s: float = 20.0,
        request_timeout_s: float = 10.0,
        pj_log_level: int = 1,
        worker_python: str | None = None,
    ) -> None:
        """`worker_python` runs the workers under another interpreter (the tests use a venv
        with the PyPI wheel to prove both engines)."""
        self._settings = settings
        self._clock: Clock = clock or SystemClock()
        self._pool = WorkerPool(
            settings,
            workers=workers or settings.sip_workers,
            start_timeout_s=start_timeout_s,
            request_timeout_s=request_timeout_s,
            pj_log_level=pj_log_level,
            on_message=self._on_message,
            on_exit=self._on_worker_exit,
            worker_python=worker_python,
        )
        self._trunk = Trunk(
            host=settings.sip_trunk_host,
            port=settings.sip_trunk_port,
            transport=settings.sip_trunk_transport,
            number_format=settings.sip_trunk_number_format,
        )
        self._caller_domain = settings.sip_trunk_host or settings.sip_bind_host
        self._legs: dict[str, _LegRef] = {}
        self._calls: dict[str, WorkerHandle] = {}
        self._taps: dict[int, AudioConsumer] = {}
        self._recordings: dict[int, tuple[WorkerHandle, SipRecording]] = {}
        self._sink: EventSink | None = None
        self._incoming: IncomingHandler | None = None
        self._resolver: ContactResolver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        if self._pool.running:
            raise DriverError("SIP driver already started")
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        try:
            await self._pool.start()
        except DriverError:
            self._forget_legs()
            raise
        engine = self.engine()
        log.info(
            "sip driver started engine=%s workers=%d capacity=%d sessions base_port=%d",
            engine.describe() if engine else None,
            len(self._pool.workers),
            (self.capacity() or 0) // RESERVED_PER_CALL,
            self._settings.sip_port,
        )

    async def stop(self) -> None:
        await self._pool.stop()
        self._forget_legs()

    def _forget_legs(self) -> None:
        self._legs.clear()
        self._calls.clear()
        self._taps.clear()
        for _, recording in self._recordings.values():
            recording.on_lost("SIP driver stopped")
        self._recordings.clear()

    def engine(self) -> EngineInfo | None:
        """The pjsua2 engine the workers run (they all run the same one)."""
        return next((w.engine for w in self._pool.workers if w.engine is not None), None)

    # --- worker messages (event loop) --------------------------------------------------------

    def _on_message(self, worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "audio":
            _, tap_id, leg_sid, frame = message
            consumer = self._taps.get(tap_id)
            if consumer is not None:
                consumer.on_audio(leg_sid, frame)
        elif kind == "leg":
            _, leg_sid, event_kind, reason, digits = message
            self._on_leg_event(leg_sid, LegEventKind(event_kind), reason, digits)
        elif kind == "gone":
            self._drop_leg(message[1])
        elif kind == "incoming":
            self._on_incoming(worker, message[1], message[2], message[3])
        elif kind == "rec_data":
            entry = self._recordings.get(message[1])
            if entry is not None:
                entry[1].on_data(message[2], message[3])
        elif kind == "rec_done":
            entry = self._recordings.pop(message[1], None)
            if entry is not None:
                entry[1].on_done(message[2], message[3])

    def _on_leg_event(
        self, leg_sid: str, kind: LegEventKind, reason: str | None, digits: str | None
    ) -> None:
        ref = self._legs.get(leg_sid)
        if ref is None or ref.hung_up_by_engine or ref.terminal:
            return
        if kind is LegEventKind.ANSWERED:
            ref.answered = True
        elif kind in _TERMINAL:
            ref.terminal = True
        log.info("sip leg=%s event=%s reason=%s", leg_sid, kind.value, reason)
        self._deliver(LegEvent(leg_sid, kind, self._clock.monotonic(), digits, reason))

    def _on_incoming(self, worker: WorkerHandle, leg_sid: str, sip_from: str, sip_to: str) -> None:
        ref = _LegRef(leg_sid, worker, key=leg_sid, incoming=True)
        self._register(ref)
        call = IncomingCall(
            leg_sid=leg_sid,
            from_uri=contact_from_header(sip_from),
            to_uri=contact_from_header(sip_to),
            sip_from=sip_from,
            sip_to=sip_to,
        )
        log.info("sip incoming leg=%s worker=%d", leg_sid, worker.index)
        handler = self._incoming
        if handler is None or not self._pool.running:
            ref.hung_up_by_engine = True
            self._pool.post(worker, "hangup", leg_sid)
            return
        try:
            handler(call)
        except Exception:
            log.exception("incoming handler failed leg=%s", leg_sid)
            ref.hung_up_by_engine = True
            self._pool.post(worker, "hangup", leg_sid)

    def _on_worker_exit(self, worker: WorkerHandle) -> None:
        """Report the dead worker's legs as `failed` (not yet answered) or `hangup` (answered)."""
        now = self._clock.monotonic()
        for leg_sid in list(worker.legs):
            ref = self._legs.get(leg_sid)
            if ref is not None and not (ref.hung_up_by_engine or ref.terminal):
                ref.terminal = True
                kind = LegEventKind.HANGUP if ref.answered else LegEventKind.FAILED
                self._deliver(LegEvent(leg_sid, kind, now, None, "sip worker died"))
            self._drop_leg(leg_sid)
        for key in [k for k, w in self._calls.items() if w is worker]:
            del self._calls[key]
        worker.groups.clear()
        for rec_id, (holder, recording) in list(self._recordings.items()):
            if holder is worker:
                del self._recordings[rec_id]
                recording.on_lost("sip worker died")

    # --- bookkeeping -------------------------------------------------------------------------

    def _register(self, ref: _LegRef) -> None:
        self._legs[ref.leg_sid] = ref
        ref.worker.legs.add(ref.leg_sid)
        ref.worker.groups.setdefault(ref.key, set()).add(ref.leg_sid)
        self._calls[ref.key] = ref.worker

    def _drop_leg(self, leg_sid: str) -> None:
        ref = self._legs.pop(leg_sid, None)
        if ref is None:
            return
        worker = ref.worker
        worker.legs.discard(leg_sid)
        group = worker.groups.get(ref.key)
        if group is not None:
            group.discard(leg_sid)
            if not group:
                del worker.groups[ref.key]
                if self._calls.get(ref.key) is worker:
                    del self._calls[ref.key]

    def _deliver(self, event: LegEvent) -> None:
        if self._sink is None:
            return
        try:
            self._sink(event)
        except Exception:
            log.exception("event sink failed leg=%s", event.leg_sid)

    def _pick_worker(self, call_sid: str) -> WorkerHandle:
        pinned = self._calls.get(call_sid)
        if pinned is not None:
            if not pinned.alive or len(pinned.legs) >= pinned.max_calls:
                raise CapacityExhausted(f"SIP worker {pinned.index} holding call is full")
            return pinned
        candidates = [
            w for w in self._pool.workers if w.alive and w.free_slots() >= RESERVED_PER_CALL
        ]
        if not candidates:
            alive = [w for w in self._pool.workers if w.alive]
            raise CapacityExhausted(
                f"SIP capacity exhausted: {len(alive)} of {len(self._pool.workers)} media "
                f"workers running, all full ({sum(w.max_calls for w in alive)} calls)"
            )
        return max(candidates, key=lambda w: (w.free_slots(), -w.index))

    def _ref(self, leg_sid: str) -> _LegRef:
        ref = self._legs.get(leg_sid)
        if ref is None:
            raise UnknownLeg(leg_sid)
        return ref

    # --- TelephonyDriver ---------------------------------------------------------------------

    def capacity(self) -> int | None:
        return sum(max(0, w.free_slots()) for w in self._pool.workers)

    def reserve(self, call_sid: str) -> None:
        """Hold two slots on one worker for a call about to be admitted."""
        if not self._pool.running:
            raise CapacityExhausted("SIP driver is not running")
        if call_sid in self._calls:
            return
        worker = self._pick_worker(call_sid)
        worker.groups.setdefault(call_sid, set())
        self._calls[call_sid] = worker

    def release(self, call_sid: str) -> None:
        """Drop a reservation no leg took (a refused admission, a call that never dialled)."""
        worker = self._calls.get(call_sid)
        if worker is not None and not worker.groups.get(call_sid):
            worker.groups.pop(call_sid, None)
            del self._calls[call_sid]

    async def dial(self, request: DialRequest) -> None:
        if not self._pool.running:
            raise DriverError("SIP driver is not running")
        if request.leg_sid in self._legs:
            raise DriverError(f"leg {request.leg_sid} already exists")
        try:
            # A registered phone is dialled at its binding (resolved before a worker is
            # picked, so no await sits between picking and registering the leg).
            bound = await self._resolve(request)
        except SipTargetError as exc:
            self._fail_soon(request.leg_sid, f"cannot route: {exc}")
            return
        worker = self._pick_worker(request.call_sid)
        ref = _LegRef(request.leg_sid, worker, key=request.call_sid, incoming=False)
        try:
            target = bound or dial_target(request.contact_uri, self._trunk)
        except SipTargetError as exc:
            self._fail_soon(request.leg_sid, f"cannot route: {exc}")
            return
        try:
            from_uri: str | None = caller_id_uri(request.caller_id, self._caller_domain)
        except SipTargetError:
            from_uri = None
        self._register(ref)
        log.info(
            "sip dial leg=%s call=%s worker=%d", request.leg_sid, request.call_sid, worker.index
        )
        try:
            await self._pool.request(
                worker, "dial", request.leg_sid, target, from_uri, request.ring_timeout_s
            )
        except DriverError as exc:
            if self._legs.get(request.leg_sid) is ref and not ref.hung_up_by_engine:
                self._drop_leg(request.leg_sid)
                self._fail_soon(request.leg_sid, str(exc))

    async def _resolve(self, request: DialRequest) -> str | None:
        if self._resolver is None or not request.contact_uri.startswith(("sip:", "sips:")):
            return None
        try:
            return await self._resolver(request.account_sid, request.contact_uri)
        except SipTargetError:
            raise
        except Exception as exc:
            raise SipTargetError(f"registration lookup failed: {type(exc).__name__}") from exc

    def _fail_soon(self, leg_sid: str, reason: str) -> None:
        """Report a dial failure after `dial` returns, as the protocol asks."""
        log.warning("sip dial failed leg=%s reason=%s", leg_sid, reason)
        event = LegEvent(leg_sid, LegEventKind.FAILED, self._clock.monotonic(), None, reason)
        asyncio.get_running_loop().call_soon(self._deliver, event)

    async def hangup(self, leg_sid: str) -> None:
        ref = self._legs.get(leg_sid)
        if ref is None or ref.hung_up_by_engine:
            return
        ref.hung_up_by_engine = True
        try:
            await self._pool.request(ref.worker, "hangup", leg_sid)
        except DriverError as exc:
            log.warning("sip hangup leg=%s: %s", leg_sid, exc)

    async def bridge(self, leg_a: str, leg_b: str) -> None:
        a, b = self._ref(leg_a), self._ref(leg_b)
        if a.worker is not b.worker:
            raise DriverError("legs are on different SIP workers; dial with the same call_sid")
        await self._pool.request(a.worker, "bridge", leg_a, leg_b)

    async def play(self, leg_sid: str, pcm: bytes, *, loop: bool = False) -> Handle:
        ref = self._ref(leg_sid)
        worker, play_id = ref.worker, self._pool.next_id()
        await self._pool.request(worker, "play", play_id, leg_sid, bytes(pcm), loop)
        return _StopHandle(lambda: self._pool.post(worker, "stop_play", play_id))

    async def tap(self, leg_sids: Sequence[str], consumer: AudioConsumer) -> Handle:
        by_worker: dict[int, tuple[WorkerHandle, list[str]]] = {}
        for leg_sid in leg_sids:
            ref = self._ref(leg_sid)
            by_worker.setdefault(ref.worker.index, (ref.worker, []))[1].append(leg_sid)
        started: list[tuple[WorkerHandle, int]] = []

        def stop() -> None:
            for worker, tap_id in started:
                self._taps.pop(tap_id, None)
                self._pool.post(worker, "stop_tap", tap_id)

        try:
            for worker, sids in by_worker.values():
                tap_id = self._pool.next_id()
                self._taps[tap_id] = consumer
                started.append((worker, tap_id))
                await self._pool.request(worker, "tap", tap_id, sids)
        except DriverError:
            stop()
            raise
        return _StopHandle(stop)

    async def record(
        self,
        left_leg_sid: str,
        right_leg_sid: str,
        channels: RecordingChannels,
        fmt: RecordingFormat,
    ) -> RecordingHandle:
        left, right = self._ref(left_leg_sid), self._ref(right_leg_sid)
        worker = left.worker
        if right.worker is not worker:
            raise DriverError("legs are on different SIP workers; dial with the same call_sid")
        rec_id = self._pool.next_id()
        recording = SipRecording(
            2 if channels is RecordingChannels.DUAL else 1,
            fmt,
            lambda: self._pool.request(worker, "stop_record", rec_id),
        )
        self._recordings[rec_id] = (worker, recording)
        try:
            await self._pool.request(
                worker, "record", rec_id, left_leg_sid, right_leg_sid, channels.value, fmt.value
            )
        except DriverError:
            self._recordings.pop(rec_id, None)
            raise
        return recording

    # --- inbound and operations --------------------------------------------------------------

    def set_incoming_handler(self, handler: IncomingHandler | None) -> None:
        """Register the callback for inbound INVITEs (runs on the event loop; must not block).
        Without a handler inbound calls are rejected with 480."""
        self._incoming = handler

    def set_contact_resolver(self, resolver: ContactResolver | None) -> None:
        """Ask `resolver(account_sid, contact_uri)` before dialling a `sip:` contact: None dials
        it as written, a URI dials that instead (a registered phone's binding), and
        SipTargetError fails the leg (a phone that registers and has no binding)."""
        self._resolver = resolver

    def bind_call(self, leg_sid: str, call_sid: str) -> None:
        """Tie an incoming leg to the engine's call so legs dialled with that `call_sid` are
        placed on the same worker (required for `bridge`)."""
        ref = self._ref(leg_sid)
        if ref.key == call_sid:
            return
        holder = self._calls.get(call_sid)
        if holder is not None and holder is not ref.worker:
            raise DriverError(f"call {call_sid} already lives on another SIP worker")
        worker = ref.worker
        moved = worker.groups.pop(ref.key, set())
        if self._calls.get(ref.key) is worker:
            del self._calls[ref.key]
        moved.add(leg_sid)
        worker.groups.setdefault(call_sid, set()).update(moved)
        self._calls[call_sid] = worker
        for sid in moved:
            other = self._legs.get(sid)
            if other is not None:
                other.key = call_sid

    async def answer(self, leg_sid: str) -> None:
        """Answer an incoming leg (200 OK). `answered` is reported when the caller ACKs."""
        ref = self._ref(leg_sid)
        if not ref.incoming:
            raise DriverError(f"leg {leg_sid} is not an incoming call")
        await self._pool.request(ref.worker, "answer", leg_sid)

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for operations and tests)."""
        return [w.process.pid for w in self._pool.workers if w.alive and w.process is not None]

    def worker_ports(self) -> list[int]:
        """The SIP port of each worker, by index; inbound calls may go to any of them."""
        return [w.config.sip_port for w in self._pool.workers]

    def worker_of(self, leg_sid: str) -> int:
        """Index of the worker holding a leg."""
        return self._ref(leg_sid).worker.index
