"""TwiML documents the voice webhook answers with."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import Connect, VoiceResponse


def connect_stream(
    stream_url: str, parameters: Mapping[str, str], action_url: str | None = None
) -> str:
    """Open a bidirectional Media Stream to `stream_url`.

    Nothing follows `</Connect>`. If our server ends the stream while the caller is still
    on the line (OpenAI unreachable, the session failed), Twilio asks `action_url` what to
    do next, which answers with a short apology instead of dead air.
    """
    response = VoiceResponse()
    connect = Connect(action=action_url) if action_url else Connect()
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


def hang_up() -> str:
    """End the call at once, saying nothing."""
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())
