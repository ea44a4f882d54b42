"""Playback accounting: how much of each agent item the caller has actually heard.

Twilio plays our audio from a queue and echoes each `mark` once the audio before it has
played. Every audio chunk we forward is followed by a mark, so echoes tell us exactly
which chunks were heard. Between two echoes, the chunk now playing is interpolated by
the clock — bounded by the chunk's own size, so the estimate never drifts past what was
produced (truncating past produced audio is an API error).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

BYTES_PER_MS = 8  # μ-law, 8 kHz, one byte per sample


@dataclass(slots=True)
class _Chunk:
    mark: str
    item_id: str
    start: int  # byte offset of this chunk within its item
    size: int
    queued_at: float


@dataclass(frozen=True, slots=True)
class Cut:
    """One item cut short by a barge-in: the caller heard `heard_ms` of it."""

    item_id: str
    heard_ms: int
    produced_ms: int


class PlaybackTracker:
    """Per-call record of audio queued at Twilio and heard by the caller."""

    def __init__(self) -> None:
        self._pending: deque[_Chunk] = deque()
        self._produced: dict[str, int] = {}
        self._heard: dict[str, int] = {}
        self._last_echo_at = 0.0
        self._next_mark = 0

    def queued(self, item_id: str, size: int, now: float) -> str:
        """Record `size` bytes of `item_id` sent to Twilio; returns the mark to send after it."""
        start = self._produced.get(item_id, 0)
        self._produced[item_id] = start + size
        self._next_mark += 1
        mark = str(self._next_mark)
        self._pending.append(_Chunk(mark, item_id, start, size, now))
        return mark

    def mark_played(self, name: str, now: float) -> None:
        """Twilio echoed `name`: everything queued up to and including it was heard.

        Unknown names (marks dropped by a `clear`, echoed afterwards) are ignored.
        """
        if not any(chunk.mark == name for chunk in self._pending):
            return
        while self._pending:
            chunk = self._pending.popleft()
            self._heard[chunk.item_id] = chunk.start + chunk.size
            if chunk.mark == name:
                break
        self._last_echo_at = now

    @property
    def playing(self) -> bool:
        """Whether audio is still queued at Twilio (as far as mark echoes tell)."""
        return bool(self._pending)

    def produced_ms(self, item_id: str) -> int:
        return self._produced.get(item_id, 0) // BYTES_PER_MS

    def heard_ms(self, item_id: str, now: float) -> int:
        heard = self._heard.get(item_id, 0)
        if self._pending and self._pending[0].item_id == item_id:
            head = self._pending[0]
            started = max(self._last_echo_at, head.queued_at)
            elapsed = max(0, round((now - started) * 1000 * BYTES_PER_MS))
            heard = head.start + min(head.size, elapsed)
        return heard // BYTES_PER_MS

    def interrupt(self, now: float) -> list[Cut]:
        """The caller barged in: forget the queue (we send `clear`) and report, per item
        still queued, how much of it was heard, so the model can be truncated to that."""
        items = list(dict.fromkeys(chunk.item_id for chunk in self._pending))
        cuts = [Cut(item, self.heard_ms(item, now), self.produced_ms(item)) for item in items]
        self._pending.clear()
        for cut in cuts:
            self._heard[cut.item_id] = cut.heard_ms * BYTES_PER_MS
        return cuts
