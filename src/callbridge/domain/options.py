"""What a call was asked to do: the validated, immutable options of a click-to-call request."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class RecordingChannels(StrEnum):
    SINGLE = "single"
    DUAL = "dual"


class RecordingFormat(StrEnum):
    MP3 = "mp3"
    MP3_HQ = "mp3-hq"


class CallbackEvent(StrEnum):
    ANSWERED = "answered"
    TERMINAL = "terminal"


class CallbackMethod(StrEnum):
    POST = "POST"
    GET = "GET"


class CallbackContentType(StrEnum):
    JSON = "application/json"
    MULTIPART = "multipart/form-data"


class V1Callbacks(StrEnum):
    """How a call made through Exotel's v1 API reports to its StatusCallback."""

    BASIC = "basic"
    """No StatusCallbackEvents: on completion, only CallSid, Status, RecordingUrl, DateUpdated."""
    EVENTS = "events"
    """The subscribed events, each with v1's full field set and EventType."""


class PlaybackTo(StrEnum):
    BOTH = "both"
    CALLEE = "callee"
    CALLER = "caller"


class StreamBegin(StrEnum):
    FROM_LEG_CONNECT = "from_leg_connect"
    TO_LEG_CONNECT = "to_leg_connect"


@dataclass(frozen=True, slots=True)
class RecordingOptions:
    record: bool = False
    channels: RecordingChannels = RecordingChannels.SINGLE
    format: RecordingFormat = RecordingFormat.MP3


@dataclass(frozen=True, slots=True)
class StatusCallback:
    event: CallbackEvent
    url: str
    method: CallbackMethod = CallbackMethod.POST
    content_type: CallbackContentType = CallbackContentType.JSON


@dataclass(frozen=True, slots=True)
class Playback:
    url: str
    to: PlaybackTo = PlaybackTo.BOTH
    event: str = "start"


@dataclass(frozen=True, slots=True)
class StreamingOptions:
    url: str
    begin: StreamBegin = StreamBegin.FROM_LEG_CONNECT


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Everything about a call beyond its parties; stored with the call as JSON."""

    attempt_timeout_s: int = 30
    max_time_limit_s: int = 14400
    recording: RecordingOptions = field(default_factory=RecordingOptions)
    wait_audio_url: str | None = None
    playback: tuple[Playback, ...] = ()
    streaming: StreamingOptions | None = None
    status_callbacks: tuple[StatusCallback, ...] = ()
    state_management: bool = False
    v2_agent: tuple[str | None, str | None] | None = None
    """Set for calls made through the v2 API: (user_id, user_name) of the agent. Their status
    callbacks then use the v2 names (`call_sid`, `call_status`, `assigned_agent_details`…)."""
    v1: V1Callbacks | None = None
    """Set for calls made through the v1 API: their status callbacks are v1's flat fields
    (`CallSid`, `Status`, `Legs`…) instead of the v3 document."""

    def to_json(self) -> dict[str, Any]:
        """The stored form. A stream URL's credentials are left out: only the running call
        needs them, and nothing read back from the database connects to the bot."""
        return {
            "attempt_timeout_s": self.attempt_timeout_s,
            "max_time_limit_s": self.max_time_limit_s,
            "recording": {
                "record": self.recording.record,
                "channels": self.recording.channels.value,
                "format": self.recording.format.value,
            },
            "wait_audio_url": self.wait_audio_url,
            "playback": [{"url": p.url, "to": p.to.value, "event": p.event} for p in self.playback],
            "streaming": (
                {"url": without_userinfo(self.streaming.url), "begin": self.streaming.begin.value}
                if self.streaming
                else None
            ),
            "status_callbacks": [
                {
                    "event": c.event.value,
                    "url": c.url,
                    "method": c.method.value,
                    "content_type": c.content_type.value,
                }
                for c in self.status_callbacks
            ],
            "state_management": self.state_management,
            "v2_agent": list(self.v2_agent) if self.v2_agent is not None else None,
            "v1": self.v1.value if self.v1 is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallOptions:
        rec = data.get("recording") or {}
        streaming = data.get("streaming")
        return cls(
            attempt_timeout_s=int(data.get("attempt_timeout_s", 30)),
            max_time_limit_s=int(data.get("max_time_limit_s", 14400)),
            recording=RecordingOptions(
                record=bool(rec.get("record", False)),
                channels=RecordingChannels(rec.get("channels", "single")),
                format=RecordingFormat(rec.get("format", "mp3")),
            ),
            wait_audio_url=data.get("wait_audio_url"),
            playback=tuple(
                Playback(url=p["url"], to=PlaybackTo(p["to"]), event=p.get("event", "start"))
                for p in data.get("playback", [])
            ),
            streaming=(
                StreamingOptions(url=streaming["url"], begin=StreamBegin(streaming["begin"]))
                if streaming
                else None
            ),
            status_callbacks=tuple(
                StatusCallback(
                    event=CallbackEvent(c["event"]),
                    url=c["url"],
                    method=CallbackMethod(c["method"]),
                    content_type=CallbackContentType(c["content_type"]),
                )
                for c in data.get("status_callbacks", [])
            ),
            state_management=bool(data.get("state_management", False)),
            v2_agent=((data["v2_agent"][0], data["v2_agent"][1]) if data.get("v2_agent") else None),
            v1=V1Callbacks(data["v1"]) if data.get("v1") else None,
        )


def without_userinfo(url: str) -> str:
    """The URL without `user:password@`; a URL that cannot be split is returned as it is, for
    the URL checks to refuse."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. `ws://[::1/x`
        return url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
