"""Which store the settings ask for: the bucket when one is named, else the directory."""

from __future__ import annotations

from voicebridge.settings import StorageSettings
from voicebridge.storage.base import TranscriptArchive
from voicebridge.storage.fallback import MemoryFallback
from voicebridge.storage.local import LocalTranscriptStore


def open_store(settings: StorageSettings) -> TranscriptArchive:
    """The configured store, not yet started (the app starts a bucket store's uploader;
    the CLI only reads, so it never does)."""
    if settings.transcripts_bucket is None:
        return LocalTranscriptStore(settings.transcripts_dir)
    # Imported here so a local-only setup never loads boto3.
    from voicebridge.storage.s3 import S3TranscriptStore
    from voicebridge.storage.s3client import s3_client

    return S3TranscriptStore(
        s3_client(settings), settings.transcripts_bucket, settings.transcript_spool_dir
    )


def serving_store(settings: StorageSettings) -> MemoryFallback:
    """The configured store as the server uses it: a transcript it cannot take (full
    disk, bucket down) waits in memory and is retried, never silently dropped."""
    return MemoryFallback(open_store(settings))
