"""Junk for either side of a call: the malformed messages of the red team's report
(issue 16), of every kind the bridge must drop, log once and count.

`twilio_junk(n)` is the n-th junk message of a hostile media stream: its kinds in turn,
each unknown event under a new name (an attacker varying the name must not get a log
line per message), some of them carrying newlines that would forge log lines.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection

# Deeper than the decoders recurse on every Python we run: the red team's 1000 levels (2 KB)
# were too deep for 3.11 but decode on 3.12, whose C recursion limit is higher. 20,000
# levels (40 KB) stay under the 64 KiB frame limit.
DEPTH = 20_000
# The red team's message, nested that deep.
DEEPLY_NESTED = '{"event":"media","x":' + "[" * DEPTH + "]" * DEPTH + "}"
FORGED_LINE = "\n00:00:00.000 INFO    voicebridge.call call=CA0 call started"


def _media(payload: Any) -> str:
    return json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": payload}})


TWILIO_JUNK: list[Callable[[int], str | bytes]] = [
    lambda n: "{not JSON " + str(n),
    lambda n: DEEPLY_NESTED,
    lambda n: json.dumps({"event": f"surprise_{n}_" + "x" * 30_000}),  # long, and new each time
    lambda n: json.dumps({"event": f"surprise_{n}{FORGED_LINE}"}),
    lambda n: _media("not base64!" + FORGED_LINE),
    lambda n: _media(base64.b64encode(b"\x7f" * 4000).decode()),  # not a 20 ms frame
    lambda n: _media(n),  # a number where a string belongs
    lambda n: json.dumps({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": "#!"}}),
    lambda n: bytes([n % 256]) * 16,  # a binary frame
]


def twilio_junk(n: int) -> str | bytes:
    return TWILIO_JUNK[n % len(TWILIO_JUNK)](n)


async def send_twilio_junk(ws: ClientConnection, count: int) -> None:
    """Send `count` junk messages on a media stream."""
    for n in range(count):
        await ws.send(twilio_junk(n))


def _audio_delta(delta: str) -> str:
    event = {"type": "response.output_audio.delta", "item_id": "item_junk", "delta": delta}
    return json.dumps(event)


# Server events that are not what they claim, for the Realtime double to inject.
OPENAI_JUNK: list[str] = [
    "{not JSON",
    '{"type":"session.updated","session":{"x":' + "[" * DEPTH + "]" * DEPTH + "}}",
    json.dumps(
        {  # a count of the wrong type, deep in a response.done
            "type": "response.done",
            "response": {
                "id": "resp_junk",
                "usage": {"input_token_details": {"audio_tokens": "lots"}},
            },
        }
    ),
    json.dumps({"type": "input_audio_buffer.speech_started", "item_id": 7}),
    _audio_delta('AAAA"},"x":{"y":"'),  # a quote: would break out of Twilio's JSON
    _audio_delta("AA\nA"),
    _audio_delta("not base64"),
    _audio_delta("===="),
]
