"""The background worker that empties the spool into the bucket.

One daemon thread, so uploads never run on the event loop and never delay a call. It
sleeps until a transcript is spooled, delivers the oldest first, and on a failure backs
off exponentially with jitter (many machines recovering from the same outage do not
retry in lock-step) before trying again; a transcript is removed from the spool only
after its upload succeeded. At start it delivers whatever an earlier run left behind;
at shutdown it keeps trying until the spool is empty or the deadline passes.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voicebridge.logs import call_sid_var
from voicebridge.storage.base import DeliveryStats, Record, StorageError
from voicebridge.storage.spool import CorruptSpoolFile, Spool

log = logging.getLogger("voicebridge.transcripts")

Deliver = Callable[[Record], str]  # uploads one record, returns where it went


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays: `first_s`, doubling per consecutive failure up to `max_s`, each
    drawn from the upper half of that range."""

    first_s: float = 1.0
    max_s: float = 300.0

    def delay(self, failures: int) -> float:
        ceiling = min(self.max_s, self.first_s * 2.0 ** min(failures - 1, 32))
        return ceiling * random.uniform(0.5, 1.0)


class Uploader:
    """Delivers the spool with `deliver` on its own thread; counts what happens."""

    def __init__(self, spool: Spool, deliver: Deliver, backoff: Backoff | None = None) -> None:
        self._spool = spool
        self._deliver = deliver
        self._backoff = backoff or Backoff()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None  # set by close(): stop trying after this
        self._uploaded = 0
        self._failed_attempts = 0
        self._corrupt = 0
        self._last_error: str | None = None

    @property
    def stats(self) -> DeliveryStats:
        return DeliveryStats(
            uploaded=self._uploaded,
            failed_attempts=self._failed_attempts,
            pending=len(self._spool.pending()),
            corrupt=self._corrupt,
            last_error=self._last_error,
        )

    def notify(self) -> None:
        """A transcript was spooled: deliver it now rather than at the next retry."""
        self._wake.set()

    def start(self) -> None:
        """Fail fast if the spool is unusable, then deliver leftovers and new saves."""
        if self._thread is not None:
            return
        try:
            self._spool.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(
                f"cannot use the spool directory {self._spool.directory} "
                f"(TRANSCRIPT_SPOOL_DIR): {error.strerror}"
            ) from None
        if self._spool.remove_partial_writes():
            log.warning("removed half-written spool files left by a crash")
        leftovers = len(self._spool.pending())
        if leftovers:
            log.info("uploading %d transcript(s) left in the spool", leftovers)
        self._thread = threading.Thread(target=self._run, name="transcript-uploader", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float) -> bool:
        """Keep delivering for at most `timeout_s`, then stop; True if the spool is empty.

        What is left stays in the spool and is delivered at the next start-up.
        """
        self._deadline = time.monotonic() + timeout_s
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        left = len(self._spool.pending())
        if left:
            log.warning(
                "%d transcript(s) not uploaded before shutdown; they stay in %s "
                "and are uploaded at the next start",
                left,
                self._spool.directory,
            )
        return left == 0

    def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            if self._deliver_pending():
                failures = 0
                if self._wake.is_set():  # saved or changed meanwhile: deliver that too
                    continue
                wait: float | None = None  # until the next transcript
            else:
                failures += 1
                wait = self._backoff.delay(failures)
            if self._deadline is not None:
                remaining = self._deadline - time.monotonic()
                if wait is None or remaining <= 0:
                    return
                wait = min(wait, remaining)
            self._wake.wait(wait)

    def _deliver_pending(self) -> bool:
        """Deliver the spool oldest first; False at the first failure (the rest would
        most likely fail the same way) or when the shutdown deadline passes."""
        for path in self._spool.pending():
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return False
            token = call_sid_var.set(path.stem)
            try:
                if not self._deliver_one(path):
                    return False
            finally:
                call_sid_var.reset(token)
        return True

    def _deliver_one(self, path: Path) -> bool:
        stamp = self._spool.stamp(path)  # before reading: a later rewrite is redelivered
        try:
            record = self._spool.load(path)
        except FileNotFoundError:
            return True
        except CorruptSpoolFile as error:
            moved = self._spool.set_aside(path)
            self._corrupt += 1
            log.error(
                "corrupt spool file for %s moved to %s, not uploaded: %s", path.stem, moved, error
            )
            return True
        try:
            where = self._deliver(record)
        except Exception as error:  # whatever it was, the transcript stays spooled
            self._failed_attempts += 1
            self._last_error = f"{path.stem}: {error or type(error).__name__}"
            if isinstance(error, StorageError):
                log.warning("upload of transcript %s failed, will retry: %s", path.stem, error)
            else:
                log.exception("unexpected error uploading transcript %s, will retry", path.stem)
            return False
        self._uploaded += 1
        self._last_error = None
        log.info("transcript %s uploaded", path.stem, extra={"to": where})
        if not self._spool.remove_if_unchanged(path, stamp):
            log.info("transcript %s changed while uploading; uploading it again", path.stem)
            self._wake.set()
        return True
