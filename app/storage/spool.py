"""The spool: transcripts on local disk until their upload has succeeded.

A transcript is written here atomically before anything else happens to it, and leaves
only once the bucket has it, so neither a failed upload nor a crash loses a call. One
file per call, named after its CallSid: saving the same call twice replaces the file,
never queues a duplicate. A file that cannot be read back as a transcript goes to
`corrupt/` instead of being retried forever.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from app.storage.base import Record, call_ref
from app.storage.local import encode_record, write_atomically
from app.storage.render import render_text


class CorruptSpoolFile(ValueError):
    """A spool file that is not a transcript; `str()` says why."""


class Spool:
    """`<directory>/<CallSid>.json` for every transcript not yet uploaded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.corrupt_directory = directory / "corrupt"

    def put(self, record: Record) -> Path:
        path = self.directory / f"{call_ref(record).call_sid}.json"
        write_atomically(path, encode_record(record))
        return path

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
