"""OpenAI Realtime (GA) events: typed decoding of the server events the bridge acts on,
and builders for the client events it sends.

Only GA names exist here (`response.output_audio.delta`, `conversation.item.added`, …);
beta shapes are gone from the API and from this module.
"""

from __future__ import annotations

from typing import Any

import msgspec

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


class Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: dict[str, Any] = msgspec.field(default_factory=dict)
    output_token_details: dict[str, Any] = msgspec.field(default_factory=dict)


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

_decoder = msgspec.json.Decoder(ServerEvent)


def parse_server_event(data: str | bytes) -> ServerEvent | None:
    """Decode a server event; None for event types the bridge does not act on.

    The Realtime API sends many events we have no use for (deltas of transcripts,
    content parts, rate limits); they are skipped without building objects.
    """
    try:
        event: ServerEvent = _decoder.decode(data)
        return event
    except msgspec.DecodeError:
        return None


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
