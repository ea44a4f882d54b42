"""The boto3 S3 client built from our settings, and botocore errors made readable.

Everything is passed explicitly because boto3 reads only the process environment: a
`.env` file would otherwise be ignored, and boto3 takes the region from
`AWS_DEFAULT_REGION`, not the `AWS_REGION` that Fly's Tigris sets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import SecretStr

from voicebridge.settings import AddressingStyle, StorageSettings
from voicebridge.storage.base import StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_CREDENTIALS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


def s3_client(settings: StorageSettings) -> S3Client:
    """A client for the configured service; thread-safe, so one serves every thread."""
    session = boto3.session.Session(
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=_secret(settings.aws_secret_access_key),
        aws_session_token=_secret(settings.aws_session_token),
    )
    config = Config(
        signature_version="s3v4",  # presigned links on every S3-compatible service
        s3={"addressing_style": addressing_style(settings)},
        # Attempts per request: AWS_MAX_ATTEMPTS (default 3); the spool retries beyond.
        retries={"mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        # boto3 ≥ 1.36 adds CRC checksums that several S3-compatible services reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client(
        "s3",
        endpoint_url=settings.aws_endpoint_url_s3,
        region_name=settings.aws_region,
        config=config,
    )


def addressing_style(settings: StorageSettings) -> AddressingStyle:
    """What `S3_ADDRESSING_STYLE=auto` means here.

    botocore's own `auto` picks path style for every custom endpoint, which Tigris
    refuses for new buckets. So: virtual-hosted (`bucket.host`) for an endpoint with a DNS
    name (Tigris, R2, B2), path style where a bucket cannot go in front of the host (an IP
    address, `localhost`, a single-label name such as a compose service) or would break
    TLS (a bucket name with dots); AWS itself (no endpoint) is left to botocore.
    """
    style = settings.s3_addressing_style
    endpoint = settings.aws_endpoint_url_s3
    if style != "auto" or endpoint is None:
        return style
    host = urlsplit(endpoint).hostname or ""
    bucket = settings.transcripts_bucket or ""
    if "." not in host or "." in bucket or _is_ip(host):
        return "path"
    return "virtual"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_missing(error: ClientError) -> bool:
    """Whether the object (not the bucket) does not exist."""
    code = error.response.get("Error", {}).get("Code", "")
    return code in ("NoSuchKey", "404", "NotFound")


@contextmanager
def readable_errors(client: S3Client, bucket: str) -> Iterator[None]:
    """Turn botocore's exceptions into `StorageError`s whose text says what to fix."""
    endpoint = client.meta.endpoint_url
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise StorageError(f"no storage credentials: set {_CREDENTIALS}") from None
    except (BotoConnectionError, HTTPClientError) as error:
        raise StorageError(f"cannot reach the storage endpoint {endpoint}: {error}") from None
    except ClientError as error:
        raise StorageError(_client_error(error, bucket, endpoint)) from None
    except BotoCoreError as error:
        raise StorageError(f"storage error: {error}") from None


def _client_error(error: ClientError, bucket: str, endpoint: str) -> str:
    details = error.response.get("Error", {})
    code = details.get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist at {endpoint} (check TRANSCRIPTS_BUCKET)"
    if code in _BAD_CREDENTIALS:
        return f"the storage service rejected the credentials ({code}): check {_CREDENTIALS}"
    if code == "AccessDenied" or status == 403:
        return (
            f"access to bucket {bucket!r} denied: check {_CREDENTIALS} "
            "and that the key may read and write this bucket"
        )
    message = details.get("Message") or f"HTTP {status}"
    return f"storage error {code or status} on bucket {bucket!r}: {message}"


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
