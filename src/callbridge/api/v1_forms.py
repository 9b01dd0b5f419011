"""The form of v1 `Calls/connect`, and what it asks for in callbridge's terms: the parties, the
ExoPhone, a flow to run (the `Url=…/exoml/start_voice/{app_id}` variant) and the call options.

Values are read as Exotel reads them: words in any case (`true`, `Dual`, `Callee`), an empty
field as a field not sent, and every bad value answers 400 naming the v1 field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from starlette.datastructures import FormData

from callbridge.api.schemas import MAX_URL_LENGTH
from callbridge.domain.options import (
    CallbackContentType,
    CallbackEvent,
    CallOptions,
    Playback,
    PlaybackTo,
    RecordingChannels,
    RecordingFormat,
    RecordingOptions,
    StatusCallback,
    StreamBegin,
    StreamingOptions,
    V1Callbacks,
)
from callbridge.errors import InvalidRecordingChannels, ValidationFailed

MAX_EVENTS = 10
URL_LABELS = {
    "status_callback.0.url": "StatusCallback",
    "wait_audio_url": "WaitUrl",
    "playback.0.value": "StartPlaybackValueNew",
    "streaming.url": "StreamUrl",
}
"""v1 names of the fields `check_call_urls` reports."""

_FLOW_URL = re.compile(
    r"\Ahttps?://my(?:\.[a-z0-9-]+)?\.exotel\.(?:com|in)/(?:([^/?#]+)/)?exoml/start(?:_voice)?/"
    r"([^/?#]+)/?(?:[?#].*)?\Z",
    re.IGNORECASE,
)
_EVENTS = {"terminal": CallbackEvent.TERMINAL, "answered": CallbackEvent.ANSWERED}
_IGNORED_EVENTS = frozenset({"ringing"})
"""Events newer Exotel docs list that callbridge does not send; accepted so a request that
also asks for them still places its call."""
_BOOLEAN = {"true": True, "false": False, "1": True, "0": False}
_STREAM_BEGIN = {
    "leg1connect": StreamBegin.FROM_LEG_CONNECT,
    "from_leg_connect": StreamBegin.FROM_LEG_CONNECT,
    "leg2connect": StreamBegin.TO_LEG_CONNECT,
    "to_leg_connect": StreamBegin.TO_LEG_CONNECT,
}
_PLAYBACK_TO = {"callee": PlaybackTo.CALLEE, "both": PlaybackTo.BOTH}
_KEEP_BLANK = frozenset({"CustomField"})


def _optional_url() -> Any:
    return Field(default=None, max_length=MAX_URL_LENGTH)


class V1ConnectForm(BaseModel):
    """The form fields of `POST /v1/Accounts/{sid}/Calls/connect`; other fields are ignored."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    From: str = Field(min_length=1, max_length=255, description="Number dialled first")
    To: str | None = Field(default=None, max_length=255, description="Number dialled second")
    CallerId: str = Field(min_length=1, max_length=64, description="An ExoPhone of the account")
    Url: str | None = Field(
        default=None,
        max_length=MAX_URL_LENGTH,
        description="Instead of To: http://my.exotel.com/{sid}/exoml/start_voice/{flow_id}",
    )
    CallType: str | None = Field(default=None, max_length=16, description="trans")
    TimeLimit: int | None = Field(default=None, ge=1, le=14400, description="Seconds of talk")
    TimeOut: int | None = Field(default=None, ge=1, le=600, description="Seconds each leg rings")
    WaitUrl: str | None = _optional_url()
    Record: str | None = Field(default=None, max_length=8, description="true | false")
    RecordingChannels: str | None = Field(default=None, max_length=16, description="single|dual")
    RecordingFormat: str | None = Field(default=None, max_length=16, description="mp3 | mp3-hq")
    CustomField: Annotated[str, StringConstraints(strip_whitespace=False)] | None = Field(
        default=None, max_length=128
    )
    StatusCallback: str | None = _optional_url()
    StatusCallbackEvents: list[str] = Field(
        default_factory=list,
        alias="StatusCallbackEvents[]",
        max_length=MAX_EVENTS,
        description="terminal, answered (also StatusCallbackEvents[0]=… or a plain field)",
    )
    StatusCallbackContentType: str | None = Field(
        default=None, max_length=64, description="multipart/form-data | application/json"
    )
    StreamUrl: str | None = _optional_url()
    StreamType: str | None = Field(default=None, max_length=32)
    StreamBegin: str | None = Field(default=None, max_length=32)
    StartPlaybackToNew: str | None = Field(default=None, max_length=16, description="Callee|Both")
    StartPlaybackValueNew: str | None = _optional_url()

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """No database stores NUL in text (PostgreSQL refuses it): refuse it at the door."""
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "\x00" in v for v in values):
            raise ValueError("NUL characters are not allowed")
        return value

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        """Clients send empty fields for values they do not set."""
        if isinstance(data, dict):
            return {
                key: value
                for key, value in data.items()
                if key in _KEEP_BLANK or not (isinstance(value, str) and not value.strip())
            }
        return data


@dataclass(frozen=True, slots=True)
class FlowTarget:
    app_id: str
    account_sid: str | None


def flow_target(url: str) -> FlowTarget:
    """The flow an Exotel flow URL names: `http://my.exotel.com/{sid}/exoml/start_voice/{id}`,
    `http://my.exotel.in/exoml/start/{id}` (regional hosts such as my.mum1.exotel.com too)."""
    match = _FLOW_URL.match(url.strip())
    if match is None:
        raise ValidationFailed(
            "Url: must be a flow URL, http://my.exotel.com/{account_sid}/exoml/start_voice/"
            "{flow_id}"
        )
    return FlowTarget(app_id=match.group(2), account_sid=match.group(1))


def _word(value: str | None, field: str, table: dict[str, Any], allowed: str) -> Any:
    if value is None:
        return None
    found = table.get(value.strip().lower())
    if found is None:
        raise ValidationFailed(f"{field}: must be {allowed}, not {value[:32]!r}")
    return found


def callback_events(form: V1ConnectForm, raw: FormData) -> list[CallbackEvent]:
    """Subscribed events from every way clients write them: repeated `StatusCallbackEvents[]`,
    indexed `StatusCallbackEvents[0]`, a plain `StatusCallbackEvents`, or one comma list."""
    values = list(form.StatusCallbackEvents) + [str(v) for v in raw.getlist("StatusCallbackEvents")]
    for key in raw:
        if key.startswith("StatusCallbackEvents[") and key != "StatusCallbackEvents[]":
            values += [str(v) for v in raw.getlist(key)]
    words = [w.strip().lower() for value in values for w in value.split(",") if w.strip()]
    if len(words) > MAX_EVENTS:
        raise ValidationFailed(f"StatusCallbackEvents: at most {MAX_EVENTS} values")
    events: list[CallbackEvent] = []
    for word in words:
        if word in _IGNORED_EVENTS:
            continue
        if word not in _EVENTS:
            raise ValidationFailed(
                f"StatusCallbackEvents: must be terminal or answered, not {word[:32]!r}"
            )
        if _EVENTS[word] not in events:
            events.append(_EVENTS[word])
    return events


def _recording(form: V1ConnectForm, base: RecordingOptions) -> RecordingOptions:
    record = _word(form.Record, "Record", _BOOLEAN, "true or false")
    channels = base.channels
    if form.RecordingChannels is not None:
        word = form.RecordingChannels.lower()
        if word not in ("single", "dual"):
            raise InvalidRecordingChannels(
                f"RecordingChannels must be single or dual, not {form.RecordingChannels[:32]!r}"
            )
        channels = RecordingChannels(word)
    fmt = base.format
    if form.RecordingFormat is not None:
        fmt = _word(
            form.RecordingFormat,
            "RecordingFormat",
            {"mp3": RecordingFormat.MP3, "mp3-hq": RecordingFormat.MP3_HQ},
            "mp3 or mp3-hq",
        )
    return RecordingOptions(
        record=base.record if record is None else record, channels=channels, format=fmt
    )


def _status_callbacks(
    form: V1ConnectForm, events: list[CallbackEvent]
) -> tuple[tuple[StatusCallback, ...], V1Callbacks | None]:
    if form.StatusCallback is None:
        return (), None
    content_type = _word(
        form.StatusCallbackContentType or "multipart/form-data",
        "StatusCallbackContentType",
        {c.value: c for c in CallbackContentType},
        "multipart/form-data or application/json",
    )
    # Without subscribed events Exotel posts once, on completion, with its four basic fields.
    style = V1Callbacks.EVENTS if events else V1Callbacks.BASIC
    chosen = events or [CallbackEvent.TERMINAL]
    callbacks = tuple(
        StatusCallback(event=event, url=form.StatusCallback, content_type=content_type)
        for event in chosen
    )
    return callbacks, style


def _streaming(form: V1ConnectForm, base: StreamingOptions | None) -> StreamingOptions | None:
    _word(
        form.StreamType,
        "StreamType",
        {"bidirectional": True, "unidirectional": True},
        "bidirectional or unidirectional",
    )
    begin = _word(
        form.StreamBegin.replace(" ", "").lower().removeprefix("at") if form.StreamBegin else None,
        "StreamBegin",
        _STREAM_BEGIN,
        "Leg1Connect or Leg2Connect",
    )
    if form.StreamUrl is None:
        return base
    return StreamingOptions(url=form.StreamUrl, begin=begin or StreamBegin.FROM_LEG_CONNECT)


def call_options(form: V1ConnectForm, raw: FormData, base: CallOptions) -> CallOptions:
    """The call's options: `base` (defaults, or a flow's own) with what the form sets."""
    if form.CallType is not None and form.CallType.lower() != "trans":
        raise ValidationFailed(f"CallType: must be trans, not {form.CallType[:16]!r}")
    callbacks, style = _status_callbacks(form, callback_events(form, raw))
    playback = base.playback
    if form.StartPlaybackValueNew is not None:
        to = _word(
            form.StartPlaybackToNew or "Callee",
            "StartPlaybackToNew",
            _PLAYBACK_TO,
            "Callee or Both",
        )
        playback = (Playback(url=form.StartPlaybackValueNew, to=to),)
    return replace(
        base,
        attempt_timeout_s=form.TimeOut or base.attempt_timeout_s,
        max_time_limit_s=form.TimeLimit or base.max_time_limit_s,
        recording=_recording(form, base.recording),
        wait_audio_url=form.WaitUrl or base.wait_audio_url,
        playback=playback,
        streaming=_streaming(form, base.streaming),
        status_callbacks=callbacks,
        # v1 checks no busy state, unless `From` is a registered device (admission sees to it).
        state_management=False,
        v1=style,
        v2_agent=None,
    )
