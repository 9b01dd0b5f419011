"""A SIP worker's calls: the pj-thread loop, pjsua2 call callbacks turned into leg events, and
the jobs the API process sends (dial, answer, hang up, bridge, and media via `WorkerMedia`).

Threading (see notes/pjsua2.md): only the thread running `Worker.run` calls pjlib; it polls
`libHandleEvents` with `threadCnt = 0` and drains the job queue between polls. Automatic
garbage collection is off and `gc.collect()` runs on this thread, so no pjsua2 object is ever
destroyed on a thread pjlib does not know.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import pjsua2 as pj

from callbridge.telephony.sip_endpoint import (
    account_config,
    create_endpoint,
    engine_info,
    read_max_calls,
)
from callbridge.telephony.sip_protocol import WorkerConfig
from callbridge.telephony.sip_uri import leg_outcome
from callbridge.telephony.sip_worker_media import Outbox, WorkerLeg, WorkerMedia

log = logging.getLogger("callbridge.sip.worker")

Job = tuple[int, str, tuple[Any, ...]]

_REJECT_INCOMING_CODE = 480
"""Status sent when the engine hangs up an inbound call it never answered."""
_MEDIA_WITH_PORT = frozenset(
    {pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_LOCAL_HOLD, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD}
)
"""Audio states in which the call has a conference port to connect (held calls keep theirs)."""

_WORKER: Worker | None = None


def _current() -> Worker:
    if _WORKER is None:
        raise RuntimeError("no worker in this process")
    return _WORKER


def _guarded(name: str, action: Callable[[], None]) -> None:
    """pjsua2 prints and swallows callback exceptions; log them properly instead."""
    try:
        action()
    except Exception:
        log.exception("callback %s failed", name)


def audio_only(prm: Any) -> Any:
    """One audio stream per call, nothing else: pjsua 2.16+ also offers a T.140 text stream by
    default, which would take two more RTP ports per call."""
    prm.opt.audioCount = 1
    prm.opt.videoCount = 0
    if hasattr(prm.opt, "textCount"):
        prm.opt.textCount = 0
    return prm


class SipCall(pj.Call):  # type: ignore[misc]
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


class SipAccount(pj.Account):  # type: ignore[misc]
    def onIncomingCall(self, prm: Any) -> None:
        call_id = int(prm.callId)
        _guarded("onIncomingCall", lambda: _current().on_incoming(self, call_id))


class Worker:
    """The engine of one worker process; construct and `run` it on the same thread."""

    def __init__(
        self, config: WorkerConfig, out: Outbox, jobs: queue.SimpleQueue[Job | None], files: int
    ) -> None:
        global _WORKER
        self.config = config
        self.out = out
        self.jobs = jobs
        self.legs: dict[str, WorkerLeg] = {}
        self.stopping = False
        self.media_dir = tempfile.mkdtemp(prefix=f"callbridge-sip-{config.index}-")
        _WORKER = self
        self.ep: Any = create_endpoint(config)
        self.media = WorkerMedia(self.legs, out, self.media_dir, config.recording_flush_s)
        self.engine = engine_info(self.ep, read_max_calls(config.requested_max_calls), files)
        self.account: Any = SipAccount()
        self.account.create(account_config(config), True)
        self._ops: dict[str, Callable[..., None]] = {
            "dial": self.op_dial,
            "hangup": self.op_hangup,
            "answer": self.op_answer,
            "shutdown": self.op_shutdown,
            "bridge": self.media.bridge,
            "play": self.media.play,
            "stop_play": self.media.stop_play,
            "tap": self.media.tap,
            "stop_tap": self.media.stop_tap,
            "record": self.media.record,
            "stop_record": self.media.stop_record,
        }
        log.info(
            "worker ready sip_port=%d rtp=%d+%d engine=%s",
            config.sip_port,
            config.rtp_port_min,
            config.rtp_port_count,
            self.engine.describe(),
        )
        out.put(("ready", self.engine))

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
                self._ops[op](*args)
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

    def on_call_state(self, call: SipCall) -> None:
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

    def on_media_state(self, call: SipCall) -> None:
        """Take the call's audio port, and on every later change (a re-INVITE: hold, resume, a
        new media address) connect it again: pjsua may rebuild the stream on a new conference
        slot, which silently drops the bridge, players, taps and recorders of the old one."""
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
            self.media.reconnect(leg)

    def on_incoming(self, account: Any, call_id: int) -> None:
        leg_sid = uuid.uuid4().hex
        call = SipCall(account, leg_sid, call_id)
        leg = WorkerLeg(leg_sid, incoming=True, call=call)
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

    def _forget(self, leg: WorkerLeg) -> None:
        """The call is over: release its media and drop every reference to the pjsua2 Call
        now, inside DISCONNECTED, before pjsua can reuse its slot."""
        self.media.leg_ended(leg)
        leg.call = None
        self.legs.pop(leg.leg_sid, None)
        self.out.put(("gone", leg.leg_sid))

    # --- jobs (called on the pj thread) --------------------------------------------------------

    def op_dial(self, leg_sid: str, target: str, from_uri: str | None, ring_s: float) -> None:
        if self.stopping:
            raise RuntimeError("worker is stopping")
        call = SipCall(self.account, leg_sid)
        leg = WorkerLeg(leg_sid, incoming=False, call=call)
        leg.ring_deadline = time.monotonic() + ring_s + self.config.ring_margin_s
        prm = audio_only(pj.CallOpParam(True))
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
            self.media.end_recordings(leg)
            self._hangup(leg)

    def _hangup(self, leg: WorkerLeg) -> None:
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
        leg = self.media.leg(leg_sid)
        if not leg.incoming:
            raise RuntimeError(f"leg {leg_sid} is not an incoming call")
        prm = audio_only(pj.CallOpParam(True))
        prm.statusCode = 200
        leg.ring_deadline = None
        leg.call.answer(prm)

    def op_shutdown(self) -> None:
        self.stopping = True

    # --- shutdown ----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Order from the notes: hang up, let pjsip finish, destroy ports and recorders, drop
        calls, collect, libDestroy — all on this thread."""
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
        self.media.close()
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
