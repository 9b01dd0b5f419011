"""What the API process and a SIP media worker agree on: the worker's configuration, the engine
it reports, and the messages on the pipe between them. Imports nothing of pjsua2.

Parent → worker: `(req_id, op, args)`; every request gets a `("reply", req_id, error_or_None)`
(req_id 0: no reply wanted). Worker → parent: lists of events, each one of
`("ready", EngineInfo)`, `("fatal", message)`, `("reply", req_id, error)`,
`("leg", leg_sid, kind, reason, digits)`, `("gone", leg_sid)` (the call slot is free),
`("incoming", leg_sid, from_uri, to_uri)`, `("audio", tap_id, leg_sid, frame)`,
`("rec_data", rec_id, mp3_bytes, frames)` (MP3 encoded so far, `frames` 20 ms frames in
total) and `("rec_done", rec_id, frames, encode_speed_x)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_STUN_PORT = 3478


ENGINE_MAX_CALLS = 1024
"""Calls a worker asks of pjsua when nothing lowers it; the engine's build caps it."""


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
    public_address: str | None = None
    """Address written into Contact/Via and SDP instead of `bind_host` (1:1 NAT)."""
    stun_servers: tuple[str, ...] = ()
    """`host[:port]` of STUN servers that tell the worker its public address and ports."""
    requested_max_calls: int = ENGINE_MAX_CALLS
    """Asked of pjsua; the build silently lowers it and the worker reports the real figure."""
    poll_ms: int = 5
    ring_margin_s: float = 5.0
    """A leg still ringing this long after its ring timeout is ended here as no-answer."""
    incoming_ring_limit_s: float = 120.0
    recording_flush_s: float = 1.0
    """How often recordings in progress are encoded and their MP3 sent to the API process."""
    pj_log_level: int = 1
    log_level: str = "INFO"


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What a worker found when it started its pjsua2 engine."""

    kind: str
    """`source` (built by scripts/build_pjsua2.py) or `wheel` (the PyPI `pjsua2-python`)."""
    version: str
    max_calls: int
    """Calls this worker may hold: the engine's limit, lowered by the request and RTP range."""
    build_key: str | None = None
    open_files: int = 0
    """The worker's open-files limit after raising it (RTP and RTCP take a socket each)."""

    def describe(self) -> str:
        built = f" {self.build_key}" if self.build_key else ""
        return f"pjsua2 {self.version} ({self.kind}{built}), {self.max_calls} calls per worker"


def open_files_needed(max_calls: int) -> int:
    """RTP + RTCP per call, SIP transports, recordings and pipes, with headroom."""
    return 4 * max_calls + 256
