"""Recordings as clients fetch them: signed links in call details and in callbacks (minted when
sent, the stored payload keeping the credentialled URL), credentials still working, and `Range`
downloads (206/416) from the data directory and from S3 storage."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from callbridge.clock import ManualClock
from callbridge.settings import Settings
from callbridge.store.repo import Store
from callbridge.store.tables import outbox

from ..conftest import basic
from ..engine.test_callbacks import deliver
from ..harness import ACCOUNT, CUSTOMER, Harness, running_app
from ..v1.support import call_sid, connect
from ..webhooks.helpers import Receiver


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=datetime.now(UTC))


def _path(url: str) -> str:
    """The path and query of an absolute URL, for the in-process client."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def _recorded_v1_call(h: Harness, receiver: Receiver) -> tuple[str, dict[str, object]]:
    h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=3)
    sid = call_sid(
        await connect(
            h,
            Record="true",
            RecordingChannels="dual",
            StatusCallback=receiver.url("/rec"),
            StatusCallbackContentType="application/json",
            **{"StatusCallbackEvents[]": "terminal"},
        )
    )
    await h.advance(10)
    await deliver(h)
    [request] = receiver.requests
    return sid, json.loads(request.body)


async def test_callbacks_and_details_carry_links_that_open_without_credentials(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    async with running_app(store, clock) as h:
        sid, callback = await _recorded_v1_call(h, receiver)
        sent = str(callback["RecordingUrl"])
        query = parse_qs(urlsplit(sent).query)
        assert set(query) == {"expires", "signature"}
        assert 3500 <= int(query["expires"][0]) - time.time() <= 3600
        fetched = await h.client.get(_path(sent))  # no credentials
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "audio/mpeg"
        async with store.read() as conn:
            [stored] = (await conn.execute(select(outbox.c.payload))).scalars()
        credentialled = str(stored["RecordingUrl"])
        assert credentialled == sent.split("?")[0]  # the link is minted at send time only
        assert (await h.client.get(_path(credentialled))).status_code == 401
        opened = await h.client.get(_path(credentialled), headers=h.auth)
        assert opened.content == fetched.content

        v1 = await h.client.get(
            f"/v1/Accounts/{ACCOUNT}/Calls/{sid}.json?RecordingUrlValidity=5", headers=h.auth
        )
        link = v1.json()["Call"]["RecordingUrl"]
        assert v1.json()["Call"]["PreSignedRecordingUrl"] == link
        assert 290 <= int(parse_qs(urlsplit(link).query)["expires"][0]) - time.time() <= 300
        assert (await h.client.get(_path(link))).status_code == 200
        v3_link = (await h.call(sid))["recordings"][0]["url"]
        assert (await h.client.get(_path(v3_link))).status_code == 200


async def test_an_expired_or_forged_link_is_404_but_credentials_still_open_it(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    async with running_app(store, clock) as h:
        sid, _ = await _recorded_v1_call(h, receiver)
        path = _path((await h.call(sid))["recordings"][0]["url"]).split("?")[0]
        expired = f"{path}?expires={int(time.time()) - 1}&signature={'0' * 64}"
        assert (await h.client.get(expired)).status_code == 404
        assert (await h.client.get(expired, headers=h.auth)).status_code == 200
        other = basic("k_other", "t_other")
        foreign = path.replace(f"/accounts/{ACCOUNT}/", "/accounts/other/")
        assert (await h.client.get(foreign, headers=other)).status_code == 404


async def _ranges(h: Harness, path: str) -> None:
    full = await h.client.get(path, headers=h.auth)
    assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes"
    data, size = full.content, len(full.content)
    assert size > 1000
    for header, start, end in [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, size - 1),
        ("bytes=-50", size - 50, size - 1),
        (f"bytes=10-{size * 2}", 10, size - 1),
    ]:
        part = await h.client.get(path, headers={**h.auth, "Range": header})
        assert part.status_code == 206, header
        assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert part.headers["accept-ranges"] == "bytes"
        assert part.headers["content-type"] == "audio/mpeg"
        assert part.content == data[start : end + 1], header
    beyond = await h.client.get(path, headers={**h.auth, "Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert beyond.json()["response"]["error_data"]["code"] == 416
    ignored = await h.client.get(path, headers={**h.auth, "Range": "bytes=0-1,4-5"})
    assert ignored.status_code == 200 and ignored.content == data
    link = _path(
        (await h.client.post(f"{path.removesuffix('.mp3')}/links", headers=h.auth)).json()[
            "response"
        ]["recording"]["url"]
    )
    signed = await h.client.get(link, headers={"Range": "bytes=0-9"})
    assert signed.status_code == 206 and signed.content == data[:10]


async def test_downloads_from_the_data_directory_honour_range(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    async with running_app(store, clock) as h:
        sid, _ = await _recorded_v1_call(h, receiver)
        await _ranges(h, _path((await h.call(sid))["recordings"][0]["url"]).split("?")[0])


async def test_downloads_from_s3_storage_honour_range(
    store: Store, clock: ManualClock, receiver: Receiver, moto_endpoint: str, tmp_path: Path
) -> None:
    from callbridge.media.storage import S3RecordingStorage

    s3 = {"endpoint": moto_endpoint, "bucket": "calls", "region": "us-east-1"}
    async with httpx.AsyncClient() as client:
        await S3RecordingStorage(
            **s3, access_key="testing", secret_key="secret", client=client
        ).create_bucket()
    settings = Settings(
        allow_private_urls=True,
        log_level="WARNING",
        data_dir=tmp_path,
        recordings_s3_endpoint=moto_endpoint,
        recordings_s3_bucket="calls",
        recordings_s3_access_key="testing",
        recordings_s3_secret_key="secret",
    )
    async with running_app(store, clock, settings=settings) as h:
        sid, _ = await _recorded_v1_call(h, receiver)
        assert not (tmp_path / "recordings").exists()  # stored in the bucket, not on disk
        await _ranges(h, _path((await h.call(sid))["recordings"][0]["url"]).split("?")[0])
