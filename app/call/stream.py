"""The socket loops of one call: Twilio's media stream on one side, the Realtime
WebSocket on the other, `CallBridge` in between. Thin by design: parse, hand over, send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from litestar import WebSocket
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from app.call.bridge import CallBridge
from app.logs import call_sid_var
from app.realtime.connection import connect_realtime
from app.realtime.events import Error, parse_server_event
from app.realtime.session import AgentConfig
from app.settings import Settings
from app.storage.base import TranscriptStore
from app.telephony.messages import (
    Connected,
    MessageError,
    Start,
    UnknownEvent,
    parse_message,
)
from app.telephony.signatures import InvalidToken, StreamTokens, webhook_signature_valid

log = logging.getLogger("voicebridge.call")

START_TIMEOUT_S = 10.0
TRANSCRIPTION_GRACE_S = 0.8  # after hang-up, wait this long at most for the last caller text


NORMAL_CLOSURE = 1000
POLICY_VIOLATION = 1008


@dataclass
class CallServices:
    """What every call shares: settings, the transcript store, stream tokens, live calls."""

    settings: Settings
    store: TranscriptStore
    tokens: StreamTokens
    active: set[str] = field(default_factory=set)
    start_timeout_s: float = START_TIMEOUT_S


async def handle_media_stream(socket: WebSocket[Any, Any, Any], services: CallServices) -> None:
    """Serve one Twilio media stream from `start` to hang-up, then save the transcript.

    Nothing reaches OpenAI (no session is even opened) before `start` proves the stream
    belongs to a call we answered.
    """
    await socket.accept()
    if not _handshake_signed(socket, services.settings):
        log.warning("rejected a media stream: bad X-Twilio-Signature on the handshake")
        await _close(socket, POLICY_VIOLATION)
        return
    try:
        start = await asyncio.wait_for(_receive_start(socket), services.start_timeout_s)
    except TimeoutError:
        log.warning("no start message within %.1f s; closing stream", services.start_timeout_s)
        await _close(socket, POLICY_VIOLATION)
        return
    if start is None:
        return
    call_sid_var.set(start.start.call_sid)
    refusal = _refusal(start, services)
    if refusal is not None:
        log.warning("rejected a media stream: %s", refusal)
        await _close(socket, POLICY_VIOLATION)
        return
    bridge = CallBridge(AgentConfig.from_settings(services.settings))
    call = bridge.start(start)
    services.active.add(call.call_sid)
    log.info(
        "call started",
        extra={"direction": call.direction, "from_": call.from_number, "to": call.to_number},
    )
    try:
        await _bridge_call(socket, bridge, services.settings)
    finally:
        services.active.discard(call.call_sid)
        await _close(socket, NORMAL_CLOSURE)
        await _save_transcript(bridge, services.store)


def _handshake_signed(socket: WebSocket[Any, Any, Any], settings: Settings) -> bool:
    """Check `X-Twilio-Signature` on the upgrade request when Twilio sends one (it signs
    the wss:// URL with no parameters); its absence is not proof of anything."""
    signature = socket.headers.get("x-twilio-signature")
    if signature is None or not settings.twilio_validate_signatures:
        return True
    assert settings.twilio_auth_token is not None and settings.stream_url is not None
    token = settings.twilio_auth_token.get_secret_value()
    return webhook_signature_valid(token, settings.stream_url, {}, signature)


def _refusal(start: Start, services: CallServices) -> str | None:
    """Why this stream may not become a call, or None when it may."""
    call_sid = start.start.call_sid
    if services.settings.twilio_validate_signatures:
        try:
            services.tokens.verify(start.start.custom_parameters.get("token"), call_sid)
        except InvalidToken as error:
            return str(error)
    if call_sid in services.active:
        return "a stream for this call is already open"
    if len(services.active) >= services.settings.max_concurrent_calls:
        return "too many concurrent calls"
    return None


async def _receive_start(socket: WebSocket[Any, Any, Any]) -> Start | None:
    """Skip `connected`; return the `start` message, or None if the socket closed."""
    while True:
        text = await _receive_text(socket)
        if text is None:
            return None
        try:
            message = parse_message(text)
        except MessageError as error:
            log.warning("malformed message before start: %s", error)
            continue
        if isinstance(message, Start):
            return message
        if not isinstance(message, Connected):
            log.warning("ignoring %s message before start", _event_name(message))


async def _bridge_call(
    socket: WebSocket[Any, Any, Any], bridge: CallBridge, settings: Settings
) -> None:
    try:
        realtime = await connect_realtime(settings)
    except (OSError, TimeoutError, InvalidHandshake) as error:
        detail = f"HTTP {error.response.status_code}" if isinstance(error, InvalidStatus) else error
        log.error("could not open the OpenAI Realtime session: %s", detail)
        return
    try:
        await _send_openai(realtime, bridge)
        from_twilio = asyncio.create_task(_pump_twilio(socket, realtime, bridge))
        from_openai = asyncio.create_task(_pump_openai(socket, realtime, bridge))
        await asyncio.wait({from_twilio, from_openai}, return_when=asyncio.FIRST_COMPLETED)
        if from_twilio.done():
            log.info("caller hung up" if bridge.stopped else "Twilio stream closed")
            await _await_transcription(bridge, from_openai)
        else:
            log.info("OpenAI session ended")
        for task in (from_twilio, from_openai):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
    finally:
        await realtime.close()


async def _pump_twilio(
    socket: WebSocket[Any, Any, Any], realtime: ClientConnection, bridge: CallBridge
) -> None:
    """Twilio → bridge → OpenAI, until `stop` or the socket closes."""
    warned: set[str] = set()
    while not bridge.stopped:
        text = await _receive_text(socket)
        if text is None:
            return
        try:
            message = parse_message(text)
            if isinstance(message, UnknownEvent):
                _warn_once(warned, message.event, "ignoring unknown Twilio event %r", message.event)
                continue
            bridge.twilio_message(message)
        except MessageError as error:
            _warn_once(warned, str(error), "bad message from Twilio: %s", error)
            continue
        await _send_openai(realtime, bridge)


async def _pump_openai(
    socket: WebSocket[Any, Any, Any], realtime: ClientConnection, bridge: CallBridge
) -> None:
    """OpenAI → bridge → Twilio (and back to OpenAI for truncation), until it closes."""
    async for data in realtime:
        event = parse_server_event(data)
        if event is None:
            continue
        if isinstance(event, Error):
            log.warning(
                "OpenAI error: %s",
                event.error.message,
                extra={"code": event.error.code, "type": event.error.type},
            )
        bridge.realtime_event(event)
        for frame in bridge.data_to_twilio():
            await socket.send_data(frame)
        await _send_openai(realtime, bridge)


async def _send_openai(realtime: ClientConnection, bridge: CallBridge) -> None:
    for frame in bridge.data_to_openai():
        await realtime.send(frame)


async def _await_transcription(bridge: CallBridge, from_openai: asyncio.Task[None]) -> None:
    """Give the last caller turn's transcription a moment to arrive before closing."""
    transcript = bridge.transcript
    deadline = asyncio.get_running_loop().time() + TRANSCRIPTION_GRACE_S
    while (  # noqa: ASYNC110 - the bridge is sans-I/O: it has no event to await
        transcript is not None
        and transcript.untranscribed_caller_turns
        and not from_openai.done()
        and asyncio.get_running_loop().time() < deadline
    ):
        await asyncio.sleep(0.05)


async def _receive_text(socket: WebSocket[Any, Any, Any]) -> str | None:
    """The next text frame; None once the socket has closed. Binary frames are skipped."""
    while True:
        message = await socket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        log.warning("ignoring a binary frame from Twilio")


async def _close(socket: WebSocket[Any, Any, Any], code: int) -> None:
    if socket.connection_state != "disconnect":
        with contextlib.suppress(Exception):
            await socket.close(code)


async def _save_transcript(bridge: CallBridge, store: TranscriptStore) -> None:
    transcript = bridge.transcript
    if transcript is None:
        return
    record = transcript.to_record(ended_at=datetime.now(UTC))
    try:
        where = await asyncio.to_thread(store.save, record)
    except Exception:
        log.exception("could not save the transcript")
        return
    log.info(
        "call ended; transcript saved",
        extra={"turns": len(record["turns"]), "duration_s": record["duration_s"], "to": where},
    )


def _warn_once(seen: set[str], key: str, message: str, *args: object) -> None:
    if key not in seen:
        seen.add(key)
        log.warning(message, *args)


def _event_name(message: object) -> str:
    return message.event if isinstance(message, UnknownEvent) else type(message).__name__.lower()
