"""A test double of the OpenAI Realtime API (GA interface): a real WebSocket server on loopback.

Why a real server and not a mock: the bridge's Realtime client is then exercised exactly as
in production (HTTP upgrade, headers, JSON text frames, concurrent send/receive, close codes),
and every event it sends is checked against the GA schema the `openai` package ships. The
beta interface is switched off on the real service, so anything beta-shaped the bridge sends
is recorded in `RealtimeDouble.violations` (tests assert that list stays empty).

What the double simulates (see the class docstring for the knobs):

- `session.created` / `session.update` → `session.updated` with the full effective config;
- an energy VAD over the appended μ-law audio (audio time, not wall clock, so it is
  deterministic): `speech_started` / `speech_stopped` / `committed` / user item, then a
  response; input transcription arrives asynchronously after a delay, usually after the
  reply's first audio, like the real service;
- responses that play scripted `AgentLine`s (audio + transcript, or a function call), in the
  real GA event order, faster than real time;
- barge-in (`interrupt_response`) and `response.cancel` → `response.done` `cancelled`;
- `conversation.item.truncate` with the real error for truncating past the produced audio;
- fault knobs: HTTP rejection, dropped socket, stalled server, echo mode for benchmarks,
  raw events injected as is (`inject`).

The double never understands language: `response.create` with instructions still plays the
next scripted line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import logging
import math
import random
import re
import secrets
import time
import typing
import warnings
from array import array
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pydantic
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voicebridge.ulaw import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, SAMPLE_RATE, silence

with warnings.catch_warnings():
    # audioop is deprecated (removed in 3.13, where the `audioop-lts` package provides it).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "BYTES_PER_MS",
    "DEFAULT_AGENT_LINES",
    "ECHO_ITEM_ID",
    "ECHO_RESPONSE_ID",
    "AgentLine",
    "ItemRecord",
    "RealtimeDouble",
    "ReceivedEvent",
    "ResponseRecord",
    "SessionRecord",
    "SpeechTurn",
    "TruncateError",
    "client_event_problems",
    "noise_ulaw",
    "server_event_problems",
    "silence_ulaw",
    "tone_ulaw",
]

log = logging.getLogger(__name__)

JSON = dict[str, Any]
T = TypeVar("T")

ECHO_RESPONSE_ID = "resp_echo"
ECHO_ITEM_ID = "item_echo"
_MIN_COMMIT_BYTES = 100 * BYTES_PER_MS  # the real server refuses to commit < 100 ms
_MAX_FRAME = 32 * 2**20  # an append may carry up to 15 MiB of audio, base64-encoded


# --------------------------------------------------------------------------- audio helpers


def silence_ulaw(ms: int) -> bytes:
    """μ-law digital silence (0xFF decodes to 0), as Twilio and the bridge use for gaps."""
    return silence(ms)


def tone_ulaw(ms: int, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine tone as μ-law 8 kHz: loud enough for the double's VAD to call it speech."""
    samples = array(
        "h",
        (
            int(amplitude * math.sin(2 * math.pi * freq * i / SAMPLE_RATE))
            for i in range(ms * BYTES_PER_MS)
        ),
    )
    return audioop.lin2ulaw(samples.tobytes(), 2)


def noise_ulaw(ms: int, amplitude: int = 150, seed: int = 0) -> bytes:
    """Low Gaussian line noise as μ-law: below the VAD threshold by default (RMS ≈ amplitude)."""
    rng = random.Random(seed)
    samples = array(
        "h", (max(-32768, min(32767, int(rng.gauss(0, amplitude)))) for _ in range(ms * 8))
    )
    return audioop.lin2ulaw(samples.tobytes(), 2)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_len(text: str) -> int:
    """Decoded length of base64 text without decoding it (the echo path stays cheap)."""
    return len(text) * 3 // 4 - text[-2:].count("=") if text else 0


# --------------------------------------------------------------------------- schema checks


def _adapters_by_type(union_alias: Any) -> dict[str, pydantic.TypeAdapter[Any]]:
    """One TypeAdapter per member of an `openai` event union, keyed by its `type` literal.

    The SDK's unions are discriminated on `type` (via its own `PropertyInfo`, which pydantic
    ignores); dispatching on `type` first is what a discriminated union does, and gives one
    readable error list instead of one per union member.
    """
    union = typing.get_args(union_alias)[0]
    adapters: dict[str, pydantic.TypeAdapter[Any]] = {}
    for cls in typing.get_args(union):
        for name in typing.get_args(cls.model_fields["type"].annotation):
            adapters[name] = pydantic.TypeAdapter(cls)
    return adapters


_CLIENT_ADAPTERS = _adapters_by_type(RealtimeClientEvent)
_SERVER_ADAPTERS: dict[str, pydantic.TypeAdapter[Any]] = {}


def _extras(value: Any, path: str) -> list[tuple[str, list[str]]]:
    """Every (path, unknown keys) in a validated model tree.

    The `openai` models accept unknown keys, so a beta-shaped field (`modalities`,
    `input_audio_format`, `temperature`…) validates; only `model_extra` reveals it.
    """
    found: list[tuple[str, list[str]]] = []
    if isinstance(value, pydantic.BaseModel):
        if value.model_extra:
            found.append((path, sorted(value.model_extra)))
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found += _extras(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _extras(item, f"{path}.{key}" if path else str(key))
    return found


@dataclass(frozen=True)
class _Problem:
    code: str  # the error code the real API would answer with
    message: str


def _is_branch(part: int | str) -> bool:
    """Pydantic names the union member it tried (a class name) inside an error location."""
    return isinstance(part, str) and part[:1].isupper()


def _loc(loc: Sequence[int | str]) -> str:
    """A field path as the API would name it: union member names left out."""
    return ".".join(str(part) for part in loc if not _is_branch(part))


def _validation_problems(exc: pydantic.ValidationError) -> list[_Problem]:
    """Readable problems: drop union members whose `type` did not match (the wrong branch,
    not the client's mistake), show the keys of an object lacking a required field (that is
    how a beta-shaped object looks), and merge what the remaining branches say per field."""
    errors = exc.errors(include_url=False)
    wrong = {
        tuple(err["loc"][:-1])
        for err in errors
        if err["type"] == "literal_error"
        and err["loc"][-1:] == ("type",)
        and len(err["loc"]) >= 2
        and _is_branch(err["loc"][-2])
    }
    kept = [e for e in errors if not any(tuple(e["loc"][: len(w)]) == w for w in wrong)]
    if not kept:  # no member's `type` matched: report the deepest mismatch, merged
        deepest = max(len(e["loc"]) for e in errors)
        kept = [e for e in errors if len(e["loc"]) == deepest]
    by_path: dict[str, list[str]] = {}
    codes: dict[str, str] = {}
    for err in kept:
        path = _loc(err["loc"])
        message = err["msg"]
        if err["type"] == "missing" and isinstance(err.get("input"), dict):
            message += f" (object has keys {sorted(err['input'])})"
        if message not in by_path.setdefault(path, []):
            by_path[path].append(message)
        codes[path] = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
    return [_Problem(codes[p], f"'{p}': " + " | ".join(m)) for p, m in by_path.items()]


def _problems(
    adapter: pydantic.TypeAdapter[Any],
    raw: str | bytes,
    allowed_extras: Mapping[str, set[str]] | None = None,
) -> list[_Problem]:
    """Strict GA-schema problems of one raw JSON event ([] when it is valid).

    Strict mode, because the real API refuses `1000.0` for an integer and `"1"` for a number.
    """
    try:
        model = adapter.validate_json(raw, strict=True)
    except pydantic.ValidationError as exc:
        return _validation_problems(exc)
    allowed = allowed_extras or {}
    problems = []
    for path, keys in _extras(model, ""):
        unknown = [k for k in keys if k not in allowed.get(path, set())]
        if unknown:
            names = ", ".join(f"'{path}.{k}'" if path else f"'{k}'" for k in unknown)
            problems.append(_Problem("unknown_parameter", f"unknown parameter(s) {names}"))
    return problems


def client_event_problems(raw: str | bytes) -> list[str]:
    """Problems of one client event as raw JSON against the GA schema ([] = valid)."""
    try:
        etype = json.loads(raw).get("type")
    except (ValueError, AttributeError):
        return ["not a JSON object"]
    adapter = _CLIENT_ADAPTERS.get(etype)
    if adapter is None:
        return [f"unknown client event type {etype!r}"]
    return [p.message for p in _problems(adapter, raw)]


def server_event_problems(raw: str | bytes) -> list[str]:
    """Problems of one server event as raw JSON against the GA schema ([] = valid).

    The session object really carries `id`, `object` and `expires_at`, which the SDK's
    session model does not declare; those are allowed.
    """
    if not _SERVER_ADAPTERS:
        _SERVER_ADAPTERS.update(_adapters_by_type(RealtimeServerEvent))
    try:
        etype = json.loads(raw).get("type")
    except (ValueError, AttributeError):
        return ["not a JSON object"]
    adapter = _SERVER_ADAPTERS.get(etype)
    if adapter is None:
        return [f"unknown server event type {etype!r}"]
    allowed = {"session": {"id", "object", "expires_at"}}
    return [p.message for p in _problems(adapter, raw, allowed)]


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class AgentLine:
    """One scripted reply of the agent.

    `audio` is μ-law 8 kHz; None synthesizes a tone of 300 ms per word (at least 500 ms).
    With `function_call=(name, arguments_json)` the response is a function call instead
    of audio; with `audio` as well, the agent speaks first and then calls the function in
    the same response (a goodbye before `end_call`).
    """

    text: str = ""
    audio: bytes | None = None
    function_call: tuple[str, str] | None = None

    def pcmu(self) -> bytes:
        if self.audio is not None:
            return self.audio
        return tone_ulaw(max(500, 300 * len(self.text.split())), freq=330.0, amplitude=6000)


DEFAULT_AGENT_LINES: tuple[AgentLine, ...] = (
    AgentLine("Hello! This is the test agent. How can I help you today?"),
    AgentLine("Sure, I can help with that."),
    AgentLine("Is there anything else I can do for you?"),
)


@dataclass
class ReceivedEvent:
    """A client event as received: `t` is `time.monotonic()` at receipt."""

    t: float
    type: str
    data: JSON


@dataclass
class SpeechTurn:
    """A caller turn found by the VAD (or a manual commit), in audio ms of the session."""

    item_id: str
    audio_start_ms: int
    audio_end_ms: int | None = None
    transcript: str | None = None


@dataclass
class ItemRecord:
    """A conversation item; for assistant audio, how much audio was produced and truncated."""

    id: str
    type: str
    role: str | None
    source: str  # "vad" | "commit" | "client" | "response"
    data: JSON
    produced_bytes: int = 0
    truncated_ms: int | None = None

    @property
    def produced_ms(self) -> int:
        return self.produced_bytes // BYTES_PER_MS


@dataclass
class ResponseRecord:
    """One response: what triggered it, which line it played, how it ended."""

    id: str
    trigger: str  # "turn" (VAD turn end) | "client" (response.create)
    line: AgentLine
    create_event: JSON | None
    created_at: float
    item_id: str | None = None
    status: str = "in_progress"
    cancel_reason: str | None = None
    produced_bytes: int = 0
    done_at: float | None = None
    usage: JSON | None = None

    @property
    def produced_ms(self) -> int:
        return self.produced_bytes // BYTES_PER_MS


@dataclass
class TruncateError:
    """A refused `conversation.item.truncate` (produced_ms is None for an unknown item)."""

    item_id: str
    audio_end_ms: int
    produced_ms: int | None
    message: str


@dataclass
class SessionRecord:
    """Everything one WebSocket connection did; tests read these to assert behaviour."""

    index: int
    path: str
    query: dict[str, str]
    model: str | None
    headers: dict[str, str]  # lower-case names
    session_id: str
    connected_at: float
    config: JSON = field(default_factory=dict)  # effective session config
    events: list[ReceivedEvent] = field(default_factory=list)
    sent: list[JSON] = field(default_factory=list)
    audio_bytes: int = 0
    turns: list[SpeechTurn] = field(default_factory=list)
    truncations: list[tuple[str, int, float]] = field(default_factory=list)
    responses: list[ResponseRecord] = field(default_factory=list)
    response_creates: list[JSON] = field(default_factory=list)
    item_creates: list[JSON] = field(default_factory=list)
    items: dict[str, ItemRecord] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    dropped: bool = False
    closed: bool = False
    close_code: int | None = None
    close_reason: str | None = None

    @property
    def audio_ms(self) -> int:
        return self.audio_bytes // BYTES_PER_MS

    def events_of(self, etype: str) -> list[JSON]:
        """The client events of one type, in order."""
        return [e.data for e in self.events if e.type == etype]

    def sent_of(self, etype: str) -> list[JSON]:
        """The server events of one type this connection sent, in order."""
        return [e for e in self.sent if e.get("type") == etype]


# --------------------------------------------------------------------------- small helpers


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


_MERGED_KEYS = {"audio", "input", "output"}


def _merge(dst: JSON, src: Mapping[str, Any]) -> None:
    """Apply a session.update: only present fields change; config objects are replaced whole
    (a new `format` or `turn_detection` must not inherit keys of the old one)."""
    for key, value in src.items():
        if key in _MERGED_KEYS and isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


def _words(text: str) -> list[str]:
    """Transcript deltas: words with their leading space, so they concatenate to the text."""
    return re.findall(r"\s*\S+", text)


# --------------------------------------------------------------------------- connection


@dataclass
class _Active:
    record: ResponseRecord
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class _Connection:
    """Protocol state of one WebSocket connection (one Realtime session)."""

    def __init__(self, double: RealtimeDouble, ws: ServerConnection, record: SessionRecord):
        self.double = double
        self.ws = ws
        self.record = record
        self.conversation_id = _new_id("conv")
        self.conversation: list[str] = []  # item ids in order
        self.tasks: set[asyncio.Task[None]] = set()
        self.active: _Active | None = None
        self.audio_output_started = False
        self.warned: set[str] = set()
        self.muted = False
        # VAD state, in bytes of μ-law audio appended to this session
        self.vad_pos = 0
        self.vad_rest = b""
        self.uncommitted = 0
        self.turn: SpeechTurn | None = None
        self.silence_ms = 0
        self.last_input_tokens = 0
        self.handlers: dict[str, Callable[[JSON], Awaitable[None]]] = {
            "session.update": self.on_session_update,
            "input_audio_buffer.append": self.on_append,
            "input_audio_buffer.commit": self.on_commit,
            "input_audio_buffer.clear": self.on_clear,
            "output_audio_buffer.clear": self.on_output_clear,
            "conversation.item.create": self.on_item_create,
            "conversation.item.truncate": self.on_truncate,
            "conversation.item.delete": self.on_item_delete,
            "conversation.item.retrieve": self.on_item_retrieve,
            "response.create": self.on_response_create,
            "response.cancel": self.on_response_cancel,
        }

    # ----------------------------------------------------------------- plumbing

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(self.guard(coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def guard(self, coro: Awaitable[None]) -> None:
        """Background work must never raise: a closed socket ends it, a bug is recorded."""
        try:
            await coro
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.double._internal_error(exc)

    async def send(self, event: JSON) -> None:
        double = self.double
        if self.muted:
            return
        event = {"event_id": _new_id("event"), **event}
        self.record.sent.append(event)
        await self.ws.send(json.dumps(event))
        sent = len(self.record.sent)
        if double.answer_events is not None and sent >= double.answer_events:
            self.muted = True
        if double.close_after_events is not None and sent >= double.close_after_events:
            self.muted = True
            self.record.dropped = True
            self.spawn(self.ws.close(1011, "internal server error"))

    async def error(
        self,
        code: str | None,
        message: str,
        *,
        param: str | None = None,
        event: JSON | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        client_event_id = event.get("event_id") if event else None
        await self.send(
            {
                "type": "error",
                "error": {
                    "type": kind,
                    "code": code,
                    "message": message,
                    "param": param,
                    "event_id": client_event_id,
                },
            }
        )

    def violation(self, etype: str, problem: str) -> None:
        text = f"{etype}: {problem}"
        log.warning("Realtime double: protocol violation: %s", text)
        self.record.violations.append(text)
        self.double.violations.append(text)

    def violation_once(self, key: str, etype: str, problem: str) -> None:
        """For per-frame problems: one entry per connection, not one per append."""
        if key not in self.warned:
            self.warned.add(key)
            self.violation(etype, problem)

    @property
    def turn_detection(self) -> JSON | None:
        td = _get(self.record.config, "audio", "input", "turn_detection")
        return td if isinstance(td, dict) else None

    def format_of(self, direction: str) -> str | None:
        fmt = _get(self.record.config, "audio", direction, "format", "type")
        return fmt if isinstance(fmt, str) else None

    def add_item(self, item: ItemRecord, after: str | None = None) -> str | None:
        """Insert an item (at the end, or after `after`); returns its previous_item_id."""
        self.record.items[item.id] = item
        if after == "root":
            self.conversation.insert(0, item.id)
            return None
        if after is not None and after in self.conversation:
            self.conversation.insert(self.conversation.index(after) + 1, item.id)
            return after
        previous = self.conversation[-1] if self.conversation else None
        self.conversation.append(item.id)
        return previous

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        double = self.double
        if double.drop_after_s is not None and (double.drop_every or self.record.index == 0):
            self.spawn(self.drop_later(double.drop_after_s))
        if double.stall:
            async for message in self.ws:  # accept and record, never answer
                self.record_raw(message)
            return
        if "openai-beta" in self.record.headers:
            self.violation(
                "handshake", f"OpenAI-Beta header sent: {self.record.headers['openai-beta']}"
            )
            await self.error(
                "beta_api_shape_disabled",
                "The beta Realtime API shape is disabled; remove the OpenAI-Beta header "
                "and use the GA interface.",
            )
            await self.ws.close(4000, "beta_api_shape_disabled")
            return
        model = self.record.model
        if not model:
            self.violation("handshake", "no ?model= in the URL")
            await self.error("missing_model", "Missing required parameter: 'model'.")
        elif "preview" in model:
            self.violation("handshake", f"model {model!r} is shut down (preview models)")
            await self.error("model_not_found", f"The model '{model}' does not exist.")
        await self.send({"type": "session.created", "session": copy.deepcopy(self.record.config)})
        async for message in self.ws:
            await self.on_message(message)

    async def drop_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.record.dropped = True
        await self.ws.close(1011, "internal server error")

    async def cleanup(self) -> None:
        """Stop background work of a closed connection (response generator, transcriptions)."""
        if self.active is not None:
            self.active.cancel.set()
        current = asyncio.current_task()
        pending = [t for t in self.tasks if t is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # ----------------------------------------------------------------- receiving

    def record_raw(self, message: str | bytes) -> JSON | None:
        t = time.monotonic()
        if isinstance(message, bytes):
            self.record.events.append(ReceivedEvent(t, "<binary>", {"size": len(message)}))
            return None
        try:
            data = json.loads(message)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.record.events.append(ReceivedEvent(t, "<invalid json>", {"raw": message[:500]}))
            return None
        etype = data.get("type")
        self.record.events.append(ReceivedEvent(t, etype if isinstance(etype, str) else "", data))
        return data

    async def on_message(self, message: str | bytes) -> None:
        double = self.double
        data = self.record_raw(message)
        if data is None:
            kind = "a binary frame" if isinstance(message, bytes) else "invalid JSON"
            self.violation("<frame>", f"{kind} (only JSON text frames are accepted)")
            await self.error("invalid_json", f"We could not parse the JSON body: {kind}.")
            return
        etype = data.get("type")
        if not isinstance(etype, str) or etype not in _CLIENT_ADAPTERS:
            self.violation(str(etype), "unknown client event type")
            await self.error(
                "invalid_value",
                f"Invalid value: {etype!r}. Supported values are: "
                + ", ".join(f"'{t}'" for t in _CLIENT_ADAPTERS)
                + ".",
                param="type",
                event=data,
            )
            return
        if double.validate:
            problems = _problems(_CLIENT_ADAPTERS[etype], message)
            if problems:
                self.violation(etype, "; ".join(p.message for p in problems))
                await self.error(
                    problems[0].code,
                    "Invalid event: " + "; ".join(p.message for p in problems),
                    event=data,
                )
                return
        if double.echo and etype == "input_audio_buffer.append":
            await self.echo(data)
            return
        await self.handlers[etype](data)

    # ----------------------------------------------------------------- session

    async def on_session_update(self, event: JSON) -> None:
        session = event["session"]
        voice = _get(session, "audio", "output", "voice")
        current = _get(self.record.config, "audio", "output", "voice")
        if voice is not None and voice != current and self.audio_output_started:
            self.violation("session.update", "voice changed after the first audio output")
            await self.error(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                param="session.audio.output.voice",
                event=event,
            )
            return
        _merge(self.record.config, session)
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.record.config)})

    # ----------------------------------------------------------------- input audio

    async def echo(self, event: JSON) -> None:
        """Benchmark path: hand the audio straight back, no VAD, no decoding."""
        audio = event.get("audio")
        if not isinstance(audio, str):
            return
        self.record.audio_bytes += _b64_len(audio)
        await self.send(
            {
                "type": "response.output_audio.delta",
                "response_id": ECHO_RESPONSE_ID,
                "item_id": ECHO_ITEM_ID,
                "output_index": 0,
                "content_index": 0,
                "delta": audio,
            }
        )

    async def on_append(self, event: JSON) -> None:
        try:
            audio = base64.b64decode(event["audio"], validate=True)
        except (binascii.Error, ValueError):
            self.violation("input_audio_buffer.append", "audio is not valid base64")
            await self.error(
                "invalid_value",
                "Invalid 'audio'. Expected base64-encoded audio.",
                param="audio",
                event=event,
            )
            return
        fmt = self.format_of("input")
        if fmt != "audio/pcmu":
            self.violation_once(
                "input-format",
                "input_audio_buffer.append",
                f"audio appended while audio.input.format is {fmt!r}, not 'audio/pcmu'",
            )
        self.record.audio_bytes += len(audio)
        self.uncommitted += len(audio)
        if self.turn_detection is None:  # manual turns: the client commits
            self.vad_pos += len(audio)
            return
        await self.vad(audio)

    async def vad(self, audio: bytes) -> None:
        """Energy VAD over 20 ms frames, on audio time: deterministic however fast audio comes."""
        td = self.turn_detection or {}
        silence_needed = td.get("silence_duration_ms")
        if not isinstance(silence_needed, int):
            silence_needed = self.double.silence_duration_ms
        buf = self.vad_rest + audio
        whole = len(buf) - len(buf) % FRAME_BYTES
        self.vad_rest = buf[whole:]
        if not whole:
            return
        linear = audioop.ulaw2lin(buf[:whole], 2)
        for off in range(0, whole, FRAME_BYTES):
            start_ms = self.vad_pos // BYTES_PER_MS
            self.vad_pos += FRAME_BYTES
            frame = linear[off * 2 : (off + FRAME_BYTES) * 2]
            loud = audioop.rms(frame, 2) >= self.double.vad_threshold_rms
            if self.turn is None:
                if loud:
                    await self.speech_started(start_ms)
            elif loud:
                self.silence_ms = 0
            else:
                self.silence_ms += FRAME_MS
                if self.silence_ms >= silence_needed:
                    await self.speech_stopped(self.vad_pos // BYTES_PER_MS)

    async def speech_started(self, frame_start_ms: int) -> None:
        td = self.turn_detection or {}
        padding = td.get("prefix_padding_ms")
        if not isinstance(padding, int):
            padding = self.double.prefix_padding_ms
        turn = SpeechTurn(_new_id("item"), max(0, frame_start_ms - padding))
        self.turn = turn
        self.silence_ms = 0
        self.record.turns.append(turn)
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": turn.audio_start_ms,
                "item_id": turn.item_id,
            }
        )
        if self.active is not None and td.get("interrupt_response") is not False:
            await self.cancel_active("turn_detected")

    async def speech_stopped(self, end_ms: int) -> None:
        turn = self.turn
        assert turn is not None
        turn.audio_end_ms = end_ms
        self.turn = None
        await self.send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": end_ms,
                "item_id": turn.item_id,
            }
        )
        await self.commit(turn, "vad")
        td = self.turn_detection or {}
        if td.get("create_response") is not False and self.active is None:
            await self.start_response("turn", None)

    async def commit(self, turn: SpeechTurn, source: str) -> None:
        """Commit the buffer as a user audio item; transcribe it later, asynchronously."""
        self.uncommitted = 0
        item = {
            "id": turn.item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        previous = self.add_item(ItemRecord(turn.item_id, "message", "user", source, item))
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": turn.item_id,
                "previous_item_id": previous,
            }
        )
        for etype in ("conversation.item.added", "conversation.item.done"):
            await self.send({"type": etype, "previous_item_id": previous, "item": item})
        if _get(self.record.config, "audio", "input", "transcription"):
            self.spawn(self.transcribe(turn, item))

    async def transcribe(self, turn: SpeechTurn, item: JSON) -> None:
        await asyncio.sleep(self.double.transcript_delay_s)
        duration = (turn.audio_end_ms or turn.audio_start_ms) - turn.audio_start_ms
        text = self.double._next_transcript(duration)
        turn.transcript = text
        item["content"][0]["transcript"] = text
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": turn.item_id,
                "content_index": 0,
                "transcript": text,
                "usage": {"type": "duration", "seconds": round(duration / 1000, 3)},
            }
        )

    async def on_commit(self, event: JSON) -> None:
        if self.uncommitted < _MIN_COMMIT_BYTES:
            ms = self.uncommitted / BYTES_PER_MS
            await self.error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {ms:.2f}ms of audio.",
                event=event,
            )
            return
        end_ms = self.vad_pos // BYTES_PER_MS
        turn = self.turn or SpeechTurn(
            _new_id("item"), max(0, end_ms - self.uncommitted // BYTES_PER_MS)
        )
        if self.turn is None:
            self.record.turns.append(turn)
        turn.audio_end_ms = end_ms
        self.turn = None
        await self.commit(turn, "commit")

    async def on_clear(self, event: JSON) -> None:
        self.uncommitted = 0
        self.turn = None
        self.silence_ms = 0
        await self.send({"type": "input_audio_buffer.cleared"})

    async def on_output_clear(self, event: JSON) -> None:
        self.violation("output_audio_buffer.clear", "WebRTC/SIP only; not on a WebSocket")
        await self.error(
            "invalid_value",
            "output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
            param="type",
            event=event,
        )

    # ----------------------------------------------------------------- items

    async def on_item_create(self, event: JSON) -> None:
        self.record.item_creates.append(event)
        item = copy.deepcopy(event["item"])
        item_id = item.get("id") or _new_id("item")
        if item_id in self.record.items:
            await self.error(
                "item_already_exists",
                f"Item with id '{item_id}' already exists.",
                param="item.id",
                event=event,
            )
            return
        if item.get("type") == "function_call_output":
            known = {
                i.data.get("call_id")
                for i in self.record.items.values()
                if i.type == "function_call"
            }
            if item.get("call_id") not in known:
                self.violation(
                    "conversation.item.create",
                    f"function_call_output for unknown call_id {item.get('call_id')!r}",
                )
        item.update(id=item_id, object="realtime.item", status="completed")
        record = ItemRecord(item_id, item["type"], item.get("role"), "client", item)
        previous = self.add_item(record, event.get("previous_item_id"))
        for etype in ("conversation.item.added", "conversation.item.done"):
            await self.send({"type": etype, "previous_item_id": previous, "item": item})

    async def on_truncate(self, event: JSON) -> None:
        item_id: str = event["item_id"]
        audio_end_ms: int = event["audio_end_ms"]
        item = self.record.items.get(item_id)
        if item is None or item.role != "assistant":
            message = f"Invalid 'item_id': no assistant message with id '{item_id}' found."
            self.double.truncate_errors.append(TruncateError(item_id, audio_end_ms, None, message))
            await self.error("item_truncate_invalid_item_id", message, param="item_id", event=event)
            return
        produced = item.produced_ms
        if audio_end_ms > produced:
            message = f"Audio content of {produced}ms is already shorter than {audio_end_ms}ms"
            self.double.truncate_errors.append(
                TruncateError(item_id, audio_end_ms, produced, message)
            )
            await self.error("invalid_value", message, param="audio_end_ms", event=event)
            return
        item.truncated_ms = audio_end_ms
        self.record.truncations.append((item_id, audio_end_ms, time.monotonic()))
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": event["content_index"],
                "audio_end_ms": audio_end_ms,
            }
        )

    async def on_item_delete(self, event: JSON) -> None:
        item_id = event["item_id"]
        if item_id not in self.conversation:
            await self.error(
                "item_delete_invalid_item_id",
                f"Item with item_id not found: {item_id}",
                param="item_id",
                event=event,
            )
            return
        self.conversation.remove(item_id)
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def on_item_retrieve(self, event: JSON) -> None:
        item = self.record.items.get(event["item_id"])
        if item is None or item.id not in self.conversation:
            await self.error(
                "item_retrieve_invalid_item_id",
                f"Item with item_id not found: {event['item_id']}",
                param="item_id",
                event=event,
            )
            return
        await self.send({"type": "conversation.item.retrieved", "item": item.data})

    # ----------------------------------------------------------------- responses

    async def on_response_create(self, event: JSON) -> None:
        self.record.response_creates.append(event)
        await self.start_response("client", event)

    async def on_response_cancel(self, event: JSON) -> None:
        wanted = event.get("response_id")
        if self.active is None or (wanted and wanted != self.active.record.id):
            await self.error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                event=event,
            )
            return
        await self.cancel_active("client_cancelled")

    async def cancel_active(self, reason: str) -> None:
        """Stop the generator between two events and wait for its cancelled tail, so the
        client sees `response.done` (cancelled) before anything this handler sends next."""
        active = self.active
        if active is None:
            return
        active.record.cancel_reason = reason
        active.cancel.set()
        if active.task is not None:
            await asyncio.shield(active.task)

    async def start_response(self, trigger: str, event: JSON | None) -> None:
        if self.active is not None:
            await self.error(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{self.active.record.id}. Wait until the response is finished before "
                "creating a new one.",
                event=event,
            )
            return
        line = self.double._next_line()
        if line.function_call is None or line.audio is not None:
            fmt = self.format_of("output")
            if fmt != "audio/pcmu":
                self.violation_once(
                    "output-format",
                    "response",
                    f"audio response while audio.output.format is {fmt!r}, not 'audio/pcmu'",
                )
        record = ResponseRecord(_new_id("resp"), trigger, line, event, time.monotonic())
        self.record.responses.append(record)
        active = _Active(record)
        self.active = active
        active.task = self.spawn(self.run_response(active))

    async def pause(self, active: _Active, seconds: float) -> None:
        """Sleep, but wake at once when the response is cancelled."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(active.cancel.wait(), seconds)

    def response_object(self, record: ResponseRecord, output: list[JSON]) -> JSON:
        metadata = _get(record.create_event, "response", "metadata")
        status_details = None
        if record.status == "cancelled":
            status_details = {"type": "cancelled", "reason": record.cancel_reason}
        return {
            "object": "realtime.response",
            "id": record.id,
            "status": record.status,
            "status_details": status_details,
            "output": output,
            "conversation_id": self.conversation_id,
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {
                "output": {
                    "format": _get(self.record.config, "audio", "output", "format"),
                    "voice": _get(self.record.config, "audio", "output", "voice"),
                }
            },
            "usage": record.usage,
            "metadata": metadata,
        }

    async def run_response(self, active: _Active) -> None:
        record = active.record
        try:
            await self.pause(active, self.double.response_latency_s)
            await self.send(
                {"type": "response.created", "response": self.response_object(record, [])}
            )
            await self.send(
                {
                    "type": "rate_limits.updated",
                    "rate_limits": [
                        {
                            "name": "requests",
                            "limit": 5000,
                            "remaining": 4999,
                            "reset_seconds": 0.012,
                        },
                        {
                            "name": "tokens",
                            "limit": 400000,
                            "remaining": 395000,
                            "reset_seconds": 0.75,
                        },
                    ],
                }
            )
            output: list[JSON] = []
            if not active.cancel.is_set():
                line = record.line
                if line.function_call is None or line.audio is not None:
                    output.append(await self.audio_reply(active))  # spoken, then maybe a call
                if line.function_call is not None and not active.cancel.is_set():
                    output.append(await self.function_call(active))
            record.status = "cancelled" if active.cancel.is_set() else "completed"
            record.usage = self.usage(record)
            record.done_at = time.monotonic()
            # Free the slot before response.done goes out: a client reacting to it with
            # response.create must not see conversation_already_has_active_response.
            self.active = None
            await self.send(
                {"type": "response.done", "response": self.response_object(record, output)}
            )
        finally:
            if self.active is active:
                self.active = None

    async def audio_reply(self, active: _Active) -> JSON:
        record = active.record
        double = self.double
        item_id = _new_id("item")
        record.item_id = item_id
        item: JSON = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        item_record = ItemRecord(item_id, "message", "assistant", "response", item)
        previous = self.add_item(item_record)
        ids = {"response_id": record.id, "item_id": item_id, "output_index": 0}
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": record.id,
                "output_index": 0,
                "item": item,
            }
        )
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        await self.send(
            {
                "type": "response.content_part.added",
                **ids,
                "content_index": 0,
                "part": {"type": "audio", "transcript": ""},
            }
        )
        audio = record.line.pcmu()
        size = max(1, double.chunk_bytes)
        chunks = [audio[i : i + size] for i in range(0, len(audio), size)]
        words = _words(record.line.text)
        said = 0
        pace = double.realtime_factor
        for n, chunk in enumerate(chunks, start=1):
            if active.cancel.is_set():
                break
            for word in words[said : math.ceil(n * len(words) / len(chunks))]:
                await self.send(
                    {
                        "type": "response.output_audio_transcript.delta",
                        **ids,
                        "content_index": 0,
                        "delta": word,
                    }
                )
                said += 1
            # Count before sending: the client may truncate as soon as it has the bytes.
            item_record.produced_bytes += len(chunk)
            record.produced_bytes += len(chunk)
            self.audio_output_started = True
            await self.send(
                {
                    "type": "response.output_audio.delta",
                    **ids,
                    "content_index": 0,
                    "delta": _b64(chunk),
                }
            )
            seconds = len(chunk) / BYTES_PER_MS / 1000
            await self.pause(active, seconds / pace if 0 < pace < math.inf else 0)
        if not chunks and not active.cancel.is_set():
            said = len(words)
        transcript = "".join(words[:said])
        cancelled = active.cancel.is_set()
        await self.send({"type": "response.output_audio.done", **ids, "content_index": 0})
        await self.send(
            {
                "type": "response.output_audio_transcript.done",
                **ids,
                "content_index": 0,
                "transcript": transcript,
            }
        )
        await self.send(
            {
                "type": "response.content_part.done",
                **ids,
                "content_index": 0,
                "part": {"type": "audio", "transcript": transcript},
            }
        )
        item["status"] = "incomplete" if cancelled else "completed"
        item["content"] = [{"type": "output_audio", "transcript": transcript}]
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": record.id,
                "output_index": 0,
                "item": item,
            }
        )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item}
        )
        return item

    async def function_call(self, active: _Active) -> JSON:
        record = active.record
        assert record.line.function_call is not None
        name, arguments = record.line.function_call
        item_id = _new_id("item")
        call_id = _new_id("call")
        record.item_id = item_id
        item: JSON = {
            "id": item_id,
            "type": "function_call",
            "object": "realtime.item",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        previous = self.add_item(ItemRecord(item_id, "function_call", None, "response", item))
        ids = {"response_id": record.id, "item_id": item_id, "output_index": 0}
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": record.id,
                "output_index": 0,
                "item": item,
            }
        )
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        sent = ""
        for i in range(0, len(arguments), 16):
            if active.cancel.is_set():
                break
            piece = arguments[i : i + 16]
            sent += piece
            await self.send(
                {
                    "type": "response.function_call_arguments.delta",
                    **ids,
                    "call_id": call_id,
                    "delta": piece,
                }
            )
            await asyncio.sleep(0)
        await self.send(
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "call_id": call_id,
                "name": name,
                "arguments": sent,
            }
        )
        item["status"] = "incomplete" if active.cancel.is_set() else "completed"
        item["arguments"] = sent
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": record.id,
                "output_index": 0,
                "item": item,
            }
        )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item}
        )
        return item

    def usage(self, record: ResponseRecord) -> JSON:
        """Plausible token counts: user audio ≈ 10 tokens/s, assistant audio ≈ 20 tokens/s,
        text ≈ 4 characters per token; the whole conversation is input to every response,
        and what the previous response read counts as cached (in 64-token blocks)."""
        user_ms = sum(
            (t.audio_end_ms or t.audio_start_ms) - t.audio_start_ms for t in self.record.turns
        )
        earlier_ms = sum(r.produced_ms for r in self.record.responses if r is not record)
        text_chars = len(str(self.record.config.get("instructions") or ""))
        text_chars += len(json.dumps(self.record.config.get("tools") or []))
        text_chars += len(str(_get(record.create_event, "response", "instructions") or ""))
        for item in self.record.items.values():
            if item.source == "client":
                text_chars += len(json.dumps(item.data.get("content") or item.data))
        input_audio = round(user_ms / 1000 * 10 + earlier_ms / 1000 * 20)
        input_text = 8 + text_chars // 4
        input_total = input_audio + input_text
        cached = min(input_total, self.last_input_tokens // 64 * 64)
        cached_audio = min(cached, input_audio)
        self.last_input_tokens = input_total
        output_audio = round(record.produced_ms / 1000 * 20)
        line = record.line
        spoken = line.function_call[1] if line.function_call else line.text
        output_text = 1 + len(spoken) // 4
        return {
            "total_tokens": input_total + output_audio + output_text,
            "input_tokens": input_total,
            "output_tokens": output_audio + output_text,
            "input_token_details": {
                "text_tokens": input_text,
                "audio_tokens": input_audio,
                "cached_tokens": cached,
                "cached_tokens_details": {
                    "text_tokens": cached - cached_audio,
                    "audio_tokens": cached_audio,
                },
            },
            "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
        }


# --------------------------------------------------------------------------- the double


class RealtimeDouble:
    """A loopback WebSocket server speaking the OpenAI Realtime GA protocol.

    Use as `async with RealtimeDouble(...) as double:` and point the bridge at `double.url`.

    Knobs (all keyword-only; the fault knobs are plain attributes that can be changed
    between connections, e.g. reject once, then accept):

    - `agent_lines`: replies, played in order across all connections, cycling.
    - `caller_transcripts`: input transcripts, consumed in order; then a fallback text
      "caller utterance N (D ms)". Only sent when the session configures
      `audio.input.transcription` (as on the real service).
    - `vad_threshold_rms` (linear 16-bit RMS of a 20 ms frame), `silence_duration_ms` and
      `prefix_padding_ms`: VAD defaults; the session's `turn_detection` values win.
    - `transcript_delay_s`: delay of each `…input_audio_transcription.completed`.
    - `chunk_bytes` (audio per `response.output_audio.delta`), `realtime_factor` (how many
      times faster than real time audio is produced; 0 or inf = no pacing),
      `response_latency_s` (pause before `response.created`).
    - `validate`: check every client event against the GA schema.
    - `echo`: answer each append at once with one delta carrying the same audio.
    - `reject_status`: refuse the upgrade with this HTTP status (counted in `rejected`).
    - `drop_after_s` / `drop_every`: close with 1011 this long after connect (first
      connection only, or every one).
    - `stall`: accept, record what arrives, never send anything.
    - `answer_events`: each connection sends this many events, then goes quiet for good
      (it still answers pings: the socket looks alive); `mute()` quiets the live ones now.
    - `close_after_events`: each connection closes (1011) right after this many events.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        agent_lines: Sequence[AgentLine] | None = None,
        caller_transcripts: Sequence[str] = (),
        vad_threshold_rms: int = 500,
        silence_duration_ms: int = 500,
        prefix_padding_ms: int = 300,
        transcript_delay_s: float = 0.3,
        chunk_bytes: int = 800,
        realtime_factor: float = 10.0,
        response_latency_s: float = 0.0,
        validate: bool = True,
        echo: bool = False,
        reject_status: int | None = None,
        drop_after_s: float | None = None,
        drop_every: bool = False,
        stall: bool = False,
        answer_events: int | None = None,
        close_after_events: int | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.agent_lines: list[AgentLine] = list(agent_lines or DEFAULT_AGENT_LINES)
        self.caller_transcripts: list[str] = list(caller_transcripts)
        self.vad_threshold_rms = vad_threshold_rms
        self.silence_duration_ms = silence_duration_ms
        self.prefix_padding_ms = prefix_padding_ms
        self.transcript_delay_s = transcript_delay_s
        self.chunk_bytes = chunk_bytes
        self.realtime_factor = realtime_factor
        self.response_latency_s = response_latency_s
        self.validate = validate
        self.echo = echo
        self.reject_status = reject_status
        self.drop_after_s = drop_after_s
        self.drop_every = drop_every
        self.stall = stall
        self.answer_events = answer_events
        self.close_after_events = close_after_events

        self.sessions: list[SessionRecord] = []
        self.violations: list[str] = []
        self.truncate_errors: list[TruncateError] = []
        self.internal_errors: list[str] = []
        self.rejected = 0
        self.lines_played = 0
        self.utterances = 0
        self._server: Server | None = None
        self._live: set[_Connection] = set()

    # ----------------------------------------------------------------- lifecycle

    def mute(self) -> None:
        """Every open connection stops sending (fault injection: a backend that hangs
        behind a socket that still answers pings)."""
        for conn in self._live:
            conn.muted = True

    async def drop(self, code: int = 1011, reason: str = "internal server error") -> None:
        """Close every open connection now, as a failing server would (fault injection)."""
        for conn in list(self._live):
            conn.record.dropped = True
            await conn.ws.close(code, reason)

    async def inject(self, raw: str | bytes) -> None:
        """Send `raw` as is on the latest connection, as a faulty server would (fault
        injection: malformed events)."""
        conn = next(conn for conn in self._live if conn.record is self.latest)
        await conn.ws.send(raw)

    async def start(self) -> RealtimeDouble:
        self._server = await serve(
            self._handler,
            self.host,
            self._port,
            process_request=self._process_request,
            max_size=_MAX_FRAME,
        )
        return self

    async def stop(self) -> None:
        """Close every connection (1001) and wait until every handler has returned."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> RealtimeDouble:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("RealtimeDouble is not started")
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        """The base URL to configure as the Realtime URL (the bridge adds `?model=`)."""
        return f"ws://{self.host}:{self.port}/v1/realtime"

    # ----------------------------------------------------------------- state

    @property
    def connections(self) -> int:
        """Accepted WebSocket connections so far (rejected upgrades are in `rejected`)."""
        return len(self.sessions)

    @property
    def latest(self) -> SessionRecord:
        if not self.sessions:
            raise LookupError("no connection yet")
        return self.sessions[-1]

    @property
    def responses(self) -> list[ResponseRecord]:
        return [r for s in self.sessions for r in s.responses]

    def item(self, item_id: str) -> ItemRecord:
        for session in reversed(self.sessions):
            if item_id in session.items:
                return session.items[item_id]
        raise KeyError(item_id)

    def produced_ms(self, item_id: str) -> int:
        """Assistant audio produced so far for an item, in ms (8 bytes = 1 ms)."""
        return self.item(item_id).produced_ms

    async def wait_for(
        self, predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01
    ) -> T:
        """Poll `predicate()` until it returns something truthy, and return that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if loop.time() >= deadline:
                raise TimeoutError(f"RealtimeDouble.wait_for: not true after {timeout}s")
            await asyncio.sleep(interval)

    # ----------------------------------------------------------------- internals

    def _next_line(self) -> AgentLine:
        line = self.agent_lines[self.lines_played % len(self.agent_lines)]
        self.lines_played += 1
        return line

    def _next_transcript(self, duration_ms: int) -> str:
        index = self.utterances
        self.utterances += 1
        if index < len(self.caller_transcripts):
            return self.caller_transcripts[index]
        return f"caller utterance {index + 1} ({duration_ms} ms)"

    def _internal_error(self, exc: BaseException) -> None:
        log.error("Realtime double: internal error", exc_info=exc)
        self.internal_errors.append(repr(exc))

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.reject_status is not None:
            self.rejected += 1
            return connection.respond(self.reject_status, "rejected by the test double\n")
        path = urlsplit(request.path).path
        if path != "/v1/realtime":
            self.rejected += 1
            self.violations.append(f"handshake: wrong path {path!r} (expected /v1/realtime)")
            return connection.respond(404, "not found\n")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            self.rejected += 1
            self.violations.append("handshake: no 'Authorization: Bearer <key>' header")
            return connection.respond(401, "missing bearer authentication\n")
        return None

    def _new_record(self, ws: ServerConnection) -> SessionRecord:
        request = ws.request
        assert request is not None
        split = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        model = query.get("model")
        record = SessionRecord(
            index=len(self.sessions),
            path=request.path,
            query=query,
            model=model,
            headers={k.lower(): v for k, v in request.headers.raw_items()},
            session_id=_new_id("sess"),
            connected_at=time.monotonic(),
        )
        record.config = self._default_config(record.session_id, model)
        self.sessions.append(record)
        return record

    def _default_config(self, session_id: str, model: str | None) -> JSON:
        """The real service's defaults: PCM16 24 kHz in and out, server VAD, no transcription
        (so a bridge that forgets its session.update is caught)."""
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": model or "gpt-realtime",
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": int(time.time()) + 3600,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": self.prefix_padding_ms,
                        "silence_duration_ms": self.silence_duration_ms,
                        "idle_timeout_ms": None,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "voice": "marin",
                    "speed": 1.0,
                },
            },
            "include": None,
        }

    async def _handler(self, ws: ServerConnection) -> None:
        """One connection; never raises (a double that crashes tests nothing)."""
        try:
            record = self._new_record(ws)
        except Exception as exc:
            self._internal_error(exc)
            return
        conn = _Connection(self, ws, record)
        self._live.add(conn)
        try:
            await conn.run()
        except ConnectionClosed:
            pass
        except Exception as exc:
            self._internal_error(exc)
            with contextlib.suppress(Exception):
                await ws.close(1011, "test double internal error")
        finally:
            try:
                await conn.cleanup()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.wait_closed(), 2.0)
            except Exception as exc:
                self._internal_error(exc)
            self._live.discard(conn)
            record.closed = True
            record.close_code = ws.close_code
            record.close_reason = ws.close_reason
