"""Playback accounting: how much of each agent item the caller has actually heard.

Twilio plays our audio from a queue and echoes each `mark` once the audio before it has
played. Agent audio is sent in groups of about `MARK_EVERY_MS`, each followed by a mark,
so echoes tell us which groups were heard. Within the group now playing, the clock
interpolates — bounded by the group's own size, so the estimate never drifts past what was
produced (truncating past produced audio is an API error). A mark per group rather than
per delta keeps the message count down when deltas are small.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from voicebridge.ulaw import BYTES_PER_MS

MARK_EVERY_MS = 100
_BYTES_PER_S = BYTES_PER_MS * 1000


@dataclass(slots=True)
class _Group:
    item_id: str
    start: int  # byte offset of this group within its item
    queued_at: float
    size: int = 0
    mark: str = ""


@dataclass(frozen=True, slots=True)
class Cut:
    """One item cut short by a barge-in: the caller heard `heard_ms` of it."""

    item_id: str
    heard_ms: int
    produced_ms: int


class PlaybackTracker:
    """Per-call record of audio queued at Twilio and heard by the caller."""

    # A fixed layout: attribute reads on the audio path stay fast.
    __slots__ = (
        "_heard",
        "_last_echo_at",
        "_next_mark",
        "_open",
        "_pending",
        "_produced",
        "played_by",
    )

    def __init__(self) -> None:
        self._pending: deque[_Group] = deque()  # marked, not yet echoed
        self._open: _Group | None = None  # sent, not yet followed by a mark
        self._produced: dict[str, int] = {}
        self._heard: dict[str, int] = {}
        self._last_echo_at = 0.0
        self._next_mark = 0
        # When what was sent will have played, if Twilio plays it in real time from its
        # arrival: for a peer that does not echo marks, when to stop waiting for them.
        self.played_by = 0.0

    def queued(self, item_id: str, size: int, now: float) -> str | None:
        """Record `size` bytes of `item_id` sent to Twilio; returns a mark to send after
        them once the group is long enough. Call `close_group` first when the item changes."""
        played_by = self.played_by
        self.played_by = (played_by if played_by > now else now) + size / _BYTES_PER_S
        start = self._produced.get(item_id, 0)
        self._produced[item_id] = start + size
        group = self._open
        if group is None:
            group = self._open = _Group(item_id, start, now)
        group.size += size
        if group.size >= MARK_EVERY_MS * BYTES_PER_MS:
            return self.close_group()
        return None

    def close_group(self) -> str | None:
        """End the group being sent (its item ended, or a response did): its mark."""
        group, self._open = self._open, None
        if group is None:
            return None
        self._next_mark += 1
        group.mark = str(self._next_mark)
        self._pending.append(group)
        return group.mark

    def mark_played(self, name: str, now: float) -> None:
        """Twilio echoed `name`: everything queued up to and including it was heard.

        Unknown names (marks dropped by a `clear`, echoed afterwards) are ignored.
        """
        pending = self._pending
        if not pending or (pending[0].mark != name and name not in [g.mark for g in pending]):
            return  # (Twilio plays in order: the echo is nearly always the oldest mark)
        while pending:
            group = pending.popleft()
            self._heard[group.item_id] = group.start + group.size
            if group.mark == name:
                break
        self._last_echo_at = now

    @property
    def playing(self) -> bool:
        """Whether audio is still queued at Twilio (as far as mark echoes tell)."""
        return bool(self._pending) or self._open is not None

    def produced_ms(self, item_id: str) -> int:
        return self._produced.get(item_id, 0) // BYTES_PER_MS

    def heard_ms(self, item_id: str, now: float) -> int:
        heard = self._heard.get(item_id, 0)
        head = self._pending[0] if self._pending else self._open
        if head is not None and head.item_id == item_id:
            started = max(self._last_echo_at, head.queued_at)
            elapsed = max(0, round((now - started) * 1000 * BYTES_PER_MS))
            heard = head.start + min(head.size, elapsed)
        return heard // BYTES_PER_MS

    def interrupt(self, now: float) -> list[Cut]:
        """The caller barged in: forget the queue (we send `clear`) and report, per item
        still queued, how much of it was heard, so the model can be truncated to that."""
        groups = [*self._pending, *([self._open] if self._open else [])]
        items = list(dict.fromkeys(group.item_id for group in groups))
        cuts = [Cut(item, self.heard_ms(item, now), self.produced_ms(item)) for item in items]
        self._pending.clear()
        self._open = None
        self.played_by = now
        for cut in cuts:
            self._heard[cut.item_id] = cut.heard_ms * BYTES_PER_MS
        return cuts
