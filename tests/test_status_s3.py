"""Status callbacks meet the transcript in the bucket: before the stream ends (a pending
note the upload folds in), while it waits in the spool, and after it was uploaded."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.doubles.realtime import RealtimeDouble
from tests.s3 import MotoS3, record
from tests.servers import serve
from tests.test_call_end_to_end import call
from tests.test_status import EXPECTED, completed
from tests.test_storage_app import bucket_settings, eventually
from tests.test_storage_s3 import make_store
from tests.twilio import post_webhook
from voicebridge.main import create_app
from voicebridge.settings import Settings
from voicebridge.storage.s3 import S3TranscriptStore

pytest_plugins = ["tests.s3_fixtures"]
__all__ = ["bucket_settings", "make_store"]  # fixtures, used by name


def stored(moto: MotoS3, bucket: str, call_sid: str) -> dict[str, Any] | None:
    client = moto.client()
    try:
        key = client.get_object(Bucket=bucket, Key=f"transcripts/by-call/{call_sid}")["Body"]
        body = client.get_object(Bucket=bucket, Key=key.read().decode())["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return dict(json.loads(body))


def keys(moto: MotoS3, bucket: str, prefix: str) -> list[str]:
    listing = moto.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


async def test_status_before_the_stream_ends_is_uploaded_with_the_transcript(
    realtime: RealtimeDouble,
    bucket_settings: Callable[..., Settings],
    moto: MotoS3,
    bucket: str,
) -> None:
    async with serve(create_app(bucket_settings())) as server:
        async with await call(server) as caller:
            await realtime.wait_for(lambda: realtime.sessions, timeout=5)
            response = await post_webhook(server, "/twilio/status", completed(caller.call_sid))
            assert response.status_code == 204
            assert keys(moto, bucket, "transcripts/status/") == [
                f"transcripts/status/{caller.call_sid}.json"
            ]
            await caller.hang_up()
        await eventually(lambda: stored(moto, bucket, caller.call_sid) is not None)
    transcript = stored(moto, bucket, caller.call_sid)
    assert transcript is not None
    assert transcript["call_status"] == EXPECTED
    assert keys(moto, bucket, "transcripts/status/") == []


async def test_status_after_the_upload_is_merged_into_the_bucket_copy(
    realtime: RealtimeDouble,
    bucket_settings: Callable[..., Settings],
    moto: MotoS3,
    bucket: str,
) -> None:
    async with serve(create_app(bucket_settings())) as server:
        async with await call(server) as caller:
            await realtime.wait_for(lambda: realtime.sessions, timeout=5)
            await caller.hang_up()
        await eventually(lambda: stored(moto, bucket, caller.call_sid) is not None)
        response = await post_webhook(server, "/twilio/status", completed(caller.call_sid))
        assert response.status_code == 204
    transcript = stored(moto, bucket, caller.call_sid)
    assert transcript is not None
    assert transcript["call_status"] == EXPECTED
    (json_key,) = (k for k in keys(moto, bucket, "transcripts/2") if k.endswith(".json"))
    text = moto.client().get_object(Bucket=bucket, Key=json_key.replace(".json", ".txt"))
    assert "Twilio: completed · 42 s" in text["Body"].read().decode()
    head = moto.client().head_object(Bucket=bucket, Key=json_key)
    assert head["Metadata"], "the summary metadata was kept"
    assert keys(moto, bucket, "transcripts/status/") == []


def test_status_while_spooled_goes_into_the_spool_file(
    make_store: Callable[..., S3TranscriptStore], moto: MotoS3, bucket: str
) -> None:
    store = make_store()
    transcript = record()
    store.save(transcript)  # not started: stays in the spool
    store.record_call_status(transcript["call_sid"], {"status": "busy", "duration_s": 0})
    assert keys(moto, bucket, "transcripts/") == []
    store.start()
    assert store.close(5.0)
    uploaded = stored(moto, bucket, transcript["call_sid"])
    assert uploaded is not None
    assert uploaded["call_status"] == {"status": "busy", "duration_s": 0}
