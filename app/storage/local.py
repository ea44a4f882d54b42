"""Transcripts as JSON files in a local directory (the default: no cloud account needed)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from datetime import date
from pathlib import Path
from typing import Any

from app.storage.base import (
    CallRef,
    Record,
    StorageError,
    TranscriptNotFound,
    call_ref,
    check_call_sid,
    fold_note,
    merge_call_status,
    pending_note,
    within,
)
from app.storage.render import render_text
from app.storage.summary import Summary


class LocalTranscriptStore:
    """Files at `TRANSCRIPTS_DIR/YYYY/MM/DD/<CallSid>.json`, each with its `.txt`
    rendering beside it; Twilio status facts that arrive before the call's transcript wait
    in `status/<CallSid>.json`. Files of earlier versions, under `transcripts/YYYY/…`
    (the bucket's prefix, once repeated here), are still read, and moved when next written.

    One lock serialises `save` and `record_call_status`: both read-modify-write the same
    files from worker threads, and without it a status could land in a note just after
    `save` looked for one (the directory belongs to one machine, so a process lock is
    enough).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def save(self, record: Record) -> str:
        """Write the transcript, with any pending status note folded in (then dropped)."""
        ref = call_ref(record)
        with self._lock:
            note_path = self._note_path(ref.call_sid)
            note = _read_optional(note_path)
            path = self._write(fold_note(record, note))
            if note is not None:
                note_path.unlink(missing_ok=True)
        return str(path)

    def record_call_status(self, call_sid: str, facts: dict[str, Any]) -> None:
        """Into the saved transcript if there is one, else into the call's pending note."""
        note_path = self._note_path(call_sid)
        with self._lock:
            try:
                path = self._find(call_sid)
            except TranscriptNotFound:
                note = pending_note(call_sid, _read_optional(note_path), facts)
                write_atomically(note_path, encode_record(note))
                return
            self._write(merge_call_status(_read(path), facts))

    def _write(self, record: Record) -> Path:
        ref = call_ref(record)
        write_atomically(self.root / ref.text_path, render_text(record).encode())
        path = self.root / ref.path
        write_atomically(path, encode_record(record))
        for legacy in (ref.key, ref.text_key):  # now superseded: one copy per call
            (self.root / legacy).unlink(missing_ok=True)
        return path

    def _note_path(self, call_sid: str) -> Path:
        return self.root / "status" / f"{check_call_sid(call_sid)}.json"

    def get(self, call_sid: str) -> Record:
        return _read(self._find(call_sid))

    def has(self, ref: CallRef) -> bool:
        return self._existing(ref) is not None

    def calls(self, since: date | None = None, until: date | None = None) -> list[CallRef]:
        refs = {
            CallRef.from_key(f"transcripts/{path.relative_to(base).as_posix()}")
            for base in (self.root, self.root / "transcripts")
            for path in base.glob(_DATED)
        }
        return [ref for ref in refs if ref is not None and within(ref.day, since, until)]

    def summary(self, ref: CallRef) -> Summary:
        return Summary.from_record(self.fetch(ref))

    def fetch(self, ref: CallRef) -> Record:
        path = self._existing(ref)
        if path is None:
            raise TranscriptNotFound(ref.call_sid)
        return _read(path)

    def url(self, call_sid: str, expires_s: int) -> str:
        """A file:// link: local files need no signature, so `expires_s` does not apply."""
        return self._find(call_sid).resolve().as_uri()

    def set_retention(self, days: int | None) -> str:
        raise StorageError(
            "retention is a bucket lifecycle rule: set TRANSCRIPTS_BUCKET to use it; "
            f"local transcripts stay in {self.root} until you delete them"
        )

    def retention(self) -> int | None:
        return None

    def _find(self, call_sid: str) -> Path:
        """The call's file, whatever its date: one directory listing per day, no reads."""
        name = f"{check_call_sid(call_sid)}.json"
        for base in (self.root, self.root / "transcripts"):
            for path in base.glob(_DATED.replace("*.json", name)):
                return path
        raise TranscriptNotFound(call_sid)

    def _existing(self, ref: CallRef) -> Path | None:
        """The call's file where this version writes it, else where earlier ones did."""
        for path in (self.root / ref.path, self.root / ref.key):
            if path.is_file():
                return path
        return None


_DATED = "[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]/*.json"  # YYYY/MM/DD/<CallSid>.json


def encode_record(record: Record) -> bytes:
    """The stored form of a record: the same bytes for the same record, every time."""
    return json.dumps(record, indent=2, ensure_ascii=False).encode()


def _read(path: Path) -> Record:
    try:
        data: Record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StorageError(f"{path} is not a readable transcript: {error}") from None
    return data


def _read_optional(path: Path) -> Record | None:
    """A pending note, or None if there is none (an unreadable one is dropped: losing a
    status fact is better than never saving the transcript)."""
    try:
        return _read(path)
    except (FileNotFoundError, StorageError):
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
