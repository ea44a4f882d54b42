"""Which `.env` entries become Fly secrets, and whether Fly already holds each value.

`.env` is the one place a developer configures VoiceBridge; production takes the same
file, minus what production owns itself: fly.toml's [env], the bucket credentials
`fly storage create` sets, and values that only make sense on a laptop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

# Never staged from .env, and why (the deploy script prints the reason).
NOT_STAGED: dict[str, str] = {
    "PUBLIC_BASE_URL": "production uses the app's own https URL",
    "TRANSCRIPTS_DIR": "a local path; production keeps transcripts in the bucket",
    "TWILIO_API_BASE_URL": "a test override",
    "AWS_ACCESS_KEY_ID": "set by `fly storage create`",
    "AWS_SECRET_ACCESS_KEY": "set by `fly storage create`",
    "AWS_ENDPOINT_URL_S3": "set by `fly storage create`",
    "AWS_REGION": "set by `fly storage create`",
    "BUCKET_NAME": "set by `fly storage create`",
    "AWS_SESSION_TOKEN": "a local credential; the bucket's keys come from `fly storage create`",
    "TRANSCRIPTS_BUCKET": "would override the Tigris bucket (BUCKET_NAME) in production",
    "S3_ADDRESSING_STYLE": "a local S3 server's setting; Tigris is detected",
    "TRANSCRIPT_SPOOL_DIR": "a local path",
    "TRANSCRIPT_RETENTION_DAYS": "applied to the bucket as a lifecycle rule by this script",
}
# Settings of the deploy script itself (FLY_APP, FLY_ORG, …), not of the app.
SCRIPT_PREFIX = "FLY_"


def read_env_file(path: Path) -> dict[str, str]:
    """The `.env` entries with a value, parsed the way the app's settings parse them."""
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


def secrets_to_stage(
    env: Mapping[str, str], *, config_env: Mapping[str, str], public_base_url: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Split `.env` into (secrets for Fly, {skipped name: reason}).

    PUBLIC_BASE_URL is always the production URL: a `.env` written for local
    development points at a tunnel, and Twilio must never be sent there from production.
    """
    secrets: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name, value in env.items():
        if name in NOT_STAGED:
            skipped[name] = NOT_STAGED[name]
        elif name.startswith(SCRIPT_PREFIX):
            skipped[name] = "a deploy-script setting"
        elif name in config_env:
            skipped[name] = "fly.toml [env] sets it for production"
        elif not value.strip():
            skipped[name] = "empty"
        else:
            secrets[name] = value
    secrets["PUBLIC_BASE_URL"] = public_base_url
    return secrets, skipped


def digest_matches(value: str, digest: str | None) -> bool:
    """Whether Fly's digest of a secret is the digest of `value`.

    flyctl lists a digest per secret but does not document how it is computed: it has
    been the MD5 hex of the value; a 16-hex-digit form also exists. Known forms are
    compared; anything else counts as "changed", which only costs a re-stage (staging
    the same value again is harmless), never a missed update.
    """
    if not digest:
        return False
    data = value.encode()
    digest = digest.strip().lower()
    for candidate in (hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()):  # noqa: S324 - matching Fly's digest, not protecting anything
        if digest == candidate or (len(digest) >= 16 and candidate.startswith(digest)):
            return True
    return False


def changed_secrets(desired: Mapping[str, str], digests: Mapping[str, str]) -> dict[str, str]:
    """The secrets Fly lacks or holds with another value."""
    return {
        name: value
        for name, value in desired.items()
        if not digest_matches(value, digests.get(name))
    }
