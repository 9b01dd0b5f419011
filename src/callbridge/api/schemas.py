"""Request schemas of the calls API (pydantic), kept apart from table rows and domain objects.

Unknown fields are ignored, as Exotel clients send extras; wrong types and values become a
400 whose message names the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
)

from callbridge.domain.options import (
    CallbackContentType,
    CallbackEvent,
    CallbackMethod,
    CallOptions,
    Playback,
    PlaybackTo,
    RecordingChannels,
    RecordingFormat,
    RecordingOptions,
    StatusCallback,
    StreamBegin,
    StreamingOptions,
)
from callbridge.errors import InvalidRecordingChannels, ValidationFailed

MAX_URL_LENGTH = 2048


def _not_a_boolean(value: Any) -> Any:
    # pydantic's lax mode would read true/false as 1/0 seconds.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


Number = BeforeValidator(_not_a_boolean)
"""Marks a numeric field that must not accept JSON true/false."""


def _words_as_bool(words: dict[str, bool], message: str) -> BeforeValidator:
    """A JSON boolean, or one of `words` (any case) as a string."""

    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
        raise ValueError(message)

    return BeforeValidator(convert)


_TRUE_FALSE = {"true": True, "false": False}

Flag = Annotated[
    bool,
    _words_as_bool(
        _TRUE_FALSE, 'must be true or false (a JSON boolean or the string "true"/"false")'
    ),
]
"""A boolean given as JSON true/false or as the string "true"/"false", as Exotel accepts."""

Switch = Annotated[
    bool,
    _words_as_bool(
        {**_TRUE_FALSE, "on": True, "off": False}, 'must be true or false (or "ON"/"OFF")'
    ),
]
"""A device's ON/OFF: a JSON boolean, "true"/"false" or "ON"/"OFF"."""

Seconds = Annotated[StrictInt, Number]
"""Whole seconds as a JSON integer."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class PartyIn(_Lenient):
    contact_uri: str = Field(min_length=1, max_length=255)
    state_management: Flag = False


class CustomerIn(_Lenient):
    contact_uri: str = Field(min_length=1, max_length=255)


class RecordingIn(_Lenient):
    record: Flag = False
    channels: str = "single"
    format: Literal["mp3", "mp3-hq"] = "mp3"


class StatusCallbackIn(_Lenient):
    event: Literal["answered", "terminal"]
    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH)
    method: Literal["POST", "GET"] = "POST"
    content_type: Literal["application/json", "multipart/form-data"] = "application/json"

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("content_type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class PlaybackIn(_Lenient):
    event: Literal["start"] = "start"
    to: Literal["both", "callee", "caller"] = "both"
    value: str = Field(min_length=1, max_length=MAX_URL_LENGTH)


class StreamingIn(_Lenient):
    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH)
    begin: Literal["from_leg_connect", "to_leg_connect"] = "from_leg_connect"


class CreateCallIn(_Lenient):
    from_: PartyIn = Field(alias="from")
    to: CustomerIn
    virtual_number: str = Field(min_length=1, max_length=64)
    recording: RecordingIn | None = None
    wait_audio_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    max_time_limit: Seconds = Field(default=14400, ge=1, le=14400)
    attempt_time_out: Seconds = Field(default=30, ge=1, le=600)
    # Echoed back exactly as sent: not stripped like the other strings.
    custom_field: Annotated[str, StringConstraints(strip_whitespace=False)] | None = Field(
        default=None, max_length=128
    )
    status_callback: list[StatusCallbackIn] = Field(default_factory=list, max_length=10)
    playback: list[PlaybackIn] = Field(default_factory=list, max_length=10)
    streaming: StreamingIn | None = None

    def options(self) -> CallOptions:
        recording = self.recording or RecordingIn()
        return CallOptions(
            attempt_timeout_s=self.attempt_time_out,
            max_time_limit_s=self.max_time_limit,
            recording=RecordingOptions(
                record=recording.record,
                channels=RecordingChannels(recording.channels),
                format=RecordingFormat(recording.format),
            ),
            wait_audio_url=self.wait_audio_url or None,
            playback=tuple(Playback(url=p.value, to=PlaybackTo(p.to)) for p in self.playback),
            streaming=(
                StreamingOptions(url=self.streaming.url, begin=StreamBegin(self.streaming.begin))
                if self.streaming
                else None
            ),
            status_callbacks=tuple(
                StatusCallback(
                    event=CallbackEvent(c.event),
                    url=c.url,
                    method=CallbackMethod(c.method),
                    content_type=CallbackContentType(c.content_type),
                )
                for c in self.status_callback
            ),
            state_management=self.from_.state_management,
        )


MAX_INT_DIGITS = 19
"""A 64-bit integer has at most 19 digits: a longer JSON integer fits no field and no column
(and past 4,300 digits Python's `int()` refuses to read it at all)."""


class _Unreadable:
    """Stands in for a JSON number that is not a usable value, until its field is named."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


_TOO_LONG = _Unreadable(f"integer has more than {MAX_INT_DIGITS} digits")
_NON_FINITE = _Unreadable("number must be finite (not NaN, Infinity or out of range)")


def _read_int(text: str) -> int | _Unreadable:
    return _TOO_LONG if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


def _read_float(text: str) -> float | _Unreadable:
    value = float(text)
    return value if math.isfinite(value) else _NON_FINITE


_DECODER = json.JSONDecoder(
    parse_int=_read_int, parse_float=_read_float, parse_constant=lambda _name: _NON_FINITE
)
_SUSPECT = re.compile(
    rb"[0-9]{%d}|[eE][+-]?[0-9]{3}|NaN|Infinity|\\u0000|\\u[dD][89a-fA-F]" % (MAX_INT_DIGITS + 1)
)
"""What a body must contain to hold an unreadable number, a NUL or a lone surrogate: only
such bodies are walked."""


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that names the offending field.

    Every route's body is read here, so no JSON a client sends can raise anything but a
    ValidationFailed: malformed JSON, nesting too deep, integers too long to be numbers,
    NaN/Infinity, and text no database stores (NUL characters, lone UTF-16 surrogates)."""
    if not body.strip():
        raise ValidationFailed("request body is empty; a JSON object is required")
    try:
        data = _DECODER.decode(body.decode(json.detect_encoding(body)))
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"request body is not valid JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ValidationFailed("request body is not valid UTF-8") from exc
    except RecursionError as exc:
        raise ValidationFailed("request body is nested too deeply") from exc
    except ValueError as exc:  # nothing else is expected: still the client's body, not a 500
        raise ValidationFailed("request body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ValidationFailed("request body must be a JSON object")
    if _SUSPECT.search(body) is not None:
        try:
            found = _first_problem(data, "")
        except RecursionError as exc:
            raise ValidationFailed("request body is nested too deeply") from exc
        if found is not None:
            where, problem = found
            raise ValidationFailed(f"{where[:128] or 'body'}: {problem}")
    return data


def _first_problem(value: Any, path: str) -> tuple[str, str] | None:
    """The path and problem of the first unreadable number or NUL character, if any."""
    if isinstance(value, _Unreadable):
        return path, value.problem
    if isinstance(value, str):
        return _text_problem(value, path)
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            found = _text_problem(key, here) or _first_problem(item, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_problem(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def _text_problem(text: str, path: str) -> tuple[str, str] | None:
    if "\x00" in text:
        # PostgreSQL cannot store or compare NUL in text.
        return path, "NUL characters are not allowed"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A JSON escape such as "\\ud800" alone: no driver can encode it.
            return path, "text is not valid Unicode (an unpaired surrogate)"
    return None


_OBJECT_EXPECTED = frozenset({"model_type", "model_attributes_type", "dataclass_type", "dict_type"})
"""Error types whose pydantic message names our schema class (`instance of CustomerIn`)."""


def describe_validation_error(exc: ValidationError) -> str:
    """`from.contact_uri: Field required` — the first problem, naming the field (never one
    of our class names)."""
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] in _OBJECT_EXPECTED:
        return f"{loc}: must be a JSON object"
    return f"{loc}: {first['msg']}"


def parse_create_call(body: bytes) -> CreateCallIn:
    data = parse_json_object(body)
    recording = data.get("recording")
    channels = recording.get("channels", "single") if isinstance(recording, dict) else "single"
    if channels not in ("single", "dual"):
        raise InvalidRecordingChannels(
            f"recording.channels must be single or dual, not {str(channels)[:32]!r}"
        )
    try:
        return CreateCallIn.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(describe_validation_error(exc)) from exc
