"""What goes over the wire: tagged audio frames and Twilio Media Streams messages.

Each 20 ms frame (160 bytes of μ-law) starts with a 12-byte tag — magic, call index,
sequence number — so an echoed frame coming back as Twilio `media` is matched to the frame
sent, on the right call; the rest is μ-law silence. The tag is exactly 12 bytes, so its
base64 is 16 characters and the silence after it is always the same base64 suffix: a
frame costs one small `b64encode`, not 160 bytes of encoding.

Messages are byte strings built by concatenation, with every field Twilio sends and every
number-looking field a string, as Twilio sends them.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import struct

import msgspec

from voicebridge.ulaw import FRAME_BYTES, FRAME_MS, SILENCE_BYTE

MAGIC = b"VBn\x01"
PROBE_SEQ = 0xFFFFFFFF  # frames sent to find out when a call is bridged; not measured

_TAG = struct.Struct(">4sII")
_SILENCE_B64 = base64.b64encode(bytes([SILENCE_BYTE]) * (FRAME_BYTES - _TAG.size))
assert _TAG.size % 3 == 0  # keeps the tag's base64 independent of what follows


def new_sid(prefix: str) -> str:
    """A Twilio-style SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def payload(call: int, seq: int) -> bytes:
    """The base64 payload of frame `seq` of call `call`."""
    return base64.b64encode(_TAG.pack(MAGIC, call, seq)) + _SILENCE_B64


def read_tag(payload_b64: bytes | str) -> tuple[int, int] | None:
    """(call, seq) of an echoed payload; None if it is not one of our frames."""
    try:
        head = binascii.a2b_base64(payload_b64[:16])
    except (binascii.Error, ValueError):
        return None
    if len(head) != _TAG.size:
        return None
    magic, call, seq = _TAG.unpack(head)
    if magic != MAGIC:
        return None
    return call, seq


class TwilioCall:
    """The messages of one simulated call, as Twilio words them."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.call_sid = new_sid("CA")
        self.stream_sid = new_sid("MZ")
        self.account_sid = new_sid("AC")
        self._sequence = 0
        self._chunk = 0
        self._sid = self.stream_sid.encode()

    def _next_sequence(self) -> bytes:
        self._sequence += 1
        return str(self._sequence).encode()

    def connected(self) -> bytes:
        return b'{"event":"connected","protocol":"Call","version":"1.0.0"}'

    def start(self) -> bytes:
        message = {
            "event": "start",
            "sequenceNumber": self._next_sequence().decode(),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {
                    "from": "+15550001111",
                    "to": "+15550002222",
                    "direction": "inbound",
                },
            },
            "streamSid": self.stream_sid,
        }
        return msgspec.json.encode(message)

    def media(self, seq: int) -> bytes:
        """The next `media` message, carrying frame `seq` (timestamps advance 20 ms each)."""
        self._chunk += 1
        timestamp = str((self._chunk - 1) * FRAME_MS).encode()
        return b"".join(
            (
                b'{"event":"media","sequenceNumber":"',
                self._next_sequence(),
                b'","media":{"track":"inbound","chunk":"',
                str(self._chunk).encode(),
                b'","timestamp":"',
                timestamp,
                b'","payload":"',
                payload(self.index, seq),
                b'"},"streamSid":"',
                self._sid,
                b'"}',
            )
        )

    def mark(self, name: bytes) -> bytes:
        """The echo of a mark whose audio has played."""
        return b"".join(
            (
                b'{"event":"mark","sequenceNumber":"',
                self._next_sequence(),
                b'","streamSid":"',
                self._sid,
                b'","mark":{"name":',
                msgspec.json.encode(name.decode()),
                b"}}",
            )
        )

    def stop(self) -> bytes:
        return msgspec.json.encode(
            {
                "event": "stop",
                "sequenceNumber": self._next_sequence().decode(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )


def append_event(seq: int, index: int) -> bytes:
    """An `input_audio_buffer.append` for the direct (baseline) round trip to the double."""
    return b'{"type":"input_audio_buffer.append","audio":"' + payload(index, seq) + b'"}'


# What comes back: from the bridge (Twilio side), and from the double (baseline).


class _Out(msgspec.Struct, tag_field="event"):
    pass


class MediaBody(msgspec.Struct):
    payload: str


class OutMedia(_Out, tag="media"):
    media: MediaBody


class MarkBody(msgspec.Struct):
    name: str


class OutMark(_Out, tag="mark"):
    mark: MarkBody


class OutClear(_Out, tag="clear"):
    pass


TO_TWILIO = msgspec.json.Decoder(OutMedia | OutMark | OutClear)


class _Delta(msgspec.Struct):
    type: str
    delta: str = ""


FROM_DOUBLE = msgspec.json.Decoder(_Delta)
