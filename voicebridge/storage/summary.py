"""One line's worth of a call — what `transcripts list` shows — and its object metadata.

The S3 store writes the summary as object metadata, so a listing needs one HEAD per call
instead of downloading every transcript; the local store builds it from the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

# S3 user metadata travels in HTTP headers: ASCII only. Percent-encode everything else
# but keep phone numbers and SIP addresses readable in a bucket browser.
_SAFE = "+:@._-"


@dataclass(frozen=True, slots=True)
class Summary:
    call_sid: str
    started_at: str  # ISO 8601 UTC, `…Z`
    direction: str
    from_number: str
    to_number: str
    duration_s: float
    turns: int

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Summary:
        return cls(
            call_sid=str(record["call_sid"]),
            started_at=str(record["started_at"]),
            direction=str(record.get("direction", "")),
            from_number=str(record.get("from", "")),
            to_number=str(record.get("to", "")),
            duration_s=float(record.get("duration_s", 0.0)),
            turns=len(record.get("turns", ())),
        )

    def to_metadata(self) -> dict[str, str]:
        fields = {
            "call-sid": self.call_sid,
            "started-at": self.started_at,
            "direction": self.direction,
            "from": self.from_number,
            "to": self.to_number,
            "duration-s": f"{self.duration_s:g}",
            "turns": str(self.turns),
        }
        return {name: quote(value, safe=_SAFE) for name, value in fields.items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Summary | None:
        """The summary stored with an object; None if it was not uploaded by VoiceBridge."""
        values = {name: unquote(value) for name, value in metadata.items()}
        try:
            return cls(
                call_sid=values["call-sid"],
                started_at=values["started-at"],
                direction=values.get("direction", ""),
                from_number=values.get("from", ""),
                to_number=values.get("to", ""),
                duration_s=float(values["duration-s"]),
                turns=int(values["turns"]),
            )
        except (KeyError, ValueError):
            return None
