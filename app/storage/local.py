"""Transcripts as JSON files in a local directory (the default: no cloud account needed)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from app.storage.base import Record, TranscriptNotFound, transcript_key


class LocalTranscriptStore:
    """Files laid out like the bucket keys, under `TRANSCRIPTS_DIR`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, record: Record) -> str:
        path = self.root / transcript_key(record)
        write_atomically(path, json.dumps(record, indent=2, ensure_ascii=False).encode())
        return str(path)

    def get(self, call_sid: str) -> Record:
        for path in self.root.glob(f"transcripts/*/*/*/{call_sid}.json"):
            data: Record = json.loads(path.read_text(encoding="utf-8"))
            return data
        raise TranscriptNotFound(call_sid)


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
