"""WebSocket frames on the audio path: cut from the byte stream and written, sans-I/O.

Nearly every frame on both of a call's sockets is one whole JSON text message. Those
are cut out of the stream here in a few operations; anything else (control frames,
fragments, binary, oversized or malformed frames) is handed, as whole frames, to the
websockets sans-I/O protocol that owns the connection, which answers pings, closes and
refuses what is wrong. The library thus always sees a stream that starts at a frame
boundary, and parsing a frame costs a fraction of its general (generator-based) parser:
profiling put that parser at about a fifth of the bridge's busy time under load.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension ships in websockets' wheels
    from websockets.utils import apply_mask

__all__ = ["FrameSplitter", "FrameWriter"]

_FIN = 0x80
_OPCODE = 0x0F
_FIN_TEXT = _FIN | 0x1
_MASKED = 0x80
_LENGTH = 0x7F
_CONTINUATION, _TEXT, _BINARY = 0x0, 0x1, 0x2
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


class FrameWriter:
    """Writes text messages as final frames, ready for one write.

    A client's frames (`masked`) each get four fresh random bytes as mask (RFC 6455
    §5.3), drawn from the OS 4 KiB at a time: one getrandom() call per thousand frames
    instead of one per frame. Everything a frame needs happens in one call: this runs
    for every audio frame in both directions.
    """

    # A fixed layout: attribute reads on the audio path stay fast.
    __slots__ = ("_at", "_mask_bit", "_pool")

    POOL_BYTES = 4096

    def __init__(self, *, masked: bool) -> None:
        self._mask_bit = _MASKED if masked else 0
        self._pool = b""
        self._at = 0

    def frames(self, texts: Sequence[str]) -> bytes:
        if len(texts) != 1:
            return b"".join([self.frames((text,)) for text in texts])
        payload = texts[0].encode()
        length = len(payload)
        if length < 126:
            header = bytes((_FIN_TEXT, self._mask_bit | length))
        elif length < 1 << 16:
            header = _MEDIUM.pack(_FIN_TEXT, self._mask_bit | 126, length)
        else:
            header = _LONG.pack(_FIN_TEXT, self._mask_bit | 127, length)
        if not self._mask_bit:
            return header + payload
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(self.POOL_BYTES)
            at = 0
        self._at = at + 4
        mask = self._pool[at : at + 4]
        return header + mask + apply_mask(payload, mask)


class FrameSplitter:
    """Cuts one direction of a connection into frames.

    `whole_text` is the shortcut for the usual read: exactly one whole text frame, whose
    payload it returns (None for any other read, which then goes to `feed`). `feed`
    returns, in order, `(True, payload)` for each whole single-frame text message
    (unmasked) and `(False, frame)` for each other whole frame, raw, for the library.
    `masked` is whether this side receives masked frames (a server does). A frame the
    library must refuse (larger than `max_size`, or masked the wrong way) ends the
    splitting: it and everything after it are the library's (`handed_over`).
    """

    # A fixed layout: attribute reads on the audio path stay fast.
    __slots__ = (
        "_at_boundary",
        "_fragmented",
        "_masked",
        "_max_size",
        "_medium",
        "_medium_head",
        "_pending",
        "handed_over",
    )

    def __init__(self, *, masked: bool, max_size: int) -> None:
        self._masked = masked
        self._max_size = max_size
        self._pending = b""
        self._fragmented = False  # inside a fragmented message: its frames are the library's
        self.handed_over = False
        # The usual read is exactly one whole text frame of 126 to 65535 bytes, at a
        # frame boundary: its second byte and header size, for the shortcut.
        self._at_boundary = True  # nothing held back, not in a fragmented message
        self._medium = (_MASKED if masked else 0) | 126
        self._medium_head = 8 if masked else 4

    def whole_text(self, data: bytes) -> bytes | None:
        """The payload when `data` is one whole text frame of a medium size, within the
        limit, at a frame boundary; otherwise None (and `feed` takes `data`)."""
        if self._at_boundary and len(data) > 8 and data[0] == _FIN_TEXT:
            head = self._medium_head
            length = (data[2] << 8) | data[3]
            if data[1] == self._medium and head + length == len(data) <= head + self._max_size:
                if self._masked:
                    return apply_mask(data[8:], data[4:8])
                return data[4:]
        return None

    def feed(self, data: bytes) -> list[tuple[bool, bytes]]:
        out = self._split(data)
        self._at_boundary = not (self._pending or self._fragmented or self.handed_over)
        return out

    def _split(self, data: bytes) -> list[tuple[bool, bytes]]:
        if self.handed_over:
            return [(False, data)]
        buffer = self._pending + data if self._pending else data
        out: list[tuple[bool, bytes]] = []
        masked = self._masked
        at, end = 0, len(buffer)
        while end - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            length, head = second & _LENGTH, 2
            if length == 126:
                if end - at < 4:
                    break
                length, head = int.from_bytes(buffer[at + 2 : at + 4]), 4
            elif length == 127:
                if end - at < 10:
                    break
                length, head = int.from_bytes(buffer[at + 2 : at + 10]), 10
            if length > self._max_size or bool(second & _MASKED) is not masked:
                self.handed_over = True
                out.append((False, buffer[at:]))
                self._pending = b""
                return out
            start = at + head + (4 if masked else 0)
            stop = start + length
            if stop > end:
                break
            if first == _FIN_TEXT and not self._fragmented:
                payload = buffer[start:stop]
                if masked:
                    payload = apply_mask(payload, buffer[start - 4 : start])
                out.append((True, payload))
            else:
                opcode = first & _OPCODE
                if opcode in (_TEXT, _BINARY):
                    self._fragmented = not first & _FIN
                elif opcode == _CONTINUATION and first & _FIN:
                    self._fragmented = False
                out.append((False, buffer[at:stop]))
            at = stop
        self._pending = buffer[at:]
        return out

    def hand_over(self) -> bytes:
        """Stop splitting (the connection is closing): the bytes held back, for the library."""
        self.handed_over = True
        self._at_boundary = False
        pending, self._pending = self._pending, b""
        return pending
