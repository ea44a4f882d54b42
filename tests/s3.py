"""A real S3 HTTP endpoint on loopback (moto's standalone server) and helpers around it.

boto3 talks HTTP to the server exactly as it would to Tigris or AWS; nothing in boto3
is mocked. The fixtures are in `tests.s3_fixtures`.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

from voicebridge.storage.base import Record

REGION = "us-east-1"


@dataclass
class MotoS3:
    endpoint: str

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )

    def set_auth(self, enforced: bool) -> None:
        """Make the server check credentials (every key is then unknown) or not."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0" if enforced else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=5):
            pass


@contextlib.contextmanager
def running_moto(port: int = 0) -> Iterator[MotoS3]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    try:
        yield MotoS3(f"http://{host}:{bound}")
    finally:
        server.stop()


def record(
    call_sid: str = "CA00000000000000000000000000000001",
    started_at: str = "2026-03-14T09:26:53.589Z",
    **fields: Any,
) -> Record:
    """A transcript record as the bridge writes it."""
    base: Record = {
        "call_sid": call_sid,
        "stream_sid": "MZ00000000000000000000000000000001",
        "direction": "inbound",
        "from": "+15550001111",
        "to": "+15550002222",
        "started_at": started_at,
        "ended_at": started_at[:-5] + "9.000Z",
        "duration_s": 42.5,
        "turns": [
            {"role": "agent", "text": "Hello, thanks for calling.", "start_ms": 0},
            {"role": "caller", "text": "I'd like a table for two.", "start_ms": 2100},
            {
                "role": "agent",
                "text": "Of course, for what time?",
                "start_ms": 4800,
                "interrupted": True,
                "heard_ms": 900,
                "spoken_ms": 2300,
            },
        ],
        "usage": {"input_tokens": 120, "output_tokens": 340, "responses": 2},
        "notes": [],
    }
    base.update(fields)
    return base


def versions(client: Any, bucket: str, key: str) -> int:
    """How many times `key` was written (the bucket is versioned)."""
    listing = client.list_object_versions(Bucket=bucket, Prefix=key)
    return sum(1 for version in listing.get("Versions", []) if version["Key"] == key)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
