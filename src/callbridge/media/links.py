"""Recording URLs as clients see them: the credentialled URL of a recording, and signed, expiring
links to it that a CRM or a browser player can fetch without the account's credentials.

Stored data (calls, outbox payloads) only ever holds the credentialled URL. A link is minted when
a response or a callback is sent, so a callback retried hours later still carries a fresh one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from callbridge.media.storage import link_expiry, sign_link
from callbridge.settings import Settings

_RECORDING_PATH = re.compile(r"/v3/accounts/([^/?#]+)/recordings/([0-9a-f]{32})\.mp3")


def public_base_url(settings: Settings) -> str:
    """Where clients reach this server: `public_base_url`, else `http://host:port`."""
    return (settings.public_base_url or f"http://{settings.host}:{settings.port}").rstrip("/")


class RecordingLinks:
    """Builds recording URLs under one base URL and signs them with one key.

    Every node that serves recordings or sends callbacks must share the key
    (`CALLBRIDGE_SIGNING_KEY`), or links minted by one node are refused by another.
    """

    def __init__(
        self,
        base_url: str,
        key: bytes,
        ttl_s: int,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = key
        self.ttl_s = ttl_s
        # Links are checked against wall-clock time by whoever fetches them, not a test clock.
        self._wall_clock = wall_clock
        self._ours = re.compile(re.escape(self.base_url) + _RECORDING_PATH.pattern + r"\Z")

    @classmethod
    def from_settings(cls, settings: Settings, key: bytes) -> RecordingLinks:
        return cls(public_base_url(settings), key, settings.recording_link_ttl_s)

    def url(self, account_sid: str, recording_id: str) -> str:
        """The credentialled URL: readable with the account's API key and token, for ever."""
        return f"{self.base_url}/v3/accounts/{account_sid}/recordings/{recording_id}.mp3"

    def query(self, recording_id: str, ttl_s: int | None = None) -> dict[str, str]:
        """`expires` and `signature` query parameters for a link valid `ttl_s` from now."""
        expires = link_expiry(self.ttl_s if ttl_s is None else ttl_s, now=self._wall_clock())
        return {"expires": str(expires), "signature": sign_link(recording_id, expires, self._key)}

    def link(self, account_sid: str, recording_id: str, ttl_s: int | None = None) -> str:
        """A signed link: the credentialled URL plus `?expires=…&signature=…`."""
        return self.link_and_expiry(account_sid, recording_id, ttl_s)[0]

    def link_and_expiry(
        self, account_sid: str, recording_id: str, ttl_s: int | None = None
    ) -> tuple[str, int]:
        """A signed link and the unix time it stops working."""
        query = self.query(recording_id, ttl_s)
        return f"{self.url(account_sid, recording_id)}?{urlencode(query)}", int(query["expires"])

    def sign(self, url: str, account_sid: str, ttl_s: int | None = None) -> str:
        """`url` as a signed link if it is a credentialled recording URL of `account_sid`;
        any other string is returned unchanged."""
        match = self._ours.match(url)
        if match is None or match.group(1) != account_sid:
            return url
        return self.link(account_sid, match.group(2), ttl_s)

    def sign_all(self, document: Any, account_sid: str) -> Any:
        """A copy of a JSON document with every recording URL of the account signed."""
        if isinstance(document, str):
            return self.sign(document, account_sid)
        if isinstance(document, dict):
            return {key: self.sign_all(value, account_sid) for key, value in document.items()}
        if isinstance(document, list):
            return [self.sign_all(item, account_sid) for item in document]
        return document
