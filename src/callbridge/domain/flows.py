"""Inbound flow definitions: the connect step (static users/groups or a dynamic URL), what to do
when no agent is free, and status callbacks — parsed and validated from JSON, stored as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from callbridge.domain.options import (
    CallbackContentType,
    CallbackEvent,
    CallbackMethod,
    RecordingChannels,
    RecordingFormat,
    RecordingOptions,
    StatusCallback,
)

MAX_DESTINATIONS = 200
MAX_URL_LENGTH = 2048
MAX_GROUP_ID = 2**31 - 1
"""Group ids are a 32-bit integer column: a larger id names no group (and PostgreSQL refuses
to compare the column with it)."""


class Strategy(StrEnum):
    SEQUENTIAL = "sequential"
    SIMULTANEOUS = "simultaneous"
    ROUND_ROBIN = "round_robin"
    LONGEST_IDLE = "longest_idle"


class NoAgentAction(StrEnum):
    MESSAGE = "message"
    """Play a message to the caller, then hang up."""
    QUEUE = "queue"
    """Hold the caller with wait audio until an agent frees up or `max_wait_s` passes."""


class Fallback(StrEnum):
    STATIC = "static"
    """The dynamic URL failed: route over the flow's static destinations."""
    NO_AGENT = "no_agent"
    """The dynamic URL failed: go straight to the no-agent action."""


class FlowInvalid(ValueError):
    """A flow definition breaks a rule; the message names the field."""


@dataclass(frozen=True, slots=True)
class Destination:
    """One entry of a static connect list: exactly one of the three is set."""

    user_id: str | None = None
    group_id: int | None = None
    contact_uri: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.user_id is not None:
            return {"user_id": self.user_id}
        if self.group_id is not None:
            return {"group_id": self.group_id}
        return {"contact_uri": self.contact_uri}


@dataclass(frozen=True, slots=True)
class ConnectStep:
    destinations: tuple[Destination, ...] = ()
    strategy: Strategy = Strategy.SEQUENTIAL
    attempt_timeout_s: int = 30
    max_conversation_s: int = 14400
    cooldown_s: int = 0
    """After an agent lets an offered call ring out or rejects it, skip them this long."""
    recording: RecordingOptions = field(default_factory=RecordingOptions)
    wait_audio_url: str | None = None
    """WAV played to the caller from answer until an agent is connected (else a tone)."""
    url: str | None = None
    """Dynamic routing (Exotel CCM programmable connect): GET this URL for destinations."""
    url_timeout_s: float = 5.0
    fallback: Fallback = Fallback.STATIC


@dataclass(frozen=True, slots=True)
class NoAgentStep:
    action: NoAgentAction = NoAgentAction.MESSAGE
    message_url: str | None = None
    """WAV played before hanging up; a generated tone of `message_s` seconds when unset."""
    message_s: int = 5
    max_wait_s: int = 120
    """Queue only: how long a caller may wait for a free agent in total."""
    hold_audio_url: str | None = None
    """Queue only: WAV looped while the caller waits (defaults to the connect wait audio)."""
    retry_interval_s: int = 5
    """Queue only: how often free agents are looked for (also on every call that ends)."""


@dataclass(frozen=True, slots=True)
class FlowDefinition:
    connect: ConnectStep = field(default_factory=ConnectStep)
    no_agent: NoAgentStep = field(default_factory=NoAgentStep)
    status_callbacks: tuple[StatusCallback, ...] = ()

    @property
    def is_dynamic(self) -> bool:
        return self.connect.url is not None

    def to_json(self) -> dict[str, Any]:
        c, n = self.connect, self.no_agent
        return {
            "connect": {
                "destinations": [d.to_json() for d in c.destinations],
                "strategy": c.strategy.value,
                "attempt_timeout_s": c.attempt_timeout_s,
                "max_conversation_s": c.max_conversation_s,
                "cooldown_s": c.cooldown_s,
                "recording": {
                    "record": c.recording.record,
                    "channels": c.recording.channels.value,
                    "format": c.recording.format.value,
                },
                "wait_audio_url": c.wait_audio_url,
                "url": c.url,
                "url_timeout_s": c.url_timeout_s,
                "fallback": c.fallback.value,
            },
            "no_agent": {
                "action": n.action.value,
                "message_url": n.message_url,
                "message_s": n.message_s,
                "max_wait_s": n.max_wait_s,
                "hold_audio_url": n.hold_audio_url,
                "retry_interval_s": n.retry_interval_s,
            },
            "status_callback": [
                {
                    "event": cb.event.value,
                    "url": cb.url,
                    "method": cb.method.value,
                    "content_type": cb.content_type.value,
                }
                for cb in self.status_callbacks
            ],
        }


# -- parsing -------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class FlowDestinationIn(_Strict):
    user_id: str | None = Field(default=None, min_length=1, max_length=64)
    group_id: int | None = Field(default=None, ge=1, le=MAX_GROUP_ID)
    contact_uri: str | None = Field(default=None, min_length=1, max_length=255)

    @model_validator(mode="after")
    def _exactly_one(self) -> FlowDestinationIn:
        given = [v for v in (self.user_id, self.group_id, self.contact_uri) if v is not None]
        if len(given) != 1:
            raise ValueError("each destination needs exactly one of user_id, group_id, contact_uri")
        return self


class FlowRecordingIn(_Strict):
    record: bool = False
    channels: Literal["single", "dual"] = "single"
    format: Literal["mp3", "mp3-hq"] = "mp3"


class ConnectStepIn(_Strict):
    destinations: list[FlowDestinationIn] = Field(default_factory=list, max_length=MAX_DESTINATIONS)
    strategy: Strategy = Strategy.SEQUENTIAL
    attempt_timeout_s: int = Field(default=30, ge=1, le=600)
    max_conversation_s: int = Field(default=14400, ge=1, le=14400)
    cooldown_s: int = Field(default=0, ge=0, le=3600)
    recording: FlowRecordingIn = Field(default_factory=FlowRecordingIn)
    wait_audio_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    url: str | None = Field(default=None, min_length=1, max_length=MAX_URL_LENGTH)
    url_timeout_s: float = Field(default=5.0, gt=0, le=30)
    fallback: Fallback = Fallback.STATIC


class NoAgentStepIn(_Strict):
    action: NoAgentAction = NoAgentAction.MESSAGE
    message_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    message_s: int = Field(default=5, ge=0, le=300)
    max_wait_s: int = Field(default=120, ge=1, le=3600)
    hold_audio_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    retry_interval_s: int = Field(default=5, ge=1, le=300)


class FlowCallbackIn(_Strict):
    event: Literal["answered", "terminal"]
    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH)
    method: Literal["POST", "GET"] = "POST"
    content_type: Literal["application/json", "multipart/form-data"] = "application/json"

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class FlowDefinitionIn(_Strict):
    connect: ConnectStepIn = Field(default_factory=ConnectStepIn)
    no_agent: NoAgentStepIn = Field(default_factory=NoAgentStepIn)
    status_callback: list[FlowCallbackIn] = Field(default_factory=list, max_length=10)


def parse_flow_definition(data: dict[str, Any]) -> FlowDefinition:
    """Validate a flow definition (`connect`, `no_agent`, `status_callback`); raises FlowInvalid."""
    try:
        raw = FlowDefinitionIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(part) for part in first["loc"]) or "flow"
        raise FlowInvalid(f"{loc}: {first['msg']}") from exc
    c = raw.connect
    connect = ConnectStep(
        destinations=tuple(
            Destination(d.user_id, d.group_id, d.contact_uri) for d in c.destinations
        ),
        strategy=c.strategy,
        attempt_timeout_s=c.attempt_timeout_s,
        max_conversation_s=c.max_conversation_s,
        cooldown_s=c.cooldown_s,
        recording=RecordingOptions(
            record=c.recording.record,
            channels=RecordingChannels(c.recording.channels),
            format=RecordingFormat(c.recording.format),
        ),
        wait_audio_url=c.wait_audio_url or None,
        url=c.url,
        url_timeout_s=c.url_timeout_s,
        fallback=c.fallback,
    )
    n = raw.no_agent
    no_agent = NoAgentStep(
        action=n.action,
        message_url=n.message_url or None,
        message_s=n.message_s,
        max_wait_s=n.max_wait_s,
        hold_audio_url=n.hold_audio_url or None,
        retry_interval_s=n.retry_interval_s,
    )
    callbacks = tuple(
        StatusCallback(
            event=CallbackEvent(cb.event),
            url=cb.url,
            method=CallbackMethod(cb.method),
            content_type=CallbackContentType(cb.content_type),
        )
        for cb in raw.status_callback
    )
    return FlowDefinition(connect=connect, no_agent=no_agent, status_callbacks=callbacks)


def flow_urls(flow: FlowDefinition) -> list[tuple[str, str]]:
    """Every client-supplied URL of a flow with the field it came from (for the SSRF guard)."""
    found = [
        ("connect.url", flow.connect.url),
        ("connect.wait_audio_url", flow.connect.wait_audio_url),
        ("no_agent.message_url", flow.no_agent.message_url),
        ("no_agent.hold_audio_url", flow.no_agent.hold_audio_url),
    ]
    found += [(f"status_callback[{i}].url", cb.url) for i, cb in enumerate(flow.status_callbacks)]
    return [(name, url) for name, url in found if url]
