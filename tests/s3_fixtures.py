"""Fixtures around the loopback S3 endpoint, loaded by the storage tests as a plugin
(`pytest_plugins = ["tests.s3_fixtures"]`); they also use `aws_environment` for every
test (`pytestmark`). Moto keeps its buckets in process memory, so a second server
started later on another port (an endpoint "coming back") serves the same buckets.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.s3 import REGION, MotoS3, running_moto
from voicebridge.settings import StorageSettings, load_storage_settings

_buckets = itertools.count(1)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoS3]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with running_moto() as server:
        yield server


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials, no retries inside boto3, nothing from the developer's own
    AWS configuration or `.env`."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("TRANSCRIPTS_BUCKET", "BUCKET_NAME", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def bucket(moto: MotoS3, aws_environment: None) -> str:
    """A fresh, versioned bucket: every PUT leaves a version, so tests count uploads."""
    name = f"calls-{next(_buckets)}"
    client = moto.client()
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def storage_settings(moto: MotoS3, bucket: str, tmp_path: Path) -> Callable[..., StorageSettings]:
    def make(**overrides: Any) -> StorageSettings:
        values: dict[str, Any] = {
            "transcripts_bucket": bucket,
            "aws_endpoint_url_s3": moto.endpoint,
            "aws_region": REGION,
            "s3_addressing_style": "path",
            "transcript_spool_dir": tmp_path / "spool",
            "transcripts_dir": tmp_path / "transcripts",
            "_env_file": None,
        }
        values.update(overrides)
        return load_storage_settings(**values)

    return make
