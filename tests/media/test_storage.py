"""Recording storage: local files, retention, signed links, and S3 (SigV4) against moto's server."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest.mock import patch

import httpx
import pytest

from callbridge.media.storage import (
    LocalRecordingStorage,
    S3RecordingStorage,
    StorageError,
    link_expiry,
    purge_expired,
    sign_link,
    sigv4_headers,
    verify_link,
)


async def test_local_save_read_delete(tmp_path: Path) -> None:
    storage = LocalRecordingStorage(tmp_path)
    await storage.save("acme", "rec1", b"ID3mp3")
    path = tmp_path / "recordings" / "acme" / "rec1.mp3"
    assert path.read_bytes() == b"ID3mp3"
    await storage.save("acme", "rec1", b"second")
    assert await storage.read("acme", "rec1") == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["rec1.mp3"]  # no temp files left
    assert await storage.read("other", "rec1") is None
    assert await storage.delete("acme", "rec1") is True
    assert await storage.delete("acme", "rec1") is False


@pytest.mark.parametrize(
    ("account", "rec"), [("../etc", "x"), ("acme", "a/b"), ("acme", ""), ("a.b", "x")]
)
async def test_ids_that_could_escape_the_directory_are_refused(
    tmp_path: Path, account: str, rec: str
) -> None:
    with pytest.raises(StorageError):
        await LocalRecordingStorage(tmp_path).save(account, rec, b"x")


async def test_retention_deletes_only_old_files(tmp_path: Path) -> None:
    storage = LocalRecordingStorage(tmp_path)
    now = datetime.now(UTC)
    await storage.save("acme", "old", b"1")
    await storage.save("acme", "new", b"2")
    old = (now - timedelta(days=10)).timestamp()
    os.utime(storage.path_for("acme", "old"), (old, old))
    assert await purge_expired(storage, retention_days=0, now=now) == 0
    assert await purge_expired(storage, retention_days=7, now=now) == 1
    assert await storage.read("acme", "old") is None
    assert await storage.read("acme", "new") == b"2"


def test_signed_links_verify_until_expiry_and_reject_tampering() -> None:
    key = b"k" * 32
    expires = link_expiry(60, now=1000.0)
    assert expires == 1060
    sig = sign_link("rec1", expires, key)
    assert len(sig) == 64
    assert verify_link("rec1", expires, sig, key, now=1059.0)
    assert not verify_link("rec1", expires, sig, key, now=1060.0)
    assert not verify_link("rec2", expires, sig, key, now=1000.0)
    assert not verify_link("rec1", expires + 1, sig, key, now=1000.0)
    assert not verify_link("rec1", expires, sig, b"other", now=1000.0)
    assert not verify_link("rec1", expires, "zz\u00e9", key, now=1000.0)


def test_sigv4_matches_botocore() -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    when = datetime(2026, 1, 15, 6, 30, 0, tzinfo=UTC)
    url = "http://127.0.0.1:9000/bucket/recordings/acme/r%201.mp3?list-type=2&prefix=recordings%2F"
    payload = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    ours = sigv4_headers(
        method="GET",
        url=url,
        region="ap-south-1",
        access_key="AK",
        secret_key="SK",
        payload_sha256=payload,
        now=when,
    )
    request = AWSRequest(method="GET", url=url, headers={"x-amz-content-sha256": payload})
    signer = S3SigV4Auth(Credentials("AK", "SK"), "s3", "ap-south-1")
    with patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        signer.add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]


async def test_s3_storage_round_trip_and_purge(moto_endpoint: str) -> None:
    import boto3

    async with httpx.AsyncClient() as client:
        storage = S3RecordingStorage(
            endpoint=moto_endpoint,
            bucket="recs",
            region="us-east-1",
            access_key="testing",
            secret_key="secret-value",
            client=client,
        )
        assert "secret-value" not in repr(storage)
        await storage.create_bucket()
        await storage.save("acme", "rec1", b"ID3-one")
        await storage.save("acme", "rec2", b"ID3-two")
        assert await storage.read("acme", "rec1") == b"ID3-one"
        assert await storage.read("acme", "nope") is None
        s3 = boto3.client(
            "s3",
            endpoint_url=moto_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="secret-value",
        )
        body = s3.get_object(Bucket="recs", Key="recordings/acme/rec2.mp3")["Body"].read()
        assert body == b"ID3-two"
        assert await storage.delete("acme", "rec1") is True
        assert await storage.delete("acme", "rec1") is False
        past = datetime.now(UTC) - timedelta(days=1)
        assert await storage.purge_older_than(past) == 0
        assert await storage.purge_older_than(datetime.now(UTC) + timedelta(days=1)) == 1
        assert await storage.read("acme", "rec2") is None
