"""The spool: transcripts on local disk until their upload has succeeded.

A transcript is written here atomically before anything else happens to it, and leaves
only once the bucket has it, so neither a failed upload nor a crash loses a call. One
file per call, named after its CallSid: saving the same call twice replaces the file,
never queues a duplicate. A spooled transcript may change while it waits (a Twilio
status arrives): the uploader then removes the file only if it is still the one it
uploaded, and delivers the newer one next. A file that cannot be read back as a transcript goes to
`corrupt/` instead of being retried forever.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from voicebridge.storage.base import Record, call_ref
from voicebridge.storage.local import encode_record, write_atomically
from voicebridge.storage.render import render_text


class CorruptSpoolFile(ValueError):
    """A spool file that is not a transcript; `str()` says why."""


class Spool:
    """`<directory>/<CallSid>.json` for every transcript not yet uploaded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.corrupt_directory = directory / "corrupt"
        # Serialises rewrites (`put`, `update`) against the uploader's removal, so a
        # file changed after its upload started is never deleted undelivered.
        self._lock = threading.Lock()

    def put(self, record: Record) -> Path:
        path = self.directory / f"{call_ref(record).call_sid}.json"
        with self._lock:
            write_atomically(path, encode_record(record))
        return path

    def update(self, call_sid: str, change: Callable[[Record], Record]) -> bool:
        """Rewrite the call's spooled transcript with `change`, atomically; False if the
        call is not in the spool (never spooled here, or already uploaded)."""
        path = self.directory / f"{call_sid}.json"
        with self._lock:
            try:
                record = self.load(path)
            except (FileNotFoundError, CorruptSpoolFile):
                return False
            write_atomically(path, encode_record(change(record)))
        return True

    def stamp(self, path: Path) -> tuple[int, int, int] | None:
        """What identifies this version of a spool file (None if it is gone): an atomic
        rewrite is a new inode, so any change shows."""
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def remove_if_unchanged(self, path: Path, stamp: tuple[int, int, int] | None) -> bool:
        """Remove `path` if it is still the version `stamp` identifies; False if it was
        rewritten since (it must then be delivered again)."""
        with self._lock:
            if stamp is None or self.stamp(path) != stamp:
                return False
            path.unlink(missing_ok=True)
            return True

    def pending(self) -> list[Path]:
        """Waiting transcripts, oldest first (a missing directory has none)."""
        paths = []
        for path in self.directory.glob("*.json"):
            try:
                paths.append((path.stat().st_mtime_ns, path))
            except FileNotFoundError:  # uploaded meanwhile
                continue
        return [path for _, path in sorted(paths)]

    def load(self, path: Path) -> Record:
        """The transcript in `path`, checked to be uploadable; `CorruptSpoolFile` if not.

        `FileNotFoundError` if it is gone (another worker delivered it).
        """
        try:
            record = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptSpoolFile(f"not JSON: {error}") from None
        if not isinstance(record, dict):
            raise CorruptSpoolFile(f"a JSON {type(record).__name__}, not a transcript")
        try:
            call_ref(record)
            render_text(record)  # everything an upload derives from the record
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise CorruptSpoolFile(f"not a transcript: {error}") from None
        return record

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def set_aside(self, path: Path) -> Path:
        """Move a corrupt file into `corrupt/` (never over an earlier one); returns where."""
        self.corrupt_directory.mkdir(parents=True, exist_ok=True)
        target = self.corrupt_directory / path.name
        if target.exists():
            target = target.with_name(f"{path.stem}.{time.time_ns()}{path.suffix}")
        path.replace(target)
        return target

    def remove_partial_writes(self) -> int:
        """Delete temporary files a crash left mid-write (their call never reached the
        spool); only safe before anything writes here, i.e. at start-up."""
        leftovers = list(self.directory.glob(".*.tmp"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)
