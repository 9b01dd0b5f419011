"""Where recordings live: the data directory or an S3-compatible bucket, retention, signed links.

Objects are named `recordings/<account_sid>/<recording_id>.mp3` in both backends. Signed links
are HMAC-SHA256 over the recording id and expiry, checked in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import httpx

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_MAX_LIST_PAGES = 1000


class StorageError(Exception):
    """A recording could not be stored, read or deleted."""


def _check_ids(account_sid: str, recording_id: str) -> None:
    if not _SAFE_ID.match(account_sid) or not _SAFE_ID.match(recording_id):
        raise StorageError("account_sid and recording_id must be 1-64 of [A-Za-z0-9_-]")


def recording_key(account_sid: str, recording_id: str) -> str:
    _check_ids(account_sid, recording_id)
    return f"recordings/{account_sid}/{recording_id}.mp3"


class RecordingStorage(Protocol):
    async def save(self, account_sid: str, recording_id: str, data: bytes) -> None:
        """Store (or replace) a recording atomically."""

    async def read(self, account_sid: str, recording_id: str) -> bytes | None:
        """The recording's bytes, or None when there is no such recording."""

    async def read_range(
        self, account_sid: str, recording_id: str, start: int, end: int
    ) -> bytes | None:
        """Bytes `start` to `end` (inclusive, within the file), or None when there is none."""

    async def delete(self, account_sid: str, recording_id: str) -> bool:
        """Remove a recording; False when it did not exist."""

    async def purge_older_than(self, cutoff: datetime) -> int:
        """Delete recordings last written before `cutoff`; returns how many were deleted."""


async def purge_expired(storage: RecordingStorage, *, retention_days: int, now: datetime) -> int:
    """Apply the retention policy: 0 days keeps recordings forever."""
    if retention_days <= 0:
        return 0
    return await storage.purge_older_than(now - timedelta(days=retention_days))


def _as_key(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else key


def sign_link(recording_id: str, expires_at: int, key: bytes | str) -> str:
    """Signature (hex) for a link to `recording_id` valid until unix time `expires_at`."""
    message = f"{recording_id}:{int(expires_at)}".encode()
    return hmac.new(_as_key(key), message, hashlib.sha256).hexdigest()


def verify_link(
    recording_id: str, expires_at: int, signature: str, key: bytes | str, *, now: float
) -> bool:
    """True when `signature` is valid for the id and expiry and the link has not expired."""
    expected = sign_link(recording_id, expires_at, key)
    valid = hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace"))
    return valid and now < expires_at


class LocalRecordingStorage:
    """Recordings as files under `<data_dir>/recordings/`; writes are temp file + rename."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)

    def path_for(self, account_sid: str, recording_id: str) -> Path:
        return self.root / recording_key(account_sid, recording_id)

    async def save(self, account_sid: str, recording_id: str, data: bytes) -> None:
        await asyncio.to_thread(self._save, self.path_for(account_sid, recording_id), data)

    @staticmethod
    def _save(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".mp3")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def read(self, account_sid: str, recording_id: str) -> bytes | None:
        path = self.path_for(account_sid, recording_id)

        def load() -> bytes | None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(load)

    async def read_range(
        self, account_sid: str, recording_id: str, start: int, end: int
    ) -> bytes | None:
        path = self.path_for(account_sid, recording_id)

        def load() -> bytes | None:
            try:
                with path.open("rb") as handle:
                    handle.seek(start)
                    return handle.read(end - start + 1)
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(load)

    async def delete(self, account_sid: str, recording_id: str) -> bool:
        path = self.path_for(account_sid, recording_id)

        def remove() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(remove)

    async def purge_older_than(self, cutoff: datetime) -> int:
        return await asyncio.to_thread(self._purge, cutoff.timestamp())

    def _purge(self, cutoff_ts: float) -> int:
        base = self.root / "recordings"
        if not base.is_dir():
            return 0
        deleted = 0
        for path in base.glob("*/*.mp3"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff_ts:
                    path.unlink()
                    deleted += 1
        return deleted


def _uri_encode(value: str, *, keep_slash: bool) -> str:
    return urllib.parse.quote(value, safe="/-_.~" if keep_slash else "-_.~")


def sigv4_headers(
    *,
    method: str,
    url: str,
    region: str,
    access_key: str,
    secret_key: str,
    payload_sha256: str,
    now: datetime,
    service: str = "s3",
) -> dict[str, str]:
    """AWS Signature Version 4 headers (Authorization, x-amz-date, x-amz-content-sha256)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port and not (
        (parts.scheme == "http" and parts.port == 80)
        or (parts.scheme == "https" and parts.port == 443)
    ):
        host = f"{host}:{parts.port}"
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    canonical_query = "&".join(
        f"{_uri_encode(k, keep_slash=False)}={_uri_encode(v, keep_slash=False)}"
        for k, v in sorted(query)
    )
    path = _uri_encode(urllib.parse.unquote(parts.path or "/"), keep_slash=True)
    headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical_headers = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers))
    canonical_request = "\n".join(
        [method, path, canonical_query, canonical_headers, signed, payload_sha256]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        ),
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_sha256,
    }


class S3RecordingStorage:
    """Recordings in an S3-compatible bucket (path-style URLs), signed with SigV4 over httpx."""

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        region: str,
        access_key: str,
        secret_key: str,
        client: httpx.AsyncClient,
        timeout_s: float = 30.0,
    ) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._bucket = bucket
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._client = client
        self._timeout_s = timeout_s

    def __repr__(self) -> str:  # never show the secret
        return f"S3RecordingStorage(endpoint={self._endpoint!r}, bucket={self._bucket!r})"

    async def _request(
        self,
        method: str,
        key: str = "",
        *,
        query: str = "",
        body: bytes = b"",
        extra_headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        url = f"{self._endpoint}/{self._bucket}"
        if key:
            url += "/" + _uri_encode(key, keep_slash=True)
        if query:
            url += "?" + query
        headers = sigv4_headers(
            method=method,
            url=url,
            region=self._region,
            access_key=self._access_key,
            secret_key=self._secret_key,
            payload_sha256=hashlib.sha256(body).hexdigest(),
            now=datetime.now(UTC),
        )
        if extra_headers:
            headers = {**headers, **extra_headers}  # unsigned, as SigV4 allows
        try:
            return await self._client.request(
                method, url, content=body or None, headers=headers, timeout=self._timeout_s
            )
        except httpx.HTTPError as exc:
            raise StorageError(f"S3 {method} failed: {type(exc).__name__}") from exc

    async def create_bucket(self) -> None:
        """Create the bucket if missing (convenience for local setups and tests)."""
        response = await self._request("PUT")
        if response.status_code not in (200, 409):
            raise StorageError(f"S3 create bucket answered HTTP {response.status_code}")

    async def save(self, account_sid: str, recording_id: str, data: bytes) -> None:
        response = await self._request("PUT", recording_key(account_sid, recording_id), body=data)
        if response.status_code != 200:
            raise StorageError(f"S3 PUT answered HTTP {response.status_code}")

    async def read(self, account_sid: str, recording_id: str) -> bytes | None:
        response = await self._request("GET", recording_key(account_sid, recording_id))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise StorageError(f"S3 GET answered HTTP {response.status_code}")
        return response.content

    async def read_range(
        self, account_sid: str, recording_id: str, start: int, end: int
    ) -> bytes | None:
        response = await self._request(
            "GET",
            recording_key(account_sid, recording_id),
            extra_headers={"Range": f"bytes={start}-{end}"},
        )
        if response.status_code == 404:
            return None
        if response.status_code == 200:  # a store that ignores Range sends it all
            return response.content[start : end + 1]
        if response.status_code != 206:
            raise StorageError(f"S3 ranged GET answered HTTP {response.status_code}")
        return response.content

    async def delete(self, account_sid: str, recording_id: str) -> bool:
        key = recording_key(account_sid, recording_id)
        head = await self._request("HEAD", key)
        if head.status_code == 404:
            return False
        response = await self._request("DELETE", key)
        if response.status_code not in (200, 204):
            raise StorageError(f"S3 DELETE answered HTTP {response.status_code}")
        return True

    async def _list(self) -> list[tuple[str, datetime]]:
        objects: list[tuple[str, datetime]] = []
        token: str | None = None
        for _ in range(_MAX_LIST_PAGES):
            params = [("list-type", "2"), ("prefix", "recordings/")]
            if token:
                params.append(("continuation-token", token))
            query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
            response = await self._request("GET", query=query)
            if response.status_code != 200:
                raise StorageError(f"S3 list answered HTTP {response.status_code}")
            root = ET.fromstring(response.content)
            for item in root.iter(f"{_S3_NS}Contents"):
                key = item.findtext(f"{_S3_NS}Key") or ""
                modified = item.findtext(f"{_S3_NS}LastModified") or ""
                with contextlib.suppress(ValueError):
                    objects.append((key, datetime.fromisoformat(modified.replace("Z", "+00:00"))))
            if root.findtext(f"{_S3_NS}IsTruncated") != "true":
                break
            token = root.findtext(f"{_S3_NS}NextContinuationToken")
        return objects

    async def purge_older_than(self, cutoff: datetime) -> int:
        deleted = 0
        for key, modified in await self._list():
            if modified < cutoff:
                response = await self._request("DELETE", key)
                if response.status_code in (200, 204):
                    deleted += 1
        return deleted


def link_expiry(ttl_s: int, *, now: float | None = None) -> int:
    """Unix time `ttl_s` from now, for `sign_link`."""
    return int((time.time() if now is None else now) + ttl_s)
