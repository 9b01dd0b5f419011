"""Holding an inbound caller: the node's queue of callers waiting for a free agent, the hold tone,
and the no-agent message audio."""

from __future__ import annotations

import logging
from array import array
from typing import Protocol

import httpx

from callbridge.domain.flows import NoAgentStep
from callbridge.telephony.base import SAMPLE_RATE
from callbridge.webhooks.ssrf import PinnedTransport, UrlGuard

log = logging.getLogger(__name__)

MESSAGE_FETCH_TIMEOUT_S = 5.0
MAX_MESSAGE_S = 300.0


class Waiting(Protocol):
    """A queued call, as the queue sees it."""

    @property
    def account_sid(self) -> str: ...

    def wake(self) -> None: ...


class WaitingQueue:
    """Callers of this node waiting for a free agent, oldest first (per node: see docs)."""

    def __init__(self) -> None:
        self._waiting: dict[Waiting, None] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def enqueue(self, caller: Waiting) -> None:
        self._waiting[caller] = None

    def dequeue(self, caller: Waiting) -> None:
        self._waiting.pop(caller, None)

    def agent_freed(self, account_sid: str) -> None:
        """An agent may be free now: let the account's queued callers look, oldest first."""
        for caller in list(self._waiting):
            if caller.account_sid == account_sid:
                caller.wake()


def tone(duration_s: float) -> bytes:
    """Hold/message audio: the media layer's fallback tone, or a 425 Hz beep pattern."""
    try:
        from callbridge.media.audio import fallback_tone

        return fallback_tone(max(duration_s, 0.02))
    except ImportError:  # the media layer is optional for routing
        n = max(1, int(duration_s * SAMPLE_RATE))
        period = SAMPLE_RATE // 425
        wave = [3000 if (i % period) < period // 2 else -3000 for i in range(n)]
        return array("h", wave).tobytes()


async def fetch_audio(url: str, guard: UrlGuard, max_bytes: int) -> bytes | None:
    """A WAV for the no-agent message, as PCM; None (use a tone) when it cannot be had."""
    try:
        from callbridge.media.wav import fetch_wav
    except ImportError:
        return None
    transport = PinnedTransport(guard, max_connections=1)
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            return await fetch_wav(
                url,
                client=client,
                max_bytes=max_bytes,
                guard=guard.check,
                timeout_s=MESSAGE_FETCH_TIMEOUT_S,
            )
    except Exception as exc:
        log.warning("message audio unusable", extra={"error": type(exc).__name__})
        return None


async def message_audio(
    no_agent: NoAgentStep, guard: UrlGuard, max_bytes: int
) -> tuple[bytes | None, float]:
    """The no-agent message as PCM and its length: the WAV at `message_url`, else a tone of
    `message_s` seconds; (None, …) when there is nothing to play."""
    pcm: bytes | None = None
    if no_agent.message_url:
        pcm = await fetch_audio(no_agent.message_url, guard, max_bytes)
    duration_s = float(no_agent.message_s)
    if pcm is not None:
        duration_s = min(len(pcm) / (2 * SAMPLE_RATE), MAX_MESSAGE_S)
    elif duration_s > 0:
        pcm = tone(duration_s)
    return pcm, duration_s
