"""Twilio Media Streams messages: typed parsing of what Twilio sends, and the three
messages we may send back (`media`, `mark`, `clear`).

Parsing is strict about shape (msgspec) so that a malformed frame is one clear
`MessageError`, never a KeyError deep inside the bridge. The structs declare only the
fields the bridge reads (the rest are skipped, not decoded: 50 media messages a second
per call) and are not tracked by the garbage collector (decoded JSON holds no cycles).
"""

from __future__ import annotations

import msgspec

from voicebridge.bad_input import BadInput


class MessageError(BadInput):
    """A frame from Twilio that is not a valid Media Streams message."""


class _Message(msgspec.Struct, tag_field="event", rename="camel", gc=False):
    pass


class Connected(_Message, tag="connected"):
    protocol: str = ""
    version: str = ""


class MediaFormat(msgspec.Struct, rename="camel"):
    encoding: str
    sample_rate: int
    channels: int = 1


class StartInfo(msgspec.Struct, rename="camel"):
    call_sid: str
    stream_sid: str
    account_sid: str = ""
    tracks: list[str] = msgspec.field(default_factory=lambda: ["inbound"])
    media_format: MediaFormat | None = None
    custom_parameters: dict[str, str] = msgspec.field(default_factory=dict)


class Start(_Message, tag="start"):
    stream_sid: str
    start: StartInfo
    sequence_number: str = ""


class MediaPayload(msgspec.Struct, gc=False):
    payload: str
    timestamp: int | None = None  # Twilio sends digits in a string: the decoder converts
    track: str = "inbound"


class Media(_Message, tag="media"):
    media: MediaPayload


class MarkInfo(msgspec.Struct, gc=False):
    name: str


class Mark(_Message, tag="mark"):
    mark: MarkInfo


class DtmfInfo(msgspec.Struct):
    digit: str
    track: str = ""


class Dtmf(_Message, tag="dtmf"):
    dtmf: DtmfInfo


class StopInfo(msgspec.Struct, rename="camel"):
    account_sid: str = ""
    call_sid: str = ""


class Stop(_Message, tag="stop"):
    stop: StopInfo | None = None


class UnknownEvent(msgspec.Struct):
    """An event name we do not handle; ignored by the bridge, logged once."""

    event: str


TwilioMessage = Connected | Start | Media | Mark | Dtmf | Stop

_decoder = msgspec.json.Decoder(TwilioMessage, strict=False)  # numbers come as strings
_event_only = msgspec.json.Decoder(UnknownEvent)
_KNOWN_EVENTS = frozenset({"connected", "start", "media", "mark", "dtmf", "stop"})


def parse_message(data: str | bytes) -> TwilioMessage | UnknownEvent:
    """Parse one text frame from Twilio.

    Raises `MessageError` with a short reason for anything that is not a well-formed
    message (deep nesting included: msgspec raises RecursionError for it); returns
    `UnknownEvent` for a well-formed message of an event we don't know.
    """
    try:
        message: TwilioMessage = _decoder.decode(data)
        return message
    except msgspec.DecodeError as error:
        failure = error
    except RecursionError:
        raise MessageError("nested too deeply", "nested too deeply") from None
    try:
        unknown = _event_only.decode(data)
    except (msgspec.DecodeError, RecursionError):
        raise _error(failure) from None
    if unknown.event in _KNOWN_EVENTS:
        raise _error(failure)
    return unknown


def _error(error: msgspec.DecodeError) -> MessageError:
    if isinstance(error, msgspec.ValidationError):
        return MessageError(str(error))
    return MessageError(str(error).replace("JSON is malformed", "not JSON"), "bad JSON")


class StreamWriter:
    """Builds the frames we send to one Twilio stream.

    The streamSid is JSON-encoded once; the hot `media` frame is then plain string
    concatenation around a base64 payload, which needs no escaping.
    """

    # A fixed layout: attribute reads on the audio path stay fast.
    __slots__ = ("_clear", "_mark_prefix", "_media_prefix")

    def __init__(self, stream_sid: str) -> None:
        sid = msgspec.json.encode(stream_sid).decode()
        self._media_prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":"'
        self._clear = '{"event":"clear","streamSid":' + sid + "}"

    def media(self, payload_b64: str) -> str:
        return f'{self._media_prefix}{payload_b64}"}}}}'

    def mark(self, name: str) -> str:
        """A mark; `name` must be JSON-safe (we only use our own short names)."""
        return f'{self._mark_prefix}{name}"}}}}'

    def clear(self) -> str:
        return self._clear
