"""The last resort: transcripts the store could not take wait in memory and are retried.

A store's `save` fails when it can write nowhere: the directory store on a full disk,
the bucket store when its spool's disk is full *and* the bucket is unreachable. The
server then keeps the transcript here, as its JSON bytes (so the bound below is what it
really costs), and offers it to the store again with exponential backoff from its own
thread: the store spools it if the disk has room again, else uploads it. Until then
/healthz and /metrics count it as `in_memory`.

Memory is bounded (`MAX_TRANSCRIPTS`, `MAX_BYTES`): a transcript beyond the bound is
refused, counted as `lost`, and `save` raises, so the caller logs it as an error. At
shutdown what is still here is tried once more within the flush timeout; whatever is
then still undelivered is logged as lost by CallSid.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from typing import Any

from voicebridge.logs import call_sid_var
from voicebridge.storage.base import (
    BackgroundDelivery,
    DeliveryStats,
    Record,
    StorageError,
    TranscriptStore,
    call_ref,
    merge_call_status,
)
from voicebridge.storage.local import encode_record
from voicebridge.storage.uploader import Backoff

log = logging.getLogger("voicebridge.transcripts")

# A 10-minute call's transcript is about 14 kB of JSON, so 1000 of them take 14 MB; the
# byte bound caps longer calls at under 2% of a 2 GB VM.
MAX_TRANSCRIPTS = 1000
MAX_BYTES = 32 * 1024 * 1024
# A local write is cheap to retry; a minute at most keeps recovery prompt once the disk
# or the bucket is back.
RETRY = Backoff(first_s=1.0, max_s=60.0)

_NO_DELIVERY = DeliveryStats(uploaded=0, failed_attempts=0, pending=0, corrupt=0, last_error=None)


class MemoryFallback:
    """Wraps the server's store: what `save` cannot store is held in memory and retried.

    Holding starts with `start` and ends with `close`: a process without the retry
    thread (the CLI) gets the store's own errors, never a promise nobody keeps.
    """

    def __init__(
        self,
        store: TranscriptStore,
        *,
        max_transcripts: int = MAX_TRANSCRIPTS,
        max_bytes: int = MAX_BYTES,
        backoff: Backoff = RETRY,
    ) -> None:
        self.store = store
        self._max_transcripts = max_transcripts
        self._max_bytes = max_bytes
        self._backoff = backoff
        self._lock = threading.Lock()  # guards everything below
        self._held: dict[str, bytes] = {}  # CallSid -> record JSON, oldest first
        self._bytes = 0
        self._failed_attempts = 0
        self._lost = 0
        self._last_error: str | None = None
        self._work = threading.Event()  # set while something is held (or closing)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- TranscriptStore ---

    def save(self, record: Record) -> str:
        """The store's `save`; while the server runs, a failure holds the record here."""
        try:
            return self.store.save(record)
        except Exception as error:
            if self._thread is None or self._stop.is_set():
                raise
            return self._hold(record, error)

    def get(self, call_sid: str) -> Record:
        with self._lock:
            data = self._held.get(call_sid)
        return json.loads(data) if data is not None else self.store.get(call_sid)

    def record_call_status(self, call_sid: str, facts: dict[str, Any]) -> None:
        """Into the held transcript if the call waits here, else to the store."""
        with self._lock:
            data = self._held.get(call_sid)
            if data is not None:
                updated = encode_record(merge_call_status(json.loads(data), facts))
                self._held[call_sid] = updated
                self._bytes += len(updated) - len(data)
                return
        self.store.record_call_status(call_sid, facts)

    # --- BackgroundDelivery ---

    @property
    def stats(self) -> DeliveryStats:
        inner = self.store.stats if isinstance(self.store, BackgroundDelivery) else _NO_DELIVERY
        with self._lock:
            return replace(
                inner,
                failed_attempts=inner.failed_attempts + self._failed_attempts,
                in_memory=len(self._held),
                lost=self._lost,
                last_error=self._last_error or inner.last_error,
            )

    def start(self) -> None:
        if isinstance(self.store, BackgroundDelivery):
            self.store.start()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="transcript-memory-retry", daemon=True
            )
            self._thread.start()

    def close(self, timeout_s: float) -> bool:
        """Try what is held once more (the store spools it, or uploads it), then let the
        store flush, all within `timeout_s`; True if nothing is left undelivered."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._work.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._retry(deadline)
        with self._lock:
            lost = list(self._held)
            self._lost += len(lost)
            self._held.clear()
            self._bytes = 0
        if lost:
            log.error(
                "%d transcript(s) LOST at shutdown, neither stored, spooled nor uploaded: %s",
                len(lost),
                ", ".join(lost),
            )
        flushed = True
        if isinstance(self.store, BackgroundDelivery):
            flushed = self.store.close(max(0.0, deadline - time.monotonic()))
        return flushed and not lost

    # --- holding and retrying ---

    def _hold(self, record: Record, error: Exception) -> str:
        call_sid = call_ref(record).call_sid
        data = encode_record(record)
        with self._lock:
            self._failed_attempts += 1
            replaced = self._held.pop(call_sid, b"")  # a second save of a call is its newest
            others, others_bytes = len(self._held), self._bytes - len(replaced)
            if others >= self._max_transcripts or others_bytes + len(data) > self._max_bytes:
                self._bytes = others_bytes
                self._lost += 1
                raise StorageError(
                    f"transcript {call_sid} LOST: it could not be stored ({error}) and the "
                    f"memory for unstored transcripts is full ({others} transcripts, "
                    f"{others_bytes / 1e6:.1f} MB)"
                ) from error
            self._held[call_sid] = data
            self._bytes = others_bytes + len(data)
            self._last_error = f"{call_sid}: {error}"
            self._work.set()
        log.error(
            "transcript %s could not be stored (%s); keeping it in memory and retrying "
            "(%d held, at most %d)",
            call_sid,
            error,
            others + 1,
            self._max_transcripts,
        )
        return "memory (retrying until the store takes it)"

    def _run(self) -> None:
        failures = 0
        while self._work.wait() and not self._stop.is_set():
            if self._stop.wait(self._backoff.delay(failures + 1)):
                return
            failures = 0 if self._retry() else failures + 1
            with self._lock:
                if not self._held:
                    self._work.clear()

    def _retry(self, deadline: float | None = None) -> bool:
        """Offer each held transcript to the store again, oldest first; False at the
        first failure (the rest would most likely fail the same way) or the deadline."""
        with self._lock:
            held = list(self._held.items())
        for call_sid, data in held:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            token = call_sid_var.set(call_sid)
            try:
                where = self.store.save(json.loads(data))
            except Exception as error:
                with self._lock:
                    self._failed_attempts += 1
                    self._last_error = f"{call_sid}: {error}"
                log.warning("transcript %s still not stored, kept in memory: %s", call_sid, error)
                return False
            finally:
                call_sid_var.reset(token)
            with self._lock:
                if self._held.get(call_sid) is data:  # else a status changed it: next round
                    del self._held[call_sid]
                    self._bytes -= len(data)
                if not self._held:
                    self._last_error = None
            log.info("transcript %s delivered from memory", call_sid, extra={"to": where})
        return True
