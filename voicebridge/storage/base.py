"""The transcript-store interface every backend (local directory, S3) implements.

Two layers: `TranscriptStore` is what the bridge needs after a call (save, get);
`TranscriptArchive` adds what the `voicebridge transcripts` commands need to read calls
back. Both backends implement the archive, so commands never branch on the backend;
the algorithms shared by both (newest-first listing, sync) live in `voicebridge.storage.catalog`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol, runtime_checkable

from voicebridge.storage.summary import Summary  # a summary knows nothing of stores

Record = dict[str, Any]

# Twilio CallSids are `CA` + 32 hex digits; anything path- or glob-like is refused, since
# a CallSid becomes a file name and an object key.
_CALL_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY = re.compile(r"transcripts/(\d{4})/(\d{2})/(\d{2})/([A-Za-z0-9_-]{1,64})\.json")


class TranscriptNotFound(LookupError):
    """No transcript for that CallSid."""

    def __str__(self) -> str:
        return f"no transcript for call {self.args[0]}"


class StorageError(Exception):
    """The store cannot be used (credentials, bucket, endpoint…); `str()` is one line
    that says what to fix."""


@dataclass(frozen=True, slots=True)
class CallRef:
    """A stored call, known from its key alone (no download): its day and CallSid."""

    day: date
    call_sid: str

    @property
    def path(self) -> str:
        """`YYYY/MM/DD/<CallSid>.json`: where the call lives under a directory store's root
        (`TRANSCRIPTS_DIR`); a bucket puts it under `transcripts/` (`key`)."""
        return f"{self.day:%Y/%m/%d}/{self.call_sid}.json"

    @property
    def text_path(self) -> str:
        """The plain-text rendering stored beside the JSON."""
        return self.path.removesuffix(".json") + ".txt"

    @property
    def key(self) -> str:
        return f"transcripts/{self.path}"

    @property
    def text_key(self) -> str:
        return f"transcripts/{self.text_path}"

    @classmethod
    def from_key(cls, key: str) -> CallRef | None:
        """The call a `transcripts/YYYY/MM/DD/<CallSid>.json` key holds; None for others."""
        match = _KEY.fullmatch(key)
        if match is None:
            return None
        year, month, day, call_sid = match.groups()
        try:
            return cls(date(int(year), int(month), int(day)), call_sid)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """Counters of a store that delivers in the background, for /healthz and /metrics."""

    uploaded: int  # transcripts delivered since start-up
    failed_attempts: int  # upload attempts that failed (each is retried)
    pending: int  # transcripts waiting in the spool now
    corrupt: int  # spool files set aside as unreadable since start-up
    last_error: str | None  # the most recent upload failure, None once one succeeds
    in_memory: int = 0  # transcripts neither stored nor spooled, held in memory and retried
    lost: int = 0  # transcripts dropped since start-up: memory full, or still held at shutdown


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

    def record_call_status(self, call_sid: str, facts: dict[str, Any]) -> None:
        """Merge what Twilio told us about a call (final status, answering machine…)
        into its transcript's `call_status`.

        Twilio's callbacks and the media stream may reach different machines, in either
        order, so the store is where they meet: if the transcript exists the facts go
        into it; otherwise they wait in a pending note that `save` folds in.
        """
        ...


class TranscriptArchive(TranscriptStore, Protocol):
    """A store that can also be browsed; errors are `StorageError` with one-line text."""

    def calls(self, since: date | None = None, until: date | None = None) -> list[CallRef]:
        """Every stored call whose day is within the inclusive range, from keys only."""
        ...

    def summary(self, ref: CallRef) -> Summary:
        """What a listing shows about one call, as cheaply as the backend allows."""
        ...

    def fetch(self, ref: CallRef) -> Record:
        """The transcript at a known key."""
        ...

    def url(self, call_sid: str, expires_s: int) -> str:
        """A link that reads one call's transcript (presigned for a bucket)."""
        ...

    def set_retention(self, days: int | None) -> str:
        """Expire transcripts after `days` (None: keep forever); says what was done."""
        ...

    def retention(self) -> int | None:
        """The current expiry in days, or None."""
        ...


@runtime_checkable
class BackgroundDelivery(Protocol):
    """A store whose `save` only queues: the app starts it and flushes it at shutdown."""

    @property
    def stats(self) -> DeliveryStats: ...

    def start(self) -> None:
        """Start delivering, beginning with what earlier runs left behind."""
        ...

    def close(self, timeout_s: float) -> bool:
        """Deliver what is pending for at most `timeout_s`, then stop; True if none is left."""
        ...


def merge_call_status(record: Record, facts: Mapping[str, Any]) -> Record:
    """`record` with `facts` merged into its `call_status` (later facts win).

    The one merge both backends use, for transcripts and for pending notes alike (a
    note is `{"call_sid", "call_status"}`, a record with nothing else yet), so a fact
    lands the same way whichever of the callback and the stream came first.
    """
    status = dict(record.get("call_status") or {})
    status.update(facts)
    return {**record, "call_status": status}


def pending_note(call_sid: str, note: Record | None, facts: Mapping[str, Any]) -> Record:
    """The pending note of a call whose transcript is not stored yet, with `facts` added
    to what an earlier callback left (`note`, None if there was none)."""
    return merge_call_status(note or {"call_sid": call_sid}, facts)


def fold_note(record: Record, note: Record | None) -> Record:
    """`record` with a pending note's facts merged in (unchanged without a note)."""
    if not note:
        return record
    return merge_call_status(record, note.get("call_status") or {})


def check_call_sid(call_sid: str) -> str:
    """`call_sid` if it is safe as a file name and key; else `TranscriptNotFound`."""
    if not _CALL_SID.fullmatch(call_sid):
        raise TranscriptNotFound(call_sid)
    return call_sid


def call_ref(record: Record) -> CallRef:
    """Where a record belongs; raises `ValueError` if it is not a transcript record."""
    if "call_sid" not in record or "started_at" not in record:
        raise ValueError("not a transcript record (no call_sid or started_at)")
    day = date.fromisoformat(str(record["started_at"])[:10])  # ValueError if not a date
    call_sid = str(record["call_sid"])
    if not _CALL_SID.fullmatch(call_sid):
        raise ValueError(f"not a usable CallSid: {call_sid!r}")
    return CallRef(day, call_sid)


def within(day: date, since: date | None, until: date | None) -> bool:
    """Whether `day` is in the inclusive range; an open end is unbounded."""
    return (since is None or day >= since) and (until is None or day <= until)


def transcript_key(record: Record) -> str:
    """`transcripts/YYYY/MM/DD/<CallSid>.json`: lists by date, finds by call.

    Derived from the record's own content only, so saving or uploading the same record
    twice lands on the same name.
    """
    return call_ref(record).key
