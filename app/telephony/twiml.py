"""TwiML documents the voice webhook answers with."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import Connect, VoiceResponse


def connect_stream(stream_url: str, parameters: Mapping[str, str]) -> str:
    """Open a bidirectional Media Stream to `stream_url`.

    Nothing follows `</Connect>`: when our server closes the stream the call simply
    ends, so the caller is never left listening to silence.
    """
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml())


def say_and_hang_up(message: str) -> str:
    """Speak a short message and end the call (used when we cannot take the call)."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response.to_xml())
