"""Plain-text views of transcripts, shared by every backend and the CLI.

The `.txt` stored beside each `.json` is this rendering, so a call can be read in a
bucket browser or a file manager without a JSON viewer.
"""

from __future__ import annotations

from typing import Any

from app.storage.base import Record
from app.storage.summary import Summary


def render_text(record: Record) -> str:
    """The whole call as a readable script, one line per turn."""
    summary = Summary.from_record(record)
    lines = [
        f"Call {summary.call_sid} · {summary.direction or 'unknown direction'} · "
        f"{summary.from_number or '?'} → {summary.to_number or '?'}",
        f"Started {summary.started_at} · {_duration(summary.duration_s)} · "
        f"{plural(summary.turns, 'turn')}",
        "",
    ]
    lines += [_turn_line(turn) for turn in record.get("turns", ())]
    notes = record.get("notes") or []
    if notes:
        lines += ["", "Notes:", *(f"- {note}" for note in notes)]
    status = record.get("call_status") or {}
    if status:
        lines += ["", f"Twilio: {_status_line(status)}"]
    usage = record.get("usage") or {}
    if usage:
        lines += [
            "",
            f"Tokens: {usage.get('input_tokens', 0)} in, {usage.get('output_tokens', 0)} out "
            f"over {plural(usage.get('responses', 0), 'response')}",
        ]
    return "\n".join(lines) + "\n"


def _status_line(status: dict[str, Any]) -> str:
    """What Twilio reported, e.g. `completed · 42 s · answered by machine_end_beep ·
    voicemail left`, so the text rendering says how the call ended too."""
    parts = [str(status.get("status", "status unknown"))]
    if status.get("duration_s") is not None:
        parts.append(f"{status['duration_s']} s")
    if status.get("answered_by"):
        parts.append(f"answered by {status['answered_by']}")
    if "voicemail_left" in status:
        parts.append("voicemail left" if status["voicemail_left"] else "no voicemail left")
    return " · ".join(parts)


def summary_line(summary: Summary) -> str:
    """`time  CallSid  from  to  duration  turns`, aligned for a terminal."""
    moment = summary.started_at[:19].replace("T", " ")
    return (
        f"{moment}Z  {summary.call_sid}  {summary.from_number or '-':<16}  "
        f"{summary.to_number or '-':<16}  {_duration(summary.duration_s):>8}  "
        f"{plural(summary.turns, 'turn', width=3)}"
    )


def plural(count: int, noun: str, *, width: int = 0) -> str:
    """`1 turn`, `3 turns`: numbers in the CLI's output read as English."""
    return f"{count:>{width}} {noun}{'' if count == 1 else 's'}"


def _turn_line(turn: dict[str, Any]) -> str:
    role = "Caller" if turn.get("role") == "caller" else "Agent"
    text = str(turn.get("text") or "")
    if turn.get("transcribed") is False:
        text = text or "(not transcribed)"
    line = f"[{_clock(int(turn.get('start_ms', 0)))}] {role}: {text}"
    if turn.get("interrupted"):
        heard = turn.get("heard_ms") or 0
        spoken = turn.get("spoken_ms") or 0
        line += f" [interrupted: heard {heard / 1000:.1f} s of {spoken / 1000:.1f} s]"
    return line


def _clock(ms: int) -> str:
    minutes, rest = divmod(max(ms, 0), 60_000)
    return f"{minutes:02d}:{rest / 1000:04.1f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"
