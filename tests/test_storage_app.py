"""The app with a bucket configured: a real call through uvicorn ends up in the bucket,
leftovers are uploaded at start-up, shutdown flushes with a bounded wait, /healthz
shows the delivery counters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.doubles.realtime import RealtimeDouble
from tests.s3 import MotoS3, record, versions
from tests.servers import RunningServer, free_port, serve
from tests.test_call_end_to_end import call
from voicebridge.main import create_app
from voicebridge.settings import Settings
from voicebridge.storage.spool import Spool

pytest_plugins = ["tests.s3_fixtures"]
pytestmark = pytest.mark.usefixtures("aws_environment")


@pytest.fixture
def bucket_settings(
    make_settings: Callable[..., Settings], moto: MotoS3, bucket: str, tmp_path: Path
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "agent_greeting": "",
            "transcripts_bucket": bucket,
            "aws_endpoint_url_s3": moto.endpoint,
            "aws_region": "us-east-1",
            "s3_addressing_style": "path",
            "transcript_spool_dir": tmp_path / "spool",
            **overrides,
        }
        return make_settings(**values)

    return make


async def health(server: RunningServer) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.http_url}/healthz")
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_finished_call_is_uploaded_to_the_bucket(
    realtime: RealtimeDouble,
    bucket_settings: Callable[..., Settings],
    moto: MotoS3,
    bucket: str,
) -> None:
    client = moto.client()
    async with serve(create_app(bucket_settings())) as server:
        async with await call(server) as caller:
            await realtime.wait_for(lambda: realtime.sessions, timeout=5)
            await caller.pause(0.2)
            await caller.hang_up()
        key = f"transcripts/by-call/{caller.call_sid}"
        await eventually(lambda: versions(client, bucket, key) == 1)
        transcripts = (await health(server))["transcripts"]
        assert transcripts == {
            "uploaded": 1,
            "failed_attempts": 0,
            "pending": 0,
            "corrupt": 0,
            "last_error": None,
            "in_memory": 0,
            "lost": 0,
        }
    json_key = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    stored = json.loads(client.get_object(Bucket=bucket, Key=json_key)["Body"].read())
    assert stored["call_sid"] == caller.call_sid
    assert stored["from"] == "+15550001111"


async def test_leftovers_go_up_at_start_and_shutdown_waits_a_bounded_time(
    bucket_settings: Callable[..., Settings], moto: MotoS3, bucket: str, tmp_path: Path
) -> None:
    Spool(tmp_path / "spool").put(record(call_sid="CAleftover"))
    async with serve(create_app(bucket_settings())) as server:
        await eventually(lambda: versions(moto.client(), bucket, _key("CAleftover")) == 1)
        assert (await health(server))["transcripts"]["pending"] == 0

    Spool(tmp_path / "spool").put(record(call_sid="CAstranded"))
    unreachable = f"http://127.0.0.1:{free_port()}"
    settings = bucket_settings(aws_endpoint_url_s3=unreachable, transcript_flush_timeout_s=0.5)
    async with serve(create_app(settings)) as server:
        await eventually(lambda: _failures(server) >= 1)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 3, "shutdown waited for the flush, but boundedly"
    assert (tmp_path / "spool" / "CAstranded.json").is_file(), "kept for the next start"


def _key(call_sid: str) -> str:
    return f"transcripts/2026/03/14/{call_sid}.json"


def _failures(server: RunningServer) -> int:
    failed: int = server.app.state.services.store.stats.failed_attempts
    return failed
