"""Request-time checks of client-supplied URLs (callbacks, audio, streams): syntax and SSRF."""

from __future__ import annotations

from collections.abc import Mapping

from callbridge.domain.options import CallOptions, without_userinfo
from callbridge.errors import ValidationFailed
from callbridge.media.stream import StreamTarget, StreamUrlError
from callbridge.webhooks.ssrf import UnsafeUrl, UrlGuard

HTTP = ("http", "https")
WS = ("ws", "wss")


async def check_call_urls(
    guard: UrlGuard, options: CallOptions, labels: Mapping[str, str] | None = None
) -> None:
    """Raise a 400 naming the field of the first URL that is malformed or not public.

    `labels` renames fields for another API dialect (`{"wait_audio_url": "WaitUrl"}`)."""
    names = labels or {}
    checks: list[tuple[str, str, tuple[str, ...]]] = []
    for i, callback in enumerate(options.status_callbacks):
        checks.append((f"status_callback.{i}.url", callback.url, HTTP))
    if options.wait_audio_url:
        checks.append(("wait_audio_url", options.wait_audio_url, HTTP))
    for i, playback in enumerate(options.playback):
        checks.append((f"playback.{i}.value", playback.url, HTTP))
    if options.streaming is not None:
        checks.append(("streaming.url", without_userinfo(options.streaming.url), WS))
    if options.streaming is not None:
        try:
            StreamTarget.parse(options.streaming.url)
        except StreamUrlError as exc:
            label = names.get("streaming.url", "streaming.url")
            raise ValidationFailed(f"{label}: {exc}") from exc
    for field, url, schemes in checks:
        try:
            await guard.check(url, schemes)
        except UnsafeUrl as exc:
            raise ValidationFailed(f"{names.get(field, field)}: {exc}") from exc
