"""The numbers of the audio on the line, defined once: G.711 μ-law, 8 kHz mono, one byte
per sample, in 20 ms frames. Twilio streams it and the Realtime session speaks it
(``audio/pcmu``), so nothing transcodes and byte counts are durations.

Standard library only, with no audio maths: the call core imports it.
"""

from __future__ import annotations

from typing import Final

#: μ-law encodes zero amplitude as 0xFF; this is what Twilio "sends" for a silent line.
SILENCE_BYTE: Final = 0xFF
#: Telephone audio: 8000 samples/s, one byte per sample.
SAMPLE_RATE: Final = 8000
#: 8 bytes of μ-law per millisecond: byte counts and durations convert exactly.
BYTES_PER_MS: Final = SAMPLE_RATE // 1000
#: Twilio sends one media message per 20 ms.
FRAME_MS: Final = 20
#: 160 bytes of μ-law = 20 ms.
FRAME_BYTES: Final = FRAME_MS * BYTES_PER_MS


def silence(ms: int) -> bytes:
    """``ms`` milliseconds of μ-law silence."""
    return bytes([SILENCE_BYTE]) * (ms * BYTES_PER_MS)
