"""A SIP media worker process: one pj thread owns a pjsua2 Endpoint on its own SIP port and RTP
range, runs the jobs the `SipDriver` sends over a pipe and reports leg events back.

Threading (see notes/pjsua2.md): the process's main thread is the only thread that calls
pjlib; it polls `libHandleEvents` with `threadCnt = 0` and drains the job queue between polls.
A reader thread turns pipe messages into jobs, a sender thread batches events onto the pipe.
Automatic garbage collection is off and `gc.collect()` runs on the pj thread, so no pjsua2
object is ever destroyed on a thread pjlib does not know. Media-port callbacks run on the
conference clock thread and only copy bytes into the outgoing queue.

Wire protocol. Parent → worker: `(req_id, op, args)`; every request gets a `("reply", req_id,
error_or_None)`. Worker → parent: lists of events, each one of
`("ready", max_calls)`, `("fatal", message)`, `("reply", req_id, error)`,
`("leg", leg_sid, kind, reason, digits)`, `("gone", leg_sid)` (the call slot is free),
`("incoming", leg_sid, from_uri, to_uri)`, `("audio", tap_id, leg_sid, frame)`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import pjsua2 as pj

from callbridge.telephony.sip_uri import leg_outcome

log = logging.getLogger("callbridge.sip.worker")

Event = tuple[Any, ...]

_REJECT_INCOMING_CODE = 480
_MEDIA_WITH_PORT = frozenset(
    {pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_LOCAL_HOLD, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD}
)
"""Audio states in which the call has a conference port to connect (held calls keep theirs)."""
"""Status sent when the engine hangs up an inbound call it never answered."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    index: int
    bind_host: str
    sip_port: int
    rtp_port_min: int
    rtp_port_count: int
    tcp: bool = False
    outbound_proxy: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    requested_max_calls: int = 1024
    """Asked of pjsua; the build silently lowers it and the worker reports the real figure."""
    poll_ms: int = 5
    ring_margin_s: float = 5.0
    """A leg still ringing this long after its ring timeout is ended here as no-answer."""
    incoming_ring_limit_s: float = 120.0
    pj_log_level: int = 1
    log_level: str = "INFO"


def main(argv: list[str] | None = None) -> None:
    """`python -m callbridge.telephony.sip_worker FD`: FD is this end of a socketpair whose
    first message is the WorkerConfig. A fresh interpreter, so nothing of the API process
    (its `__main__`, threads, event loop) is inherited."""
    args = sys.argv[1:] if argv is None else argv
    conn = Connection(int(args[0]))
    config = conn.recv()
    if not isinstance(config, WorkerConfig):
        raise SystemExit("sip worker: bad configuration message")
    worker_main(config, conn)


def worker_main(config: WorkerConfig, conn: Connection) -> None:
    """Run the worker until told to stop or the parent goes away; never returns."""
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s %(levelname)s sip-worker[{config.index}] %(message)s",
    )
    gc.disable()
    out: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
    jobs: queue.SimpleQueue[tuple[int, str, tuple[Any, ...]] | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_loop, args=(conn, out), daemon=True)
    sender.start()
    threading.Thread(target=_read_loop, args=(conn, jobs), daemon=True).start()
    code = 0
    try:
        worker = _Worker(config, out, jobs)
    except Exception as exc:
        log.exception("worker setup failed")
        out.put(("fatal", f"{type(exc).__name__}: {exc}"))
        code = 3
    else:
        try:
            worker.run()
        except Exception:
            log.exception("worker loop failed")
            code = 4
    out.put(None)
    sender.join(timeout=2.0)
    # Every pjsua2 object is gone by now; skip interpreter teardown (and its atexit hooks).
    os._exit(code)


def _read_loop(conn: Connection, jobs: queue.SimpleQueue[Any]) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            jobs.put((0, "shutdown", ()))
            return
        jobs.put(message)


def _send_loop(conn: Connection, out: queue.SimpleQueue[Event | None]) -> None:
    while True:
        item = out.get()
        if item is None:
            return
        batch = [item]
        while len(batch) < 512:
            try:
                nxt = out.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                _safe_send(conn, batch)
                return
            batch.append(nxt)
        if not _safe_send(conn, batch):
            return


def _safe_send(conn: Connection, batch: list[Event]) -> bool:
    try:
        conn.send(batch)
    except (OSError, ValueError):
        return False
    return True


def _vector_copier() -> Callable[[Any], bytes]:
    """A fast copy of a pjsua2 `ByteVector` (std::vector<unsigned char>): read its begin/end
    pointers with ctypes instead of iterating in Python (1.5 µs instead of ~150 µs). Verified
    against `bytes()` on a known vector; falls back to `bytes()` if the layout differs."""

    def fast(vector: Any) -> bytes:
        addr = int(vector.this)
        begin = ctypes.c_size_t.from_address(addr).value
        end = ctypes.c_size_t.from_address(addr + ctypes.sizeof(ctypes.c_size_t)).value
        size = end - begin
        if size <= 0 or size > 65536:
            return b""
        return ctypes.string_at(begin, size)

    probe = bytes(range(256)) + bytes(range(64))
    try:
        if fast(pj.ByteVector(probe)) == probe:
            return fast
    except Exception:
        log.warning("fast frame copy unavailable; using bytes()")
    return bytes


_copy_vector: Callable[[Any], bytes] = bytes


class _SipCall(pj.Call):  # type: ignore[misc]
    """A pjsua2 call whose callbacks forward to the worker. Holds no reference to session state."""

    def __init__(self, account: Any, leg_sid: str, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.leg_sid = leg_sid

    def onCallState(self, prm: Any) -> None:
        _guarded("onCallState", lambda: _current().on_call_state(self))

    def onCallMediaState(self, prm: Any) -> None:
        _guarded("onCallMediaState", lambda: _current().on_media_state(self))

    def onDtmfDigit(self, prm: Any) -> None:
        digit = str(prm.digit)
        _guarded("onDtmfDigit", lambda: _current().emit_leg(self.leg_sid, "dtmf", digits=digit))


class _Account(pj.Account):  # type: ignore[misc]
    def onIncomingCall(self, prm: Any) -> None:
        call_id = int(prm.callId)
        _guarded("onIncomingCall", lambda: _current().on_incoming(self, call_id))


class _TapPort(pj.AudioMediaPort):  # type: ignore[misc]
    """Receives one party's frames on the conference clock thread; copies and hands off only."""

    def __init__(self, out: queue.SimpleQueue[Event | None], tap_id: int, leg_sid: str) -> None:
        super().__init__()
        self._out = out
        self._tap_id = tap_id
        self._leg_sid = leg_sid

    def onFrameReceived(self, frame: Any) -> None:
        try:
            if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
                data = _copy_vector(frame.buf)
                if data:
                    self._out.put(("audio", self._tap_id, self._leg_sid, data))
        except Exception:
            log.exception("tap frame failed")


@dataclass(eq=False)
class _Leg:
    leg_sid: str
    incoming: bool
    call: _SipCall | None
    ring_deadline: float | None = None
    rang: bool = False
    answered: bool = False
    ended_by_us: bool = False
    outcome_sent: bool = False
    media: Any = None
    peer: str | None = None
    """The leg this one is bridged to."""
    plays: set[int] = field(default_factory=set)
    taps: set[int] = field(default_factory=set)


@dataclass(eq=False)
class _Play:
    leg_sid: str
    player: Any
    path: str


@dataclass(eq=False)
class _Tap:
    ports: dict[str, Any]


_WORKER: _Worker | None = None


def _current() -> _Worker:
    if _WORKER is None:
        raise RuntimeError("no worker in this process")
    return _WORKER


def _guarded(name: str, action: Callable[[], None]) -> None:
    """pjsua2 prints and swallows callback exceptions; log them properly instead."""
    try:
        action()
    except Exception:
        log.exception("callback %s failed", name)


class _Worker:
    def __init__(
        self,
        config: WorkerConfig,
        out: queue.SimpleQueue[Event | None],
        jobs: queue.SimpleQueue[tuple[int, str, tuple[Any, ...]] | None],
    ) -> None:
        global _WORKER, _copy_vector
        self.config = config
        self.out = out
        self.jobs = jobs
        self.legs: dict[str, _Leg] = {}
        self.plays: dict[int, _Play] = {}
        self.taps: dict[int, _Tap] = {}
        self.stopping = False
        self.media_dir = tempfile.mkdtemp(prefix=f"callbridge-sip-{config.index}-")
        _WORKER = self
        _copy_vector = _vector_copier()
        self.ep: Any = pj.Endpoint()
        self.ep.libCreate()
        self._init_endpoint()
        self.max_calls = self._read_max_calls()
        self.account: Any = self._create_account()
        log.info(
            "worker ready sip_port=%d rtp=%d+%d max_calls=%d",
            config.sip_port,
            config.rtp_port_min,
            config.rtp_port_count,
            self.max_calls,
        )
        out.put(("ready", self.max_calls))

    # --- setup -----------------------------------------------------------------------------

    def _init_endpoint(self) -> None:
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.maxCalls = self.config.requested_max_calls
        cfg.uaConfig.userAgent = "callbridge"
        cfg.logConfig.level = self.config.pj_log_level
        cfg.logConfig.consoleLevel = self.config.pj_log_level
        cfg.logConfig.msgLogging = False
        cfg.medConfig.clockRate = 8000
        cfg.medConfig.sndClockRate = 8000
        cfg.medConfig.channelCount = 1
        cfg.medConfig.noVad = True
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.audioFramePtime = 20
        self.ep.libInit(cfg)
        tcfg = pj.TransportConfig()
        tcfg.port = self.config.sip_port
        tcfg.boundAddress = self.config.bind_host
        self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        if self.config.tcp:
            self.ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, tcfg)
        self.ep.audDevManager().setNullDev()
        for codec in self.ep.codecEnum2():
            keep = codec.codecId.upper().startswith(("PCMU/8000", "PCMA/8000"))
            self.ep.codecSetPriority(codec.codecId, 255 if keep else 0)
        self.ep.libStart()

    def _read_max_calls(self) -> int:
        """The engine's real call limit (`pjsua_call_get_max_count`), not what was requested."""
        try:
            lib = ctypes.CDLL(pj._pjsua2.__file__)
            lib.pjsua_call_get_max_count.restype = ctypes.c_uint
            return int(lib.pjsua_call_get_max_count())
        except (OSError, AttributeError):
            log.warning("cannot read pjsua max calls; assuming the requested figure")
            return self.config.requested_max_calls

    def _create_account(self) -> Any:
        cfg = pj.AccountConfig()
        cfg.idUri = f"sip:callbridge@{self.config.bind_host}:{self.config.sip_port}"
        cfg.mediaConfig.transportConfig.port = self.config.rtp_port_min
        cfg.mediaConfig.transportConfig.portRange = self.config.rtp_port_count
        cfg.mediaConfig.transportConfig.boundAddress = self.config.bind_host
        cfg.natConfig.sdpNatRewriteUse = 0
        cfg.natConfig.contactRewriteUse = 0
        cfg.natConfig.viaRewriteUse = 0
        if self.config.outbound_proxy:
            cfg.sipConfig.proxies.append(self.config.outbound_proxy)
        if self.config.username:
            password = self.config.password or ""
            cred = pj.AuthCredInfo("digest", "*", self.config.username, 0, password)
            cfg.sipConfig.authCreds.append(cred)
        account = _Account()
        account.create(cfg, True)
        return account

    # --- main loop ---------------------------------------------------------------------------

    def run(self) -> None:
        last_sweep = last_gc = time.monotonic()
        while not self.stopping:
            try:
                self.ep.libHandleEvents(self.config.poll_ms)
            except Exception:
                log.exception("libHandleEvents failed")
            self._drain_jobs()
            now = time.monotonic()
            if now - last_sweep >= 0.1:
                last_sweep = now
                self._expire_ringing(now)
            if now - last_gc >= 2.0:
                last_gc = now
                gc.collect()
        self._shutdown()

    def _drain_jobs(self) -> None:
        for _ in range(256):
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            req_id, op, args = job
            error: str | None = None
            try:
                handler = getattr(self, f"op_{op}")
                handler(*args)
            except pj.Error as exc:
                error = f"{op}: {exc.info()}"
            except Exception as exc:
                log.exception("job %s failed", op)
                error = f"{op}: {type(exc).__name__}: {exc}"
            if req_id:
                self.out.put(("reply", req_id, error))

    def _expire_ringing(self, now: float) -> None:
        for leg in list(self.legs.values()):
            if leg.ring_deadline is None or leg.answered or now < leg.ring_deadline:
                continue
            leg.ring_deadline = None
            kind = "hangup" if leg.incoming else "no-answer"
            self.emit_leg(leg.leg_sid, kind, reason="ring timeout (worker safety)")
            leg.outcome_sent = True
            self._hangup(leg)

    # --- events ------------------------------------------------------------------------------

    def emit_leg(
        self, leg_sid: str, kind: str, *, reason: str | None = None, digits: str | None = None
    ) -> None:
        leg = self.legs.get(leg_sid)
        if leg is None or leg.ended_by_us or leg.outcome_sent:
            return
        self.out.put(("leg", leg_sid, kind, reason, digits))

    def on_call_state(self, call: _SipCall) -> None:
        leg = self.legs.get(call.leg_sid)
        if leg is None or leg.call is not call:
            return
        info = call.getInfo()
        state = info.state
        if state == pj.PJSIP_INV_STATE_EARLY and not leg.incoming and not leg.rang:
            leg.rang = True
            self.emit_leg(leg.leg_sid, "ringing")
        elif state == pj.PJSIP_INV_STATE_CONFIRMED and not leg.answered:
            leg.answered = True
            leg.ring_deadline = None
            self.emit_leg(leg.leg_sid, "answered")
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            code = int(info.lastStatusCode)
            reason = f"{code} {info.lastReason}"
            if leg.answered or leg.incoming:
                self.emit_leg(leg.leg_sid, "hangup", reason=reason)
            else:
                self.emit_leg(leg.leg_sid, leg_outcome(code).value, reason=reason)
            self._forget(leg)

    def on_media_state(self, call: _SipCall) -> None:
        """Take the call's audio port, and on every later change (a re-INVITE: hold, resume, a
        new media address) connect it again: pjsua may rebuild the stream on a new conference
        slot, which silently drops the bridge, players and taps attached to the old one."""
        leg = self.legs.get(call.leg_sid)
        if leg is None or leg.call is not call:
            return
        info = call.getInfo()
        media: Any = None
        for item in info.media:
            if item.type == pj.PJMEDIA_TYPE_AUDIO and item.status in _MEDIA_WITH_PORT:
                media = call.getAudioMedia(item.index)
                break
        leg.media = media
        if media is not None:
            self._reconnect(leg)

    def _reconnect(self, leg: _Leg) -> None:
        """(Re)make every connection of a leg's audio port; connecting twice is harmless."""
        media = leg.media
        peer = self.legs.get(leg.peer) if leg.peer else None
        links: list[tuple[Any, Any]] = []
        if peer is not None and peer.media is not None:
            links += [(media, peer.media), (peer.media, media)]
        links += [(self.plays[p].player, media) for p in leg.plays if p in self.plays]
        for tap_id in leg.taps:
            tap = self.taps.get(tap_id)
            port = tap.ports.get(leg.leg_sid) if tap is not None else None
            if port is not None:
                links.append((media, port))
        for source, sink in links:
            try:
                source.startTransmit(sink)
            except pj.Error as exc:
                log.warning("reconnect leg=%s failed: %s", leg.leg_sid, exc.info())

    def on_incoming(self, account: Any, call_id: int) -> None:
        leg_sid = uuid.uuid4().hex
        call = _SipCall(account, leg_sid, call_id)
        leg = _Leg(leg_sid, incoming=True, call=call)
        self.legs[leg_sid] = leg
        info = call.getInfo()
        prm = pj.CallOpParam()
        if self.stopping:
            leg.ended_by_us = True
            prm.statusCode = 503
            call.answer(prm)
            return
        leg.ring_deadline = time.monotonic() + self.config.incoming_ring_limit_s
        prm.statusCode = 180
        call.answer(prm)
        self.out.put(("incoming", leg_sid, str(info.remoteUri), str(info.localUri)))

    def _forget(self, leg: _Leg) -> None:
        """The call is over: release its media and drop every reference to the pjsua2 Call
        now, inside DISCONNECTED, before pjsua can reuse its slot."""
        for play_id in list(leg.plays):
            self._destroy_play(play_id)
        for tap_id in list(leg.taps):
            tap = self.taps.get(tap_id)
            port = tap.ports.pop(leg.leg_sid, None) if tap else None
            if port is not None:
                _destroy(port)
        leg.media = None
        leg.call = None
        self.legs.pop(leg.leg_sid, None)
        self.out.put(("gone", leg.leg_sid))

    # --- jobs (called on the pj thread) --------------------------------------------------------

    def op_dial(self, leg_sid: str, target: str, from_uri: str | None, ring_s: float) -> None:
        if self.stopping:
            raise RuntimeError("worker is stopping")
        call = _SipCall(self.account, leg_sid)
        leg = _Leg(leg_sid, incoming=False, call=call)
        leg.ring_deadline = time.monotonic() + ring_s + self.config.ring_margin_s
        prm = pj.CallOpParam(True)
        prm.opt.audioCount = 1
        prm.opt.videoCount = 0
        if from_uri:
            prm.txOption.localUri = from_uri
        self.legs[leg_sid] = leg
        try:
            call.makeCall(target, prm)
        except Exception:
            leg.call = None
            self.legs.pop(leg_sid, None)
            raise

    def op_hangup(self, leg_sid: str) -> None:
        leg = self.legs.get(leg_sid)
        if leg is not None:
            leg.ended_by_us = True
            self._hangup(leg)

    def _hangup(self, leg: _Leg) -> None:
        if leg.call is None:
            return
        prm = pj.CallOpParam()
        if leg.incoming and not leg.answered:
            prm.statusCode = _REJECT_INCOMING_CODE
        try:
            leg.call.hangup(prm)
        except pj.Error as exc:
            # Already disconnecting (e.g. BYE crossed ours): DISCONNECTED still arrives.
            log.debug("hangup leg=%s: %s", leg.leg_sid, exc.info())

    def op_answer(self, leg_sid: str) -> None:
        leg = self._leg(leg_sid)
        if not leg.incoming or leg.call is None:
            raise RuntimeError(f"leg {leg_sid} is not an incoming call")
        prm = pj.CallOpParam()
        prm.statusCode = 200
        leg.ring_deadline = None
        leg.call.answer(prm)

    def op_bridge(self, leg_a: str, leg_b: str) -> None:
        a, b = self._leg(leg_a), self._leg(leg_b)
        media_a, media_b = self._media(a), self._media(b)
        for play_id in list(a.plays | b.plays):
            self._destroy_play(play_id)
        media_a.startTransmit(media_b)
        media_b.startTransmit(media_a)
        a.peer, b.peer = b.leg_sid, a.leg_sid

    def op_play(self, play_id: int, leg_sid: str, pcm: bytes, loop: bool) -> None:
        leg = self._leg(leg_sid)
        media = self._media(leg)
        path = os.path.join(self.media_dir, f"play-{play_id}.wav")
        with wave.open(path, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(8000)
            wav.writeframes(pcm)
        player = pj.AudioMediaPlayer()
        try:
            player.createPlayer(path, 0 if loop else pj.PJMEDIA_FILE_NO_LOOP)
            player.startTransmit(media)
        except Exception:
            _destroy(player)
            os.unlink(path)
            raise
        self.plays[play_id] = _Play(leg_sid, player, path)
        leg.plays.add(play_id)

    def op_stop_play(self, play_id: int) -> None:
        self._destroy_play(play_id)

    def _destroy_play(self, play_id: int) -> None:
        play = self.plays.pop(play_id, None)
        if play is None:
            return
        leg = self.legs.get(play.leg_sid)
        if leg is not None:
            leg.plays.discard(play_id)
        _destroy(play.player)
        play.player = None
        with contextlib.suppress(OSError):
            os.unlink(play.path)

    def op_tap(self, tap_id: int, leg_sids: list[str]) -> None:
        legs = [self._leg(sid) for sid in leg_sids]
        medias = [self._media(leg) for leg in legs]
        tap = _Tap(ports={})
        self.taps[tap_id] = tap
        fmt = pj.MediaFormatAudio()
        fmt.init(pj.PJMEDIA_FORMAT_PCM, 8000, 1, 20000, 16)
        for leg, media in zip(legs, medias, strict=True):
            port = _TapPort(self.out, tap_id, leg.leg_sid)
            port.createPort(f"tap{tap_id}-{leg.leg_sid[:8]}", fmt)
            media.startTransmit(port)
            tap.ports[leg.leg_sid] = port
            leg.taps.add(tap_id)

    def op_stop_tap(self, tap_id: int) -> None:
        tap = self.taps.pop(tap_id, None)
        if tap is None:
            return
        for leg_sid, port in tap.ports.items():
            leg = self.legs.get(leg_sid)
            if leg is not None:
                leg.taps.discard(tap_id)
            _destroy(port)
        tap.ports.clear()

    def op_shutdown(self) -> None:
        self.stopping = True

    def _leg(self, leg_sid: str) -> _Leg:
        leg = self.legs.get(leg_sid)
        if leg is None or leg.call is None:
            raise KeyError(f"unknown leg {leg_sid}")
        return leg

    def _media(self, leg: _Leg) -> Any:
        if leg.media is None:
            raise RuntimeError(f"leg {leg.leg_sid} has no active audio")
        return leg.media

    # --- shutdown ----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Order from the notes: hang up, let pjsip finish, destroy ports, drop calls, collect,
        libDestroy — all on this thread."""
        try:
            self.ep.hangupAllCalls()
        except pj.Error as exc:
            log.warning("hangupAllCalls: %s", exc.info())
        deadline = time.monotonic() + 1.5
        while self.legs and time.monotonic() < deadline:
            self.ep.libHandleEvents(10)
        # With every call ended, skip pjsua's own network wind-down: it sleeps a full second
        # waiting for transactions (and it is that second per worker on every stop/restart).
        destroy_flags = 0 if self.legs else pj.PJSUA_DESTROY_NO_NETWORK
        for play_id in list(self.plays):
            self._destroy_play(play_id)
        for tap_id in list(self.taps):
            self.op_stop_tap(tap_id)
        for leg in self.legs.values():
            leg.media = None
            leg.call = None
        self.legs.clear()
        with contextlib.suppress(pj.Error):
            self.account.shutdown()
        self.account = None
        gc.collect()
        self.ep.libDestroy(destroy_flags)
        self.ep = None
        gc.collect()
        shutil.rmtree(self.media_dir, ignore_errors=True)
        log.info("worker stopped")


def _destroy(obj: Any) -> None:
    """Destroy a player/port explicitly on the pj thread, as the notes require."""
    if obj is None:
        return
    try:
        type(obj).__swig_destroy__(obj)
    except Exception:
        log.exception("destroying %s failed", type(obj).__name__)


if __name__ == "__main__":
    # Run the imported module, not this `__main__` copy, so pickled types and globals match.
    from callbridge.telephony.sip_worker import main as _main

    _main()
