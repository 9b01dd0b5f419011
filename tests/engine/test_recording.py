"""Recorded click-to-calls on the simulated carrier: the MP3 is served at recordings[].url,
has the talk time's length, and carries each party's own voice in its channel."""

from __future__ import annotations

import asyncio
import time

import pytest

from callbridge.clock import ManualClock
from callbridge.media.audio import dominant_frequency, voice_frequency
from callbridge.store.repo import Store

from ..conftest import basic
from ..harness import AGENT, CUSTOMER, Harness, running_app
from ..media.support import decode_mp3


async def recorded_call(h: Harness, channels: str, fmt: str = "mp3") -> dict[str, object]:
    h.phone(AGENT, "answer", answer_after_s=1)
    h.phone(CUSTOMER, "answer", answer_after_s=2, hangup_after_s=6)
    r = await h.create_call(recording={"record": True, "channels": channels, "format": fmt})
    assert r.status_code == 200, r.text
    sid = r.json()["response"]["call_details"]["sid"]
    for _ in range(20 * 12):
        await h.advance(0.05)
        # The encoder runs on a worker thread: give it real time to finish its batches.
        await asyncio.sleep(0)
    for _ in range(200):
        details = await h.call(sid)
        if details["state"] == "terminal":
            return details
        await asyncio.sleep(0.01)
        await h.advance(0.05)
    raise AssertionError("call did not end")


async def fetch(h: Harness, url: str, **kw: object) -> bytes:
    path = url.split("://", 1)[1].split("/", 1)[1]
    r = await h.client.get("/" + path, **kw)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/mpeg"
    return r.content


async def test_dual_recording_puts_agent_left_and_customer_right(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        details = await recorded_call(h, "dual")
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 6
        recordings = details["recordings"]
        assert isinstance(recordings, list) and len(recordings) == 1
        listing = await h.client.get("/v3/accounts/acme/calls", headers=h.auth)
        [listed] = [i["call_details"] for i in listing.json()["response"]]
        # The listing gives links to the same recordings (each response mints its own link).
        assert [r["url"].split("?")[0] for r in listed["recordings"]] == [
            r["url"].split("?")[0] for r in recordings
        ]
        mp3 = await fetch(h, recordings[0]["url"], headers=h.auth)
        nchannels, _, duration_s, (left, right) = decode_mp3(mp3)
        assert nchannels == 2
        assert abs(duration_s - 6) <= 0.5
        assert dominant_frequency(left) == pytest.approx(voice_frequency(AGENT), abs=15)
        assert dominant_frequency(right) == pytest.approx(voice_frequency(CUSTOMER), abs=15)


async def test_single_recording_mixes_both_parties(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        details = await recorded_call(h, "single", "mp3-hq")
        recordings = details["recordings"]
        assert isinstance(recordings, list)
        mp3 = await fetch(h, recordings[0]["url"], headers=h.auth)
        nchannels, _, duration_s, (mono,) = decode_mp3(mp3)
        assert nchannels == 1
        assert abs(duration_s - 6) <= 0.5
        from ..media.support import power_at

        agent_power = power_at(mono, voice_frequency(AGENT))
        customer_power = power_at(mono, voice_frequency(CUSTOMER))
        assert agent_power > 0.1 * customer_power
        assert customer_power > 0.1 * agent_power


async def test_recording_is_private_to_its_account_and_links_expire(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        details = await recorded_call(h, "dual")
        recordings = details["recordings"]
        assert isinstance(recordings, list)
        url = recordings[0]["url"]
        link = "/" + url.split("://", 1)[1].split("/", 1)[1]
        assert (await h.client.get(link)).status_code == 200  # the details carry a signed link
        path = link.split("?")[0]  # the credentialled URL needs the account's credentials
        assert (await h.client.get(path)).status_code == 401
        other = path.replace("/accounts/acme/", "/accounts/other/")
        r = await h.client.get(other, headers=basic("k_other", "t_other"))
        assert r.status_code == 404
        recording_id = path.rsplit("/", 1)[1].removesuffix(".mp3")
        r = await h.client.post(
            f"/v3/accounts/acme/recordings/{recording_id}/links", headers=h.auth
        )
        link = r.json()["response"]["recording"]["url"]
        signed = "/" + link.split("://", 1)[1].split("/", 1)[1]
        assert (await h.client.get(signed)).status_code == 200
        expired = signed.split("?")[0] + f"?expires={int(time.time()) - 1}&signature=00"
        assert (await h.client.get(expired)).status_code == 404
        tampered = signed.replace("signature=", "signature=0")
        assert (await h.client.get(tampered)).status_code == 404
