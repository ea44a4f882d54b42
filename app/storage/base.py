"""The transcript-store interface every backend (local directory, S3) implements."""

from __future__ import annotations

from typing import Any, Protocol

Record = dict[str, Any]


class TranscriptNotFound(LookupError):
    """No transcript for that CallSid."""


class TranscriptStore(Protocol):
    """Where finished calls' transcripts go.

    Methods are blocking: the bridge calls them off the event loop (`asyncio.to_thread`)
    so storage never touches the audio path.
    """

    def save(self, record: Record) -> str:
        """Store a finished call's transcript; returns where it went."""
        ...

    def get(self, call_sid: str) -> Record:
        """The transcript of one call; raises `TranscriptNotFound`."""
        ...


def transcript_key(record: Record) -> str:
    """`transcripts/YYYY/MM/DD/<CallSid>.json`: lists by date, finds by call."""
    day = str(record["started_at"])[:10].replace("-", "/")
    return f"transcripts/{day}/{record['call_sid']}.json"
