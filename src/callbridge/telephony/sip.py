"""The real SIP driver: a supervised pool of pjsua2 media worker processes behind the
`TelephonyDriver` protocol, dispatching each call's legs to one worker.

Each worker (`sip_worker.py`) owns one Endpoint on `sip_port + index` and its own slice of
the RTP range; its call capacity is what the pjsua build reports (4 with the PyPI wheel).
All legs of a call live on one worker so they can be bridged: a leg is placed on the worker
already holding a leg of the same `call_sid`. A worker that dies has its legs reported as
`failed` (not yet answered) or `hangup` (answered) and is replaced.

Inbound calls: register `set_incoming_handler(cb)`; an INVITE to any worker rings (180) and
`cb(IncomingCall)` runs on the event loop. The engine then calls `bind_call(leg_sid, call_sid)`
(before dialling agents for it, so they land on the caller's worker), and `answer(leg_sid)`
(200 OK; an `answered` event follows on ACK) or `hangup(leg_sid)` (480 while unanswered).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from callbridge.clock import Clock, SystemClock
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
    UnknownLeg,
)
from callbridge.telephony.sip_uri import (
    SipTargetError,
    Trunk,
    caller_id_uri,
    contact_from_header,
    dial_target,
)

if TYPE_CHECKING:
    from callbridge.telephony.sip_worker import WorkerConfig

log = logging.getLogger("callbridge.sip")

_TERMINAL = frozenset(
    {
        LegEventKind.BUSY,
        LegEventKind.NO_ANSWER,
        LegEventKind.REJECTED,
        LegEventKind.FAILED,
        LegEventKind.HANGUP,
    }
)
_RESERVED_PER_CALL = 2
"""Slots a call keeps on its worker from its first leg, so its second leg always fits."""


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
    worker: _WorkerHandle
    key: str
    incoming: bool
    answered: bool = False
    terminal: bool = False
    hung_up_by_engine: bool = False


@dataclass(eq=False)
class _WorkerHandle:
    index: int
    config: WorkerConfig
    generation: int = 0
    process: subprocess.Popen[bytes] | None = None
    conn: Connection | None = None
    max_calls: int = 0
    alive: bool = False
    started_at: float = 0.0
    restart_delay_s: float = 0.5
    ready: asyncio.Future[int] | None = None
    legs: set[str] = field(default_factory=set)
    groups: dict[str, set[str]] = field(default_factory=dict)
    pending: dict[int, asyncio.Future[str | None]] = field(default_factory=dict)
    sender: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="sip-send")
    )

    def free_slots(self) -> int:
        if not self.alive:
            return 0
        reserved = sum(max(_RESERVED_PER_CALL, len(legs)) for legs in self.groups.values())
        return self.max_calls - max(reserved, len(self.legs))

    def send(self, message: tuple[Any, ...]) -> None:
        conn = self.conn
        if conn is None:
            raise OSError("worker pipe closed")
        conn.send(message)


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
    ) -> None:
        self._settings = settings
        self._clock: Clock = clock or SystemClock()
        self._worker_count = workers or settings.sip_workers
        self._start_timeout_s = start_timeout_s
        self._request_timeout_s = request_timeout_s
        self._pj_log_level = pj_log_level
        self._trunk = Trunk(
            host=settings.sip_trunk_host,
            port=settings.sip_trunk_port,
            transport=settings.sip_trunk_transport,
            number_format=settings.sip_trunk_number_format,
        )
        self._caller_domain = settings.sip_trunk_host or settings.sip_bind_host
        self._workers: list[_WorkerHandle] = []
        self._legs: dict[str, _LegRef] = {}
        self._calls: dict[str, _WorkerHandle] = {}
        self._taps: dict[int, AudioConsumer] = {}
        self._ids = itertools.count(1)
        self._sink: EventSink | None = None
        self._incoming: IncomingHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._restarts: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        if self._running:
            raise DriverError("SIP driver already started")
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._workers = [
            _WorkerHandle(index, self._worker_config(index)) for index in range(self._worker_count)
        ]
        self._running = True
        results = await asyncio.gather(
            *(self._spawn(worker) for worker in self._workers), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise DriverError(f"SIP workers failed to start: {failures[0]}")
        log.info(
            "sip driver started workers=%d capacity=%d base_port=%d",
            len(self._workers),
            self.capacity(),
            self._settings.sip_port,
        )

    async def stop(self) -> None:
        self._running = False
        for task in list(self._restarts):
            task.cancel()
        for worker in self._workers:
            if worker.alive:
                self._post(worker, "shutdown")
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(None, self._reap, worker) for worker in self._workers)
        )
        for worker in self._workers:
            worker.alive = False
            self._fail_pending(worker, "SIP driver stopped")
            worker.sender.shutdown(wait=False)
        self._legs.clear()
        self._calls.clear()
        self._taps.clear()

    @staticmethod
    def _popen(child_fd: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "callbridge.telephony.sip_worker", str(child_fd)],
            pass_fds=(child_fd,),
            stdin=subprocess.DEVNULL,
        )

    def _reap(self, worker: _WorkerHandle) -> None:
        process = worker.process
        if process is None:
            return
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            log.warning("sip worker %d did not stop; killing pid=%s", worker.index, process.pid)
            process.kill()
            process.wait(timeout=2.0)
        if worker.conn is not None:
            worker.conn.close()
            worker.conn = None

    def _worker_config(self, index: int) -> WorkerConfig:
        from callbridge.telephony.sip_worker import WorkerConfig

        s = self._settings
        span = (s.sip_rtp_port_max - s.sip_rtp_port_min + 1) // self._worker_count
        span -= span % 2
        if span < 8:
            raise DriverError("RTP port range too small for the number of SIP workers")
        password = s.sip_trunk_password.get_secret_value() if s.sip_trunk_password else None
        return WorkerConfig(
            index=index,
            bind_host=s.sip_bind_host,
            sip_port=s.sip_port + index,
            rtp_port_min=s.sip_rtp_port_min + index * span,
            rtp_port_count=span,
            tcp=s.sip_trunk_transport == "tcp",
            outbound_proxy=s.sip_outbound_proxy,
            username=s.sip_trunk_username,
            password=password,
            log_level=s.log_level.upper(),
            pj_log_level=self._pj_log_level,
        )

    async def _spawn(self, worker: _WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        parent_sock, child_sock = socket.socketpair()
        try:
            process = await loop.run_in_executor(None, self._popen, child_sock.fileno())
        finally:
            child_sock.close()
        parent_conn = Connection(parent_sock.detach())
        try:
            await loop.run_in_executor(worker.sender, parent_conn.send, worker.config)
        except OSError as exc:
            process.kill()
            raise DriverError(f"SIP worker {worker.index} did not take its config") from exc
        worker.generation += 1
        worker.process = process
        worker.conn = parent_conn
        worker.started_at = time.monotonic()
        worker.ready = loop.create_future()
        threading.Thread(
            target=self._read_loop,
            args=(loop, worker, parent_conn, worker.generation, process),
            name=f"sip-read-{worker.index}",
            daemon=True,
        ).start()
        try:
            worker.max_calls = await asyncio.wait_for(worker.ready, self._start_timeout_s)
        except TimeoutError as exc:
            raise DriverError(f"SIP worker {worker.index} did not become ready") from exc
        worker.alive = True
        log.info(
            "sip worker %d up pid=%s port=%d max_calls=%d",
            worker.index,
            process.pid,
            worker.config.sip_port,
            worker.max_calls,
        )

    def _read_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        worker: _WorkerHandle,
        conn: Connection,
        generation: int,
        process: subprocess.Popen[bytes],
    ) -> None:
        while True:
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                break
            try:
                loop.call_soon_threadsafe(self._on_batch, worker, generation, batch)
            except RuntimeError:
                return
        # The pipe closes as the process ends: reap it so the log shows how it died
        # (e.g. -11 for a segfault, -6 for a pjlib assertion).
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_exit, worker, generation)

    # --- worker messages (event loop) --------------------------------------------------------

    def _on_batch(self, worker: _WorkerHandle, generation: int, batch: list[Any]) -> None:
        if generation != worker.generation:
            return
        for message in batch:
            try:
                self._on_message(worker, message)
            except Exception:
                log.exception("sip worker %d message %s failed", worker.index, message[0])

    def _on_message(self, worker: _WorkerHandle, message: tuple[Any, ...]) -> None:
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
        elif kind == "reply":
            _, req_id, error = message
            future = worker.pending.pop(req_id, None)
            if future is not None and not future.done():
                future.set_result(error)
        elif kind == "incoming":
            self._on_incoming(worker, message[1], message[2], message[3])
        elif kind == "ready":
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(int(message[1]))
        elif kind == "fatal":
            log.error("sip worker %d failed to start: %s", worker.index, message[1])
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_exception(DriverError(str(message[1])))

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

    def _on_incoming(self, worker: _WorkerHandle, leg_sid: str, sip_from: str, sip_to: str) -> None:
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
        if handler is None or not self._running:
            ref.hung_up_by_engine = True
            self._post(worker, "hangup", leg_sid)
            return
        try:
            handler(call)
        except Exception:
            log.exception("incoming handler failed leg=%s", leg_sid)
            ref.hung_up_by_engine = True
            self._post(worker, "hangup", leg_sid)

    def _on_exit(self, worker: _WorkerHandle, generation: int) -> None:
        if generation != worker.generation:
            return
        was_alive = worker.alive
        worker.alive = False
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_exception(DriverError(f"SIP worker {worker.index} exited"))
        self._fail_pending(worker, f"SIP worker {worker.index} exited")
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
        if not (self._running and was_alive):
            return
        process = worker.process
        log.error(
            "sip worker %d died pid=%s exitcode=%s; replacing",
            worker.index,
            process.pid if process else None,
            process.poll() if process else None,
        )
        if time.monotonic() - worker.started_at < 5.0:
            worker.restart_delay_s = min(worker.restart_delay_s * 2, 10.0)
        else:
            worker.restart_delay_s = 0.5
        task = asyncio.get_running_loop().create_task(self._respawn(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _respawn(self, worker: _WorkerHandle) -> None:
        await asyncio.sleep(worker.restart_delay_s)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._reap, worker)
        while self._running:
            try:
                await self._spawn(worker)
                return
            except DriverError as exc:
                log.error("sip worker %d restart failed: %s", worker.index, exc)
                await loop.run_in_executor(None, self._reap, worker)
                worker.restart_delay_s = min(worker.restart_delay_s * 2, 10.0)
                await asyncio.sleep(worker.restart_delay_s)

    def _fail_pending(self, worker: _WorkerHandle, reason: str) -> None:
        for future in worker.pending.values():
            if not future.done():
                future.set_result(reason)
        worker.pending.clear()

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

    def _pick_worker(self, call_sid: str) -> _WorkerHandle:
        pinned = self._calls.get(call_sid)
        if pinned is not None:
            if not pinned.alive or len(pinned.legs) >= pinned.max_calls:
                raise CapacityExhausted(f"SIP worker {pinned.index} holding call is full")
            return pinned
        candidates = [w for w in self._workers if w.alive and w.free_slots() > 0]
        if not candidates:
            raise CapacityExhausted("all SIP workers are busy")
        return max(candidates, key=lambda w: (w.free_slots(), -w.index))

    def _ref(self, leg_sid: str) -> _LegRef:
        ref = self._legs.get(leg_sid)
        if ref is None:
            raise UnknownLeg(leg_sid)
        return ref

    async def _request(self, worker: _WorkerHandle, op: str, *args: Any) -> None:
        if not worker.alive:
            raise DriverError(f"SIP worker {worker.index} is not running")
        loop = asyncio.get_running_loop()
        req_id = next(self._ids)
        future: asyncio.Future[str | None] = loop.create_future()
        worker.pending[req_id] = future
        try:
            await loop.run_in_executor(worker.sender, worker.send, (req_id, op, args))
            error = await asyncio.wait_for(future, self._request_timeout_s)
        except (OSError, ValueError) as exc:
            raise DriverError(f"SIP worker {worker.index} unreachable: {exc}") from exc
        except TimeoutError as exc:
            raise DriverError(f"SIP worker {worker.index} did not answer {op}") from exc
        finally:
            worker.pending.pop(req_id, None)
        if error is not None:
            raise DriverError(error)

    def _post(self, worker: _WorkerHandle, op: str, *args: Any) -> None:
        """Send without waiting for the reply (used from sync `Handle.stop`)."""
        if not worker.alive:
            return

        def send() -> None:
            try:
                worker.send((0, op, args))
            except (OSError, ValueError) as exc:
                log.debug("sip worker %d post %s failed: %s", worker.index, op, exc)

        with contextlib.suppress(RuntimeError):
            worker.sender.submit(send)

    # --- TelephonyDriver ---------------------------------------------------------------------

    def capacity(self) -> int | None:
        return sum(max(0, w.free_slots()) for w in self._workers)

    async def dial(self, request: DialRequest) -> None:
        if not self._running:
            raise DriverError("SIP driver is not running")
        if request.leg_sid in self._legs:
            raise DriverError(f"leg {request.leg_sid} already exists")
        worker = self._pick_worker(request.call_sid)
        ref = _LegRef(request.leg_sid, worker, key=request.call_sid, incoming=False)
        try:
            target = dial_target(request.contact_uri, self._trunk)
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
            await self._request(
                worker, "dial", request.leg_sid, target, from_uri, request.ring_timeout_s
            )
        except DriverError as exc:
            if self._legs.get(request.leg_sid) is ref and not ref.hung_up_by_engine:
                self._drop_leg(request.leg_sid)
                self._fail_soon(request.leg_sid, str(exc))

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
            await self._request(ref.worker, "hangup", leg_sid)
        except DriverError as exc:
            log.warning("sip hangup leg=%s: %s", leg_sid, exc)

    async def bridge(self, leg_a: str, leg_b: str) -> None:
        a, b = self._ref(leg_a), self._ref(leg_b)
        if a.worker is not b.worker:
            raise DriverError("legs are on different SIP workers; dial with the same call_sid")
        await self._request(a.worker, "bridge", leg_a, leg_b)

    async def play(self, leg_sid: str, pcm: bytes, *, loop: bool = False) -> Handle:
        ref = self._ref(leg_sid)
        worker, play_id = ref.worker, next(self._ids)
        await self._request(worker, "play", play_id, leg_sid, bytes(pcm), loop)
        return _StopHandle(lambda: self._post(worker, "stop_play", play_id))

    async def tap(self, leg_sids: Sequence[str], consumer: AudioConsumer) -> Handle:
        by_worker: dict[int, tuple[_WorkerHandle, list[str]]] = {}
        for leg_sid in leg_sids:
            ref = self._ref(leg_sid)
            by_worker.setdefault(ref.worker.index, (ref.worker, []))[1].append(leg_sid)
        started: list[tuple[_WorkerHandle, int]] = []

        def stop() -> None:
            for worker, tap_id in started:
                self._taps.pop(tap_id, None)
                self._post(worker, "stop_tap", tap_id)

        try:
            for worker, sids in by_worker.values():
                tap_id = next(self._ids)
                self._taps[tap_id] = consumer
                started.append((worker, tap_id))
                await self._request(worker, "tap", tap_id, sids)
        except DriverError:
            stop()
            raise
        return _StopHandle(stop)

    # --- inbound and operations --------------------------------------------------------------

    def set_incoming_handler(self, handler: IncomingHandler | None) -> None:
        """Register the callback for inbound INVITEs (runs on the event loop; must not block).
        Without a handler inbound calls are rejected with 480."""
        self._incoming = handler

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
        await self._request(ref.worker, "answer", leg_sid)

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for operations and tests)."""
        return [w.process.pid for w in self._workers if w.alive and w.process is not None]

    def worker_ports(self) -> list[int]:
        """The SIP port of each worker, by index; inbound calls may go to any of them."""
        return [w.config.sip_port for w in self._workers]

    def worker_of(self, leg_sid: str) -> int:
        """Index of the worker holding a leg."""
        return self._ref(leg_sid).worker.index
