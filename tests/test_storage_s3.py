"""The S3 store against a real S3 HTTP endpoint on loopback: upload after each call,
never lose a transcript (endpoint down, restarts, corrupt spool files), exactly once."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.s3 import MotoS3, record, running_moto, versions, wait_until
from tests.servers import free_port
from voicebridge.settings import StorageSettings
from voicebridge.storage.base import BackgroundDelivery, StorageError, TranscriptNotFound
from voicebridge.storage.s3 import S3TranscriptStore
from voicebridge.storage.s3client import s3_client
from voicebridge.storage.uploader import Backoff

pytest_plugins = ["tests.s3_fixtures"]
pytestmark = pytest.mark.usefixtures("aws_environment")

FAST = Backoff(first_s=0.01, max_s=0.05)
KEY = "transcripts/2026/03/14/CA00000000000000000000000000000001.json"


@pytest.fixture
def make_store(
    storage_settings: Callable[..., StorageSettings],
) -> Iterator[Callable[..., S3TranscriptStore]]:
    """Stores over the test bucket; each is closed at the end, whatever the test did."""
    stores: list[S3TranscriptStore] = []

    def make(**overrides: object) -> S3TranscriptStore:
        settings = storage_settings(**overrides)
        assert settings.transcripts_bucket is not None
        store = S3TranscriptStore(
            s3_client(settings),
            settings.transcripts_bucket,
            settings.transcript_spool_dir,
            backoff=FAST,
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close(0)


def test_a_saved_call_is_uploaded_with_metadata_and_a_text_rendering(
    make_store: Callable[..., S3TranscriptStore], moto: MotoS3, bucket: str
) -> None:
    store = make_store()
    assert isinstance(store, BackgroundDelivery)
    store.start()
    assert store.save(record()) == f"s3://{bucket}/{KEY}"
    wait_until(lambda: store.stats.uploaded == 1)

    client = moto.client()
    stored = client.get_object(Bucket=bucket, Key=KEY)
    assert stored["ContentType"] == "application/json"
    assert json.loads(stored["Body"].read()) == record()
    assert stored["Metadata"] == {
        "call-sid": "CA00000000000000000000000000000001",
        "started-at": "2026-03-14T09:26:53.589Z",
        "direction": "inbound",
        "from": "+15550001111",
        "to": "+15550002222",
        "duration-s": "42.5",
        "turns": "3",
    }
    text = client.get_object(Bucket=bucket, Key=KEY.replace(".json", ".txt"))
    assert text["ContentType"].startswith("text/plain")
    body = text["Body"].read().decode()
    assert "[00:02.1] Caller: I'd like a table for two." in body
    assert "[interrupted: heard 0.9 s of 2.3 s]" in body
    assert store.stats.pending == 0
    assert store.get("CA00000000000000000000000000000001") == record()
    assert store.close(1.0)


def test_saving_only_spools_and_never_waits_for_the_network(
    make_store: Callable[..., S3TranscriptStore], moto: MotoS3, bucket: str, tmp_path: Path
) -> None:
    port = free_port()
    store = make_store(aws_endpoint_url_s3=f"http://127.0.0.1:{port}")
    store.save(record())  # not started: nothing may be sent yet
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [
        "CA00000000000000000000000000000001.json"
    ]
    assert store.stats.pending == 1
    assert versions(moto.client(), bucket, KEY) == 0


def test_endpoint_down_when_the_call_ends_then_back_delivers_exactly_once(
    make_store: Callable[..., S3TranscriptStore],
    moto: MotoS3,
    bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    store = make_store(aws_endpoint_url_s3=f"http://127.0.0.1:{port}")
    store.start()
    store.save(record())
    wait_until(lambda: store.stats.failed_attempts >= 3)
    stats = store.stats
    assert (stats.uploaded, stats.pending) == (0, 1)
    assert stats.last_error is not None and "cannot reach the storage endpoint" in stats.last_error
    assert "upload of transcript CA00000000000000000000000000000001 failed" in caplog.text

    with running_moto(port):  # the endpoint is back, with the same buckets
        wait_until(lambda: store.stats.uploaded == 1)
        time.sleep(0.2)  # several more retry periods: nothing is uploaded twice
        client = moto.client()
        for key in (KEY, KEY.replace(".json", ".txt")):
            assert versions(client, bucket, key) == 1
        assert store.stats.pending == 0
        assert store.stats.last_error is None
        assert store.close(1.0)


def test_a_restart_while_the_endpoint_is_down_still_delivers(
    make_store: Callable[..., S3TranscriptStore], moto: MotoS3, bucket: str, tmp_path: Path
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    first = make_store(aws_endpoint_url_s3=endpoint)
    first.start()
    first.save(record())
    wait_until(lambda: first.stats.failed_attempts >= 1)
    started = time.monotonic()
    assert not first.close(0.2), "the flush cannot succeed while the endpoint is down"
    assert time.monotonic() - started < 1.5, "the shutdown flush is bounded"
    assert (tmp_path / "spool" / "CA00000000000000000000000000000001.json").is_file()

    with running_moto(port):
        second = make_store(aws_endpoint_url_s3=endpoint)  # the next run, same spool
        assert second.stats.pending == 1
        second.start()
        wait_until(lambda: second.stats.uploaded == 1)
        assert versions(moto.client(), bucket, KEY) == 1
        assert second.close(1.0)
    assert not any((tmp_path / "spool").glob("*.json"))


def test_shutdown_flushes_what_is_pending(
    make_store: Callable[..., S3TranscriptStore], moto: MotoS3, bucket: str
) -> None:
    store = make_store()
    for n in range(5):
        store.save(record(call_sid=f"CA{n:032d}"))
    store.start()
    assert store.close(5.0)
    listing = moto.client().list_objects_v2(Bucket=bucket, Prefix="transcripts/2026/")
    assert len(listing["Contents"]) == 10  # .json and .txt per call


def test_a_corrupt_spool_file_is_set_aside_and_the_rest_delivered(
    make_store: Callable[..., S3TranscriptStore],
    moto: MotoS3,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "CAtruncated.json").write_bytes(b'{"call_sid": "CAtruncated", "sta')
    (spool / "CAlist.json").write_text("[1, 2]")
    (spool / "CAnodate.json").write_text(json.dumps(record(call_sid="CAnodate", started_at="?")))
    (spool / ".CAcrashed.json.abc123.tmp").write_text("{")  # a crash mid-write
    store = make_store()
    store.save(record())
    caplog.set_level(logging.INFO, logger="voicebridge.transcripts")

    store.start()
    wait_until(lambda: store.stats.uploaded == 1 and store.stats.corrupt == 3)
    assert sorted(p.name for p in (spool / "corrupt").iterdir()) == [
        "CAlist.json",
        "CAnodate.json",
        "CAtruncated.json",
    ]
    assert sorted(p.name for p in spool.iterdir()) == ["corrupt"]
    assert "corrupt spool file for CAtruncated moved to" in caplog.text
    assert versions(moto.client(), bucket, KEY) == 1
    assert store.stats.pending == 0


def test_the_same_call_saved_twice_is_one_transcript(
    make_store: Callable[..., S3TranscriptStore], moto: MotoS3, bucket: str
) -> None:
    store = make_store()
    store.start()
    store.save(record())
    store.save(record())
    assert store.close(5.0)
    listing = moto.client().list_objects_v2(Bucket=bucket, Prefix="transcripts/2026/")
    assert [item["Key"] for item in listing["Contents"]] == [KEY, KEY.replace(".json", ".txt")]


def test_reading_errors_are_one_readable_line(
    make_store: Callable[..., S3TranscriptStore], moto: MotoS3
) -> None:
    with pytest.raises(TranscriptNotFound, match="no transcript for call CAnope"):
        make_store().get("CAnope")
    with pytest.raises(TranscriptNotFound):
        make_store().get("../../etc/passwd")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        make_store(transcripts_bucket="no-such-bucket").calls()
    port = free_port()
    with pytest.raises(StorageError, match=f"cannot reach the storage endpoint .*:{port}"):
        make_store(aws_endpoint_url_s3=f"http://127.0.0.1:{port}").calls()
    moto.set_auth(enforced=True)
    try:
        with pytest.raises(StorageError, match="rejected the credentials"):
            make_store().calls()
    finally:
        moto.set_auth(enforced=False)


def test_retention_keeps_the_bucket_s_other_lifecycle_rules(
    make_store: Callable[..., S3TranscriptStore], moto: MotoS3, bucket: str
) -> None:
    client = moto.client()
    other = {
        "ID": "logs",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 7},
    }
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [other]}
    )
    store = make_store()
    assert store.retention() is None
    store.set_retention(30)
    store.set_retention(90)
    assert store.retention() == 90
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert sorted(rule["ID"] for rule in rules) == ["logs", "voicebridge-transcripts"]
    store.set_retention(None)
    assert store.retention() is None
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [rule["ID"] for rule in rules] == ["logs"]


def test_a_spool_that_cannot_be_written_falls_back_to_a_direct_upload(
    make_store: Callable[..., S3TranscriptStore],
    moto: MotoS3,
    bucket: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "not-a-directory").write_text("")
    store = make_store(transcript_spool_dir=tmp_path / "not-a-directory")
    assert store.save(record()) == f"s3://{bucket}/{KEY}"
    assert versions(moto.client(), bucket, KEY) == 1
    with pytest.raises(StorageError, match="cannot use the spool directory"):
        store.start()
