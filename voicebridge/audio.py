"""Tiny μ-law (G.711, 8 kHz mono) helpers shared by the product and the tests.

Twilio Media Streams carry raw μ-law 8 kHz mono and the OpenAI Realtime session is set to
``audio/pcmu``, so the bridge never transcodes. Conversion is only needed at the edges: to
turn a user's WAV file into what a phone would send (``voicebridge simulate --wav``) and to
write what the agent said back out as a WAV anyone can play.

Only the standard library is used: ``wave`` for PCM WAV and ``audioop`` for the G.711 and
resampling maths (``audioop`` was removed from the stdlib in 3.13; the ``audioop-lts``
package, a conditional dependency, provides the same module there).
"""

from __future__ import annotations

import struct
import warnings
import wave
from pathlib import Path
from typing import Final

with warnings.catch_warnings():
    # 3.11/3.12 warn that audioop is deprecated; audioop-lts takes over on >= 3.13.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

from voicebridge.ulaw import BYTES_PER_MS, SAMPLE_RATE

__all__ = [
    "WavFormatError",
    "pcm16_to_ulaw",
    "read_audio_as_ulaw",
    "read_wav_as_ulaw",
    "ulaw_duration_ms",
    "ulaw_to_pcm16",
    "write_ulaw_wav",
]

# WAVE format tags (from the Microsoft RIFF spec).
_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_IEEE_FLOAT: Final = 0x0003
_WAVE_FORMAT_ALAW: Final = 0x0006
_WAVE_FORMAT_MULAW: Final = 0x0007
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE

_RAW_ULAW_SUFFIXES: Final = frozenset({".ulaw", ".mulaw", ".ul", ".u8", ".raw", ".pcmu"})


def ulaw_duration_ms(ulaw: bytes | bytearray) -> int:
    """Duration of μ-law 8 kHz audio in whole milliseconds."""
    return len(ulaw) // BYTES_PER_MS


def ulaw_to_pcm16(ulaw: bytes | bytearray) -> bytes:
    """Decode μ-law to 16-bit signed little-endian PCM (same sample rate)."""
    return audioop.ulaw2lin(bytes(ulaw), 2)


def pcm16_to_ulaw(pcm: bytes | bytearray) -> bytes:
    """Encode 16-bit signed little-endian PCM as μ-law (same sample rate)."""
    return audioop.lin2ulaw(bytes(pcm), 2)


class WavFormatError(ValueError):
    """The file is not a WAV this module can read."""


def read_audio_as_ulaw(path: str | Path) -> bytes:
    """Read a WAV file, or a headerless μ-law 8 kHz mono file (``.ulaw``/``.raw``…).

    Raw files are what the test fixtures and Twilio payloads are, so accepting them lets the
    simulator replay a captured call byte for byte.
    """
    p = Path(path)
    if p.suffix.lower() in _RAW_ULAW_SUFFIXES:
        return p.read_bytes()
    return read_wav_as_ulaw(p)


def read_wav_as_ulaw(path: str | Path) -> bytes:
    """Convert any common WAV file to raw μ-law 8 kHz mono (what Twilio sends).

    Accepts PCM 8/16/24/32-bit, 32-bit float, μ-law and A-law, at any sample rate, mono or
    stereo (stereo is mixed down), including WAVE_FORMAT_EXTENSIBLE headers. ``wave`` alone
    only reads plain PCM, so the RIFF chunks are parsed here. A file that already is μ-law
    8 kHz mono is returned bit-exact.
    """
    data = Path(path).read_bytes()
    fmt_tag, channels, rate, bits, frames = _parse_wav(data)
    if channels not in (1, 2):
        raise WavFormatError(f"{channels} channels: only mono or stereo WAV is supported")

    if fmt_tag == _WAVE_FORMAT_MULAW and channels == 1 and rate == SAMPLE_RATE:
        return frames

    pcm = _to_pcm16(fmt_tag, bits, frames)
    if channels == 2:
        pcm = audioop.tomono(pcm, 2, 0.5, 0.5)
    if rate != SAMPLE_RATE:
        pcm, _ = audioop.ratecv(pcm, 2, 1, rate, SAMPLE_RATE, None)
    return audioop.lin2ulaw(pcm, 2)


def write_ulaw_wav(path: str | Path, ulaw: bytes | bytearray, *, encoding: str = "pcm16") -> None:
    """Write μ-law 8 kHz mono audio as a WAV file.

    ``encoding="pcm16"`` (default) decodes to 16-bit PCM, which every player and editor
    opens. ``encoding="ulaw"`` keeps the bytes as they were on the wire (format tag 7,
    half the size, lossless with respect to the call) for players that support it.
    """
    p = Path(path)
    if encoding == "pcm16":
        with wave.open(str(p), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(ulaw_to_pcm16(ulaw))
    elif encoding == "ulaw":
        p.write_bytes(_ulaw_wav_bytes(bytes(ulaw)))
    else:
        raise ValueError(f"encoding must be 'pcm16' or 'ulaw', not {encoding!r}")


def _ulaw_wav_bytes(ulaw: bytes) -> bytes:
    # Non-PCM WAV: 18-byte fmt chunk (cbSize = 0) plus the 'fact' chunk the spec requires.
    fmt = struct.pack(
        "<HHIIHHH",
        _WAVE_FORMAT_MULAW,
        1,  # channels
        SAMPLE_RATE,
        SAMPLE_RATE,  # byte rate
        1,  # block align
        8,  # bits per sample
        0,  # cbSize
    )
    fact = struct.pack("<I", len(ulaw))
    pad = b"\x00" if len(ulaw) % 2 else b""
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<I", len(fact))
        + fact
        + b"data"
        + struct.pack("<I", len(ulaw))
        + ulaw
        + pad
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _parse_wav(data: bytes) -> tuple[int, int, int, int, bytes]:
    """Return (format tag, channels, sample rate, bits per sample, sample bytes)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavFormatError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    frames: bytes | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise WavFormatError("fmt chunk too short")
            tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _WAVE_FORMAT_EXTENSIBLE:
                if len(body) < 26:
                    raise WavFormatError("WAVE_FORMAT_EXTENSIBLE fmt chunk too short")
                # The sub-format GUID starts with the real format tag.
                (tag,) = struct.unpack_from("<H", body, 24)
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            # Some writers leave the size at 0/0xFFFFFFFF when streaming; take what is there.
            frames = body if size not in (0, 0xFFFFFFFF) else data[pos + 8 :]
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise WavFormatError("no fmt chunk")
    if frames is None:
        raise WavFormatError("no data chunk")
    tag, channels, rate, bits = fmt
    if rate <= 0 or channels <= 0:
        raise WavFormatError(f"invalid WAV header: {channels} channels at {rate} Hz")
    return tag, channels, rate, bits, frames


def _to_pcm16(fmt_tag: int, bits: int, frames: bytes) -> bytes:
    """Decode WAV sample data to 16-bit signed little-endian PCM, channels left interleaved."""
    if fmt_tag == _WAVE_FORMAT_MULAW:
        return audioop.ulaw2lin(frames, 2)
    if fmt_tag == _WAVE_FORMAT_ALAW:
        return audioop.alaw2lin(frames, 2)
    if fmt_tag == _WAVE_FORMAT_PCM:
        width = bits // 8
        if bits % 8 or width not in (1, 2, 3, 4):
            raise WavFormatError(f"unsupported PCM sample size: {bits} bits")
        frames = frames[: len(frames) - len(frames) % width]
        if width == 1:
            # 8-bit WAV is unsigned; audioop expects signed.
            frames = audioop.bias(frames, 1, -128)
        return frames if width == 2 else audioop.lin2lin(frames, width, 2)
    if fmt_tag == _WAVE_FORMAT_IEEE_FLOAT:
        if bits != 32:
            raise WavFormatError(f"unsupported float sample size: {bits} bits")
        count = len(frames) // 4
        floats = struct.unpack(f"<{count}f", frames[: count * 4])
        ints = (max(-32768, min(32767, round(x * 32767.0))) for x in floats)
        return struct.pack(f"<{count}h", *ints)
    raise WavFormatError(f"unsupported WAV format tag 0x{fmt_tag:04x}")
