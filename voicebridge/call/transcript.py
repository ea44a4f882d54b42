"""The call's transcript: both sides, in conversation order.

Caller text arrives asynchronously (input transcription may land after the agent has
already answered), so turns are placed by conversation item when the item is first
seen, and filled in whenever their text arrives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from statistics import median_low
from typing import Any, Literal

Role = Literal["caller", "agent"]


@dataclass(slots=True)
class Turn:
    role: Role
    item_id: str
    start_ms: int
    text: str = ""
    interrupted: bool = False
    heard_ms: int | None = None
    spoken_ms: int | None = None
    transcribed: bool = False
    latency_ms: int | None = None  # caller's turn end (VAD) → first agent audio to Twilio
    bridge_ms: float | None = None  # of which spent in this bridge
    dtmf: str | None = None

    def to_dict(self) -> dict[str, Any]:
        turn: dict[str, Any] = {"role": self.role, "text": self.text, "start_ms": self.start_ms}
        if self.dtmf is not None:
            turn["dtmf"] = self.dtmf
        if self.latency_ms is not None:
            turn["latency_ms"] = self.latency_ms
            turn["bridge_ms"] = self.bridge_ms
        if self.role == "caller" and not self.transcribed:
            turn["transcribed"] = False
        if self.interrupted:
            turn["interrupted"] = True
            turn["heard_ms"] = self.heard_ms
            turn["spoken_ms"] = self.spoken_ms
        return turn


@dataclass(slots=True)
class CallInfo:
    call_sid: str
    stream_sid: str
    direction: str = "inbound"
    from_number: str = ""
    to_number: str = ""
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(slots=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    input_audio_tokens: int = 0
    input_text_tokens: int = 0
    input_cached_tokens: int = 0
    output_audio_tokens: int = 0
    output_text_tokens: int = 0
    responses: int = 0


class Transcript:
    """Turns by conversation item, in the order the items were first seen."""

    def __init__(self, call: CallInfo) -> None:
        self.call = call
        self._turns: dict[str, Turn] = {}
        self.usage = TokenUsage()
        self.events: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {}  # per-call facts: instructions used, metadata…

    def turn(self, role: Role, item_id: str, start_ms: int) -> Turn:
        """The turn for `item_id`, created at `start_ms` if this is its first mention."""
        existing = self._turns.get(item_id)
        if existing is None:
            existing = self._turns[item_id] = Turn(role, item_id, start_ms)
        return existing

    def caller_said(self, item_id: str, text: str, now_ms: int) -> None:
        turn = self.turn("caller", item_id, now_ms)
        turn.text = text.strip()
        turn.transcribed = True

    def agent_said(self, item_id: str, text: str, now_ms: int) -> None:
        self.turn("agent", item_id, now_ms).text = text.strip()

    def agent_cut(self, item_id: str, heard_ms: int, spoken_ms: int, now_ms: int) -> None:
        turn = self.turn("agent", item_id, now_ms)
        turn.interrupted = True
        turn.heard_ms = heard_ms
        turn.spoken_ms = spoken_ms

    def latency_summary(self) -> dict[str, int | None]:
        """Per call: how fast the agent answered (p50 and worst), over the turns measured."""
        measured = sorted(t.latency_ms for t in self._turns.values() if t.latency_ms is not None)
        if not measured:
            return {"turns": 0, "p50_ms": None, "max_ms": None}
        return {"turns": len(measured), "p50_ms": median_low(measured), "max_ms": measured[-1]}

    def note(self, kind: str, at_ms: int, **details: Any) -> None:
        """Record something that happened to the call itself (a reconnect, a time limit…)."""
        self.events.append({"type": kind, "at_ms": at_ms, **details})

    def spoken_turns(self) -> list[Turn]:
        """Turns with words in them, for re-seeding a new Realtime session."""
        return [turn for turn in self._turns.values() if turn.text]

    @property
    def untranscribed_caller_turns(self) -> int:
        return sum(1 for t in self._turns.values() if t.role == "caller" and not t.transcribed)

    @property
    def turns(self) -> list[Turn]:
        return list(self._turns.values())

    def to_record(self, ended_at: datetime) -> dict[str, Any]:
        """The JSON document saved for the call (schema documented in the README)."""
        call = self.call
        return {
            "call_sid": call.call_sid,
            "stream_sid": call.stream_sid,
            "direction": call.direction,
            "from": call.from_number,
            "to": call.to_number,
            "started_at": _iso(call.started_at),
            "ended_at": _iso(ended_at),
            "duration_s": round((ended_at - call.started_at).total_seconds(), 3),
            "turns": [
                turn.to_dict()
                for turn in self._turns.values()
                if turn.text or turn.interrupted or turn.role == "caller"
            ],
            "usage": asdict(self.usage),
            "latency": self.latency_summary(),
            "events": self.events,
            **self.details,
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
