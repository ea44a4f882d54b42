"""OpenAI Realtime (GA) events: typed decoding of the server events the bridge acts on,
and builders for the client events it sends.

Only GA names exist here (`response.output_audio.delta`, `conversation.item.added`, …);
beta shapes are gone from the API and from this module.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec

from voicebridge.bad_input import BadInput
from voicebridge.ulaw import SAMPLE_RATE

_encode = msgspec.json.Encoder().encode


class _Event(msgspec.Struct, tag_field="type", gc=False):
    """Only the fields the bridge reads are declared (the rest are skipped, not
    decoded), and events are not tracked by the garbage collector (decoded JSON holds
    no cycles)."""


class SessionCreated(_Event, tag="session.created"):
    session: dict[str, Any] = msgspec.field(default_factory=dict)


class SessionUpdated(_Event, tag="session.updated"):
    session: dict[str, Any] = msgspec.field(default_factory=dict)


class SpeechStarted(_Event, tag="input_audio_buffer.speech_started"):
    item_id: str
    audio_start_ms: int = 0


class SpeechStopped(_Event, tag="input_audio_buffer.speech_stopped"):
    item_id: str
    audio_end_ms: int = 0


class Item(msgspec.Struct):
    id: str
    type: str = "message"
    role: str | None = None


class ItemAdded(_Event, tag="conversation.item.added"):
    item: Item
    previous_item_id: str | None = None


class ItemCreated(_Event, tag="conversation.item.created"):
    item: Item
    previous_item_id: str | None = None


class InputTranscriptCompleted(_Event, tag="conversation.item.input_audio_transcription.completed"):
    item_id: str
    transcript: str


class InputTranscriptFailed(_Event, tag="conversation.item.input_audio_transcription.failed"):
    item_id: str
    error: dict[str, Any] = msgspec.field(default_factory=dict)


class AudioDelta(_Event, tag="response.output_audio.delta"):
    item_id: str
    delta: str


class OutputTranscriptDone(_Event, tag="response.output_audio_transcript.done"):
    item_id: str
    transcript: str


class FunctionCallArgumentsDone(_Event, tag="response.function_call_arguments.done"):
    call_id: str
    name: str
    arguments: str
    item_id: str = ""
    response_id: str = ""


class InputTokenDetails(msgspec.Struct):
    text_tokens: int | None = None
    audio_tokens: int | None = None
    cached_tokens: int | None = None


class OutputTokenDetails(msgspec.Struct):
    text_tokens: int | None = None
    audio_tokens: int | None = None


class Usage(msgspec.Struct):
    """Typed down to the counts, so a count of the wrong type is a bad event, not a
    crash in the bridge's arithmetic."""

    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: InputTokenDetails = msgspec.field(default_factory=InputTokenDetails)
    output_token_details: OutputTokenDetails = msgspec.field(default_factory=OutputTokenDetails)


class Response(msgspec.Struct):
    id: str = ""
    status: str = ""
    status_details: dict[str, Any] | None = None
    usage: Usage | None = None


class ResponseCreated(_Event, tag="response.created"):
    response: Response


class ResponseDone(_Event, tag="response.done"):
    response: Response


class ErrorInfo(msgspec.Struct):
    message: str = ""
    type: str = ""
    code: str | None = None
    param: str | None = None
    event_id: str | None = None


class Error(_Event, tag="error"):
    error: ErrorInfo


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | ItemAdded
    | ItemCreated
    | InputTranscriptCompleted
    | InputTranscriptFailed
    | AudioDelta
    | OutputTranscriptDone
    | FunctionCallArgumentsDone
    | ResponseCreated
    | ResponseDone
    | Error
)


class EventError(BadInput):
    """An event from OpenAI that is not a usable Realtime event."""


class _TypeOnly(msgspec.Struct):
    type: str


_decoder = msgspec.json.Decoder(ServerEvent)
_type_only = msgspec.json.Decoder(_TypeOnly)
_HANDLED = frozenset(event.__struct_config__.tag for event in get_args(ServerEvent))


def parse_server_event(data: str | bytes) -> ServerEvent | None:
    """Decode a server event; None for event types the bridge does not act on.

    The Realtime API sends many events we have no use for (deltas of transcripts,
    content parts, rate limits); they are skipped without building objects. Raises
    `EventError` for what is not a well-formed event (deep nesting included: msgspec
    raises RecursionError for it), or not of the shape its type promises.
    """
    try:
        event: ServerEvent = _decoder.decode(data)
        return event
    except msgspec.ValidationError as error:
        failure = str(error)
    except msgspec.DecodeError as error:
        raise EventError(str(error), "bad JSON") from None
    except RecursionError:
        raise EventError("nested too deeply", "nested too deeply") from None
    try:  # an event of a type we don't handle, or a bad one?
        handled = _type_only.decode(data).type in _HANDLED
    except (msgspec.DecodeError, RecursionError):
        handled = True  # not even a type: a bad event
    if handled:
        raise EventError(failure)
    return None


_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_PADDING = {b"": "", b"=": "=", b"==": "=="}
MAX_DELTA_BYTES = SAMPLE_RATE * 10  # 10 s of μ-law: 50 times a long delta (200 ms), still bounded


def audio_bytes(delta: str) -> int:
    """The size of a delta's audio, once it is checked to be clean base64 of a sane size:
    it goes to Twilio spliced into JSON, where a quote or a backslash would break out.

    Not decoded, so it stays cheap per delta: deleting the alphabet must leave only the
    padding (at most two `=`, at the end), and UTF-8 bytes of anything else stay.
    """
    padding = _PADDING.get(delta.encode().translate(None, _BASE64))
    if padding is None or len(delta) % 4 or not delta.endswith(padding):
        raise EventError("audio delta is not base64", "bad audio")
    size = len(delta) // 4 * 3 - len(padding)
    if not 0 < size <= MAX_DELTA_BYTES:
        raise EventError(f"audio delta of {size} bytes", "bad audio")
    return size


# Client events ---------------------------------------------------------------------

_APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'


def append_audio(payload_b64: str) -> str:
    """The hot path: Twilio's base64 μ-law goes on unchanged, no decode, no re-encode."""
    return f'{_APPEND_PREFIX}{payload_b64}"}}'


def truncate(item_id: str, audio_end_ms: int) -> str:
    return _encode(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": audio_end_ms,
        }
    ).decode()


def create_response(instructions: str | None = None) -> str:
    event: dict[str, Any] = {"type": "response.create"}
    if instructions:
        event["response"] = {"instructions": instructions}
    return _encode(event).decode()


def conversation_message(item_id: str, role: str, text: str) -> str:
    """A past turn, re-told to a new session: caller turns as user text, agent turns as
    assistant text (a new session cannot be given the old audio)."""
    user = role == "caller"
    item = {
        "id": item_id,
        "type": "message",
        "role": "user" if user else "assistant",
        "content": [{"type": "input_text" if user else "output_text", "text": text}],
    }
    return _encode({"type": "conversation.item.create", "item": item}).decode()


def user_text(text: str) -> str:
    """Something the caller did that isn't speech (a keypress), told to the model as text."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return _encode({"type": "conversation.item.create", "item": item}).decode()


def function_output(call_id: str, output: str) -> str:
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return _encode({"type": "conversation.item.create", "item": item}).decode()


def encode(event: dict[str, Any]) -> str:
    return _encode(event).decode()
