"""Storage settings: Fly's variable names, explicit region and addressing, the backend
they select."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebridge.settings import load_storage_settings
from voicebridge.storage.factory import open_store
from voicebridge.storage.local import LocalTranscriptStore
from voicebridge.storage.s3 import S3TranscriptStore
from voicebridge.storage.s3client import addressing_style

pytest_plugins = ["tests.s3_fixtures"]
pytestmark = pytest.mark.usefixtures("aws_environment")


def test_fly_s_bucket_name_is_used_unless_transcripts_bucket_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BUCKET_NAME", "fly-tigris-bucket")
    assert load_storage_settings(_env_file=None).transcripts_bucket == "fly-tigris-bucket"
    monkeypatch.setenv("TRANSCRIPTS_BUCKET", "chosen-bucket")
    assert load_storage_settings(_env_file=None).transcripts_bucket == "chosen-bucket"


def test_without_a_bucket_the_store_is_the_local_directory(tmp_path: Path) -> None:
    store = open_store(load_storage_settings(transcripts_dir=tmp_path, _env_file=None))
    assert isinstance(store, LocalTranscriptStore)
    assert store.root == tmp_path


def test_the_bucket_store_gets_region_endpoint_and_addressing_explicitly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")  # what boto3 alone would read
    for name, value in {
        "BUCKET_NAME": "fly-tigris-bucket",
        "AWS_ENDPOINT_URL_S3": "https://fly.storage.tigris.dev/",
        "AWS_REGION": "auto",
        "S3_ADDRESSING_STYLE": "virtual",
    }.items():
        monkeypatch.setenv(name, value)
    store = open_store(load_storage_settings(_env_file=None))
    assert isinstance(store, S3TranscriptStore)
    assert store.bucket == "fly-tigris-bucket"
    assert store.client.meta.region_name == "auto"
    assert store.client.meta.endpoint_url == "https://fly.storage.tigris.dev"
    assert store.client.meta.config.s3 == {"addressing_style": "virtual"}


@pytest.mark.parametrize(
    ("endpoint", "bucket", "style"),
    [
        ("https://fly.storage.tigris.dev", "calls", "virtual"),
        ("https://0123abc.r2.cloudflarestorage.com", "calls", "virtual"),
        ("https://fly.storage.tigris.dev", "calls.example.com", "path"),
        ("http://localhost:9000", "calls", "path"),
        ("http://minio:9000", "calls", "path"),
        ("http://127.0.0.1:9000", "calls", "path"),
        ("http://[::1]:9000", "calls", "path"),
        (None, "calls", "auto"),
    ],
)
def test_auto_addressing_puts_the_bucket_in_the_host_name_where_it_can(
    endpoint: str | None, bucket: str, style: str
) -> None:
    settings = load_storage_settings(
        transcripts_bucket=bucket, aws_endpoint_url_s3=endpoint, _env_file=None
    )
    assert addressing_style(settings) == style
    explicit = load_storage_settings(
        transcripts_bucket=bucket,
        aws_endpoint_url_s3=endpoint,
        s3_addressing_style="virtual",
        _env_file=None,
    )
    assert addressing_style(explicit) == "virtual"
