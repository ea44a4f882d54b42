"""No silent loss: a transcript that can be neither stored nor spooled (full disk, bucket
down) waits in memory, is retried, shows in /healthz and /metrics, and is delivered
exactly once when the disk or the bucket comes back; past the memory bound, or still
undelivered at shutdown, it is counted and logged as lost. The disk is a real tmpfs
that fills (`tests.faults.disk`), the bucket a real S3 server that is stopped."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.realtime import RealtimeDouble
from tests.faults.disk import SmallDisk, small_disk
from tests.s3 import MotoS3, record, running_moto, versions
from tests.servers import RunningServer, free_port, serve
from tests.test_call_end_to_end import call
from tests.test_status import EXPECTED, completed
from tests.test_storage_app import bucket_settings, eventually, health
from tests.twilio import post_webhook
from voicebridge.main import create_app
from voicebridge.settings import Settings
from voicebridge.storage.base import StorageError
from voicebridge.storage.fallback import MemoryFallback
from voicebridge.storage.local import LocalTranscriptStore
from voicebridge.storage.s3 import S3TranscriptStore
from voicebridge.storage.s3client import s3_client
from voicebridge.storage.uploader import Backoff

pytest_plugins = ["tests.s3_fixtures"]
pytestmark = pytest.mark.usefixtures("aws_environment")
__all__ = ["bucket_settings", "small_disk"]  # fixtures, used by name

FAST = Backoff(first_s=0.02, max_s=0.1)
NEVER = Backoff(first_s=3600.0, max_s=3600.0)  # no retry but the shutdown's


async def metrics(server: RunningServer) -> dict[str, float]:
    """The scrape's samples by name, after checking it parses as a Prometheus
    exposition that declares each metric once."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.http_url}/metrics")
    response.raise_for_status()
    families = list(text_string_to_metric_families(response.text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), f"declared twice: {names}"
    return {sample.name: sample.value for family in families for sample in family.samples}


def bucket_store(settings: Settings, backoff: Backoff = FAST) -> MemoryFallback:
    """The server's store (`serving_store`) with test-speed retries."""
    assert settings.transcripts_bucket is not None
    store = S3TranscriptStore(
        s3_client(settings),
        settings.transcripts_bucket,
        settings.transcript_spool_dir,
        backoff=FAST,
    )
    return MemoryFallback(store, backoff=backoff)


async def hang_up_a_call(server: RunningServer, realtime: RealtimeDouble) -> str:
    async with await call(server) as caller:
        await realtime.wait_for(lambda: realtime.sessions, timeout=5)
        await caller.hang_up()
    return caller.call_sid


async def assert_held_in_memory(server: RunningServer, call_sid: str) -> None:
    store: MemoryFallback = server.app.state.services.store
    await eventually(lambda: store.stats.in_memory == 1)
    transcripts = (await health(server))["transcripts"]
    assert (transcripts["in_memory"], transcripts["pending"], transcripts["lost"]) == (1, 0, 0)
    assert transcripts["last_error"].startswith(f"{call_sid}: ")
    scraped = await metrics(server)
    assert scraped["voicebridge_transcripts_in_memory"] == 1
    assert scraped["voicebridge_transcripts_lost_total"] == 0
    assert scraped["voicebridge_transcript_upload_failures_total"] >= 1


def bucket_down_and_disk_full(
    bucket_settings: Callable[..., Settings], small_disk: SmallDisk
) -> tuple[Settings, MemoryFallback, int, Path]:
    """A bucket store whose endpoint is a closed port and whose spool is on a full disk:
    the port (to bring the bucket up on later) and the spool come back with it."""
    port = free_port()
    spool = small_disk.root / "spool"
    spool.mkdir()
    settings = bucket_settings(
        aws_endpoint_url_s3=f"http://127.0.0.1:{port}", transcript_spool_dir=spool
    )
    store = bucket_store(settings)
    small_disk.fill()
    return settings, store, port, spool


async def test_disk_full_and_bucket_down_then_disk_freed_then_bucket_back(
    realtime: RealtimeDouble,
    bucket_settings: Callable[..., Settings],
    moto: MotoS3,
    bucket: str,
    small_disk: SmallDisk,
) -> None:
    settings, store, port, spool = bucket_down_and_disk_full(bucket_settings, small_disk)
    async with serve(create_app(settings, store)) as server:
        call_sid = await hang_up_a_call(server, realtime)
        await assert_held_in_memory(server, call_sid)

        small_disk.free()  # the next retry spools it: on disk, waiting for the bucket
        await eventually(lambda: (store.stats.in_memory, store.stats.pending) == (0, 1))
        assert (spool / f"{call_sid}.json").is_file()

        with running_moto(port):
            await eventually(lambda: store.stats.pending == 0)
            transcripts = (await health(server))["transcripts"]
            scraped = await metrics(server)
    assert transcripts.pop("failed_attempts") >= 2, "the save, then the spooled upload"
    assert transcripts == {
        "uploaded": 1,
        "pending": 0,
        "in_memory": 0,
        "lost": 0,
        "corrupt": 0,
        "last_error": None,
    }
    assert scraped["voicebridge_transcripts_in_memory"] == 0
    assert scraped["voicebridge_transcript_uploads_total"] == 1
    assert versions(moto.client(), bucket, f"transcripts/by-call/{call_sid}") == 1


async def test_disk_full_and_bucket_down_then_bucket_back_uploads_from_memory(
    realtime: RealtimeDouble,
    bucket_settings: Callable[..., Settings],
    moto: MotoS3,
    bucket: str,
    small_disk: SmallDisk,
) -> None:
    settings, store, port, spool = bucket_down_and_disk_full(bucket_settings, small_disk)
    async with serve(create_app(settings, store)) as server:
        call_sid = await hang_up_a_call(server, realtime)
        await assert_held_in_memory(server, call_sid)

        with running_moto(port):  # the disk is still full: the retry uploads directly
            await eventually(lambda: store.stats.in_memory == 0)
            transcripts = (await health(server))["transcripts"]
            assert (transcripts["in_memory"], transcripts["last_error"]) == (0, None)
            await asyncio.sleep(0.3)  # many retry periods: nothing goes up twice
            client = moto.client()
            key = client.get_object(Bucket=bucket, Key=f"transcripts/by-call/{call_sid}")
            json_key = key["Body"].read().decode()
            assert versions(client, bucket, json_key) == 1
    assert not list(spool.iterdir())


async def test_the_directory_store_on_a_full_disk_keeps_the_transcript_in_memory(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings], small_disk: SmallDisk
) -> None:
    settings = make_settings(agent_greeting="", transcripts_dir=small_disk.root)
    small_disk.fill()
    async with serve(create_app(settings)) as server:  # the default store and retries
        call_sid = await hang_up_a_call(server, realtime)
        await assert_held_in_memory(server, call_sid)
        response = await post_webhook(server, "/twilio/status", completed(call_sid))
        assert response.status_code == 204, "a status for a held call goes into it"

        small_disk.free()
        await eventually(lambda: any(small_disk.root.rglob(f"{call_sid}.json")))
        transcripts = (await health(server))["transcripts"]
        assert (transcripts["in_memory"], transcripts["lost"]) == (0, 0)
        assert transcripts["last_error"] is None
        assert (await metrics(server))["voicebridge_transcripts_in_memory"] == 0
    (saved,) = small_disk.root.rglob("*.json")
    assert json.loads(saved.read_text())["call_status"] == EXPECTED


async def test_past_the_memory_bound_a_transcript_is_lost_loudly(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    small_disk: SmallDisk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(agent_greeting="", transcripts_dir=small_disk.root)
    store = MemoryFallback(LocalTranscriptStore(small_disk.root), max_bytes=100, backoff=FAST)
    small_disk.fill()
    async with serve(create_app(settings, store)) as server:
        call_sid = await hang_up_a_call(server, realtime)
        await eventually(lambda: store.stats.lost == 1)
        transcripts = (await health(server))["transcripts"]
        assert (transcripts["in_memory"], transcripts["lost"]) == (0, 1)
        assert (await metrics(server))["voicebridge_transcripts_lost_total"] == 1
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    assert f"transcript {call_sid} LOST: it could not be stored" in caplog.text


def test_the_bound_refuses_the_newest_and_keeps_retrying_the_held(
    small_disk: SmallDisk,
) -> None:
    store = MemoryFallback(LocalTranscriptStore(small_disk.root), max_transcripts=2, backoff=FAST)
    store.start()
    small_disk.fill()
    store.save(record(call_sid="CAfirst"))
    store.save(record(call_sid="CAsecond"))
    with pytest.raises(StorageError, match=r"transcript CAthird LOST: .*No space left"):
        store.save(record(call_sid="CAthird"))
    assert (store.stats.in_memory, store.stats.lost) == (2, 1)

    small_disk.free()
    assert store.close(5.0)
    saved = sorted(p.stem for p in small_disk.root.rglob("*.json"))
    assert saved == ["CAfirst", "CAsecond"]
    assert (store.stats.in_memory, store.stats.lost) == (0, 1)


def test_shutdown_tries_memory_once_more_spool_first(
    bucket_settings: Callable[..., Settings], small_disk: SmallDisk
) -> None:
    spool = small_disk.root / "spool"
    spool.mkdir()
    unreachable = f"http://127.0.0.1:{free_port()}"
    store = bucket_store(
        bucket_settings(aws_endpoint_url_s3=unreachable, transcript_spool_dir=spool), NEVER
    )
    store.start()
    small_disk.fill()
    store.save(record())
    assert store.stats.in_memory == 1
    small_disk.free()
    assert not store.close(0.3), "the bucket is down: it stays in the spool"
    assert [p.name for p in spool.glob("*.json")] == ["CA00000000000000000000000000000001.json"]
    assert (store.stats.in_memory, store.stats.lost) == (0, 0)


def test_what_is_still_in_memory_at_shutdown_is_named_as_lost(
    bucket_settings: Callable[..., Settings],
    small_disk: SmallDisk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = small_disk.root / "spool"
    spool.mkdir()
    unreachable = f"http://127.0.0.1:{free_port()}"
    store = bucket_store(
        bucket_settings(aws_endpoint_url_s3=unreachable, transcript_spool_dir=spool), NEVER
    )
    store.start()
    small_disk.fill()
    store.save(record(call_sid="CAone"))
    store.save(record(call_sid="CAtwo"))
    assert not store.close(0.5)
    assert (store.stats.in_memory, store.stats.lost) == (0, 2)
    assert "2 transcript(s) LOST at shutdown" in caplog.text
    assert "CAone, CAtwo" in caplog.text
