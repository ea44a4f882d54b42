"""Bad input from the network: the error the edge decoders raise for it, and the log that
keeps what it costs bounded.

Anyone can open a media stream, so anything may arrive on it: what is malformed is
dropped and the call goes on. Logging each bad message would hand the disk to whoever
sends them, so only the first of each kind is logged (with its detail), the rest are
counted, and the counts are logged once when the connection ends: a connection's log
lines grow with the number of kinds, not of messages.
"""

from __future__ import annotations

import logging
from typing import Literal

Side = Literal["Twilio", "OpenAI"]
# Fixed categories, never text from the input: an attacker who varies a message must not
# get a new log line for each variant.
Kind = Literal[
    "bad JSON",
    "nested too deeply",
    "bad message",
    "unknown event",
    "message before start",
    "binary frame",
    "bad audio",
    "bad dtmf",
]
DETAIL_CHARS = 200  # of the first message of a kind: enough to see what it was


class BadInput(ValueError):
    """Input that is dropped: `kind` is what the logs count it under."""

    def __init__(self, detail: str, kind: Kind = "bad message") -> None:
        super().__init__(detail)
        self.kind: Kind = kind


class BadInputLog:
    """The bad input of one connection: the first of each kind logged, all of them counted."""

    __slots__ = ("_counts", "_log")

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._counts: dict[tuple[Side, Kind], int] = {}

    def drop(self, side: Side, kind: Kind, detail: str) -> None:
        key = (side, kind)
        count = self._counts.get(key, 0)
        self._counts[key] = count + 1
        if not count:
            if len(detail) > DETAIL_CHARS:
                detail = detail[:DETAIL_CHARS] + "…"
            self._log.warning(
                "dropped a message from %s (%s): %s; more of this kind are only counted",
                side,
                kind,
                detail,
            )

    def summary(self) -> None:
        """Log the counts, if anything was dropped (at the end of the connection)."""
        if self._counts:
            total = sum(self._counts.values())
            kinds = ", ".join(
                f"{count} {kind} from {side}" for (side, kind), count in self._counts.items()
            )
            self._log.warning("dropped %d bad messages: %s", total, kinds)
