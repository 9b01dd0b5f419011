"""Just enough SIP syntax for a registrar: parse a request (start line, headers, body), split
multi-valued headers, read name-addr URIs and their parameters, and write a response."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 16 * 1024
"""Bigger messages are dropped: a REGISTER is a few hundred bytes."""
MAX_HEADERS = 64

COMPACT = {
    "i": "call-id",
    "m": "contact",
    "f": "from",
    "t": "to",
    "v": "via",
    "l": "content-length",
    "k": "supported",
    "c": "content-type",
}
"""RFC 3261 §7.3.3 compact header names."""

_REQUEST_LINE_RE = re.compile(r"^([A-Za-z]+) (\S+) SIP/2\.0$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9.!%*_+`\'~-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s,;]*))?\s*')


class SipParseError(ValueError):
    """The bytes are not a SIP request we can answer."""


@dataclass(frozen=True, slots=True)
class SipRequest:
    method: str
    uri: str
    headers: Sequence[tuple[str, str]]
    """(lower-case full name, value) in arrival order; compact names are expanded."""
    body: bytes = b""

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, header lines and comma-separated values alike."""
        values: list[str] = []
        for key, value in self.headers:
            if key == name:
                values.extend(split_values(value))
        return values

    def raw_lines(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def is_request(data: bytes) -> bool:
    return not data.startswith(b"SIP/2.0 ")


def parse_request(data: bytes) -> SipRequest:
    """Parse one whole SIP request (UDP datagram, or one framed TCP message)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("message too large")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("headers are not UTF-8") from exc
    lines = text.replace("\r\n", "\n").split("\n")
    match = _REQUEST_LINE_RE.match(lines[0].strip())
    if match is None:
        raise SipParseError("not a SIP/2.0 request line")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line.strip():
            continue
        if line[0] in " \t" and headers:
            # Header folding (RFC 3261 §7.3.1): a continuation of the previous value.
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not _TOKEN_RE.match(name):
            raise SipParseError("malformed header line")
        headers.append((COMPACT.get(name, name), value.strip()))
        if len(headers) > MAX_HEADERS:
            raise SipParseError("too many headers")
    return SipRequest(match.group(1).upper(), match.group(2), tuple(headers), body)


def split_values(value: str) -> list[str]:
    """Split a header value on commas that are outside quotes and angle brackets."""
    return [p.strip() for p in _split_unquoted(value, ",", brackets=True) if p.strip()]


def parse_params(text: str) -> dict[str, str]:
    """`;a=1;b="x y";lr` (or `a=1, b="x"` in an auth header) as a dict, names lower-cased,
    quotes removed; a bare name maps to ""."""
    params: dict[str, str] = {}
    for piece in _split_unquoted(text, ";,", brackets=False):
        if not piece.strip():
            continue
        match = _PARAM_RE.fullmatch(piece)
        if match is None:
            raise SipParseError("malformed parameter")
        value = match.group(2) or ""
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match.group(1).lower()] = value
    return params


def _split_unquoted(text: str, separators: str, *, brackets: bool) -> list[str]:
    """`text` split on `separators` outside double quotes (and, with `brackets`, outside
    angle brackets); pieces are returned as they are, empty ones included."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    depth = 0
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif brackets and not quoted and ch == "<":
            depth += 1
        elif brackets and not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch in separators and not quoted and depth == 0:
            pieces.append("".join(current))
            current = []
            continue
        current.append(ch)
    pieces.append("".join(current))
    return pieces


@dataclass(frozen=True, slots=True)
class NameAddr:
    uri: str
    params: dict[str, str] = field(default_factory=dict)


def parse_name_addr(value: str) -> NameAddr:
    """`"Name" <sip:u@h;transport=tcp>;expires=60` → uri `sip:u@h;transport=tcp`, params
    {expires: 60}. Without angle brackets, everything after the first `;` is a header param."""
    value = value.strip()
    lt = _unquoted_index(value, "<")
    if lt != -1:
        gt = value.find(">", lt)
        if gt == -1:
            raise SipParseError("unclosed <")
        uri, rest = value[lt + 1 : gt].strip(), value[gt + 1 :]
    else:
        uri, _, rest = value.partition(";")
        uri, rest = uri.strip(), ";" + rest if rest else ""
    if not uri or any(ch.isspace() for ch in uri):
        raise SipParseError("malformed URI")
    return NameAddr(uri, parse_params(rest) if rest.strip() else {})


def _unquoted_index(value: str, wanted: str) -> int:
    quoted = False
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif ch == wanted and not quoted:
            return i
    return -1


def render_response(
    request: SipRequest,
    status: int,
    reason: str,
    extra: Iterable[tuple[str, str]] = (),
    *,
    to_tag: str | None = None,
    source: tuple[str, int] | None = None,
) -> bytes:
    """A response copying Via, From, To (tagged when it has none), Call-ID and CSeq; the top
    Via gets `received`/`rport` (RFC 3581) when it asks for them and `source` is given."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for i, via in enumerate(request.raw_lines("via")):
        if i == 0 and source is not None:
            via = stamp_via(via, *source)
        lines.append(f"Via: {via}")
    for name in ("from", "to", "call-id", "cseq"):
        value = request.get(name)
        if value is None:
            continue
        if name == "to" and to_tag and ";tag=" not in value.replace(" ", "").lower():
            value = f"{value};tag={to_tag}"
        lines.append(f"{_TITLE.get(name, name)}: {value}")
    for name, value in extra:
        lines.append(f"{name}: {value}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def stamp_via(via: str, host: str, port: int) -> str:
    """Fill an empty `rport` (and so `received`) of the first Via value with where the
    request really came from, so replies cross NAT the way the phone expects."""
    first, *rest = split_values(via)
    parts = first.split(";")
    if not any(p.strip().lower() == "rport" for p in parts[1:]):
        return via
    stamped = [
        f"rport={port}" if p.strip().lower() == "rport" else p
        for p in parts
        if not p.strip().lower().startswith("received=")
    ]
    return ", ".join([";".join(stamped) + f";received={host}", *rest])


_TITLE = {"from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}
