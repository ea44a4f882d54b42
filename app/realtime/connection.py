"""The Realtime WebSocket, kept as lean as an audio path can be.

websockets' sans-I/O `ClientProtocol` does the protocol work: the opening handshake
(GA: bearer auth, no `OpenAI-Beta` header), parsing what OpenAI sends, answering pings
and closing. The I/O around it is one asyncio protocol with nothing else to do. Text
frames are written straight to the transport (no lock, task or await unless the socket
is backed up), and their mask keys come from a pool of OS randomness instead of one
getrandom() call per frame. Profiling the bridge at 50 calls put websockets' general
asyncio client send path at 40 % of the server's busy time (bench/README.md).

There is no keepalive ping: a dead OpenAI socket shows as a stalled session, which the
call's watchdog replaces (see `CallBridge.stalled`).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from collections import deque
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import CLOSED, OPEN
from websockets.uri import parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension ships in websockets' wheels
    from websockets.utils import apply_mask

from app.settings import Settings

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 1.0  # a hung-up call must release its OpenAI session within a second
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
USER_AGENT = "voicebridge"
# Received messages the call has not taken yet; past this many, stop reading the socket.
MAX_QUEUED = 64

_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_FIN_TEXT = 0x81
_MASKED = 0x80


class MaskKeys:
    """Four fresh random bytes per client frame (RFC 6455 §5.3), drawn from the OS 4 KiB
    at a time: one getrandom() call per thousand frames instead of one per frame."""

    POOL_BYTES = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(self.POOL_BYTES)
            at = 0
        self._at = at + 4
        return self._pool[at : at + 4]


def masked_text_frame(payload: bytes, mask: bytes) -> bytes:
    """One final, masked text frame: what `Frame.serialize(mask=True)` writes."""
    length = len(payload)
    if length < 126:
        header = bytes((_FIN_TEXT, _MASKED | length))
    elif length < 1 << 16:
        header = _MEDIUM.pack(_FIN_TEXT, _MASKED | 126, length)
    else:
        header = _LONG.pack(_FIN_TEXT, _MASKED | 127, length)
    return b"".join((header, mask, apply_mask(payload, mask)))


_mask_keys = MaskKeys()  # one event loop thread uses it; keys are never reused


class RealtimeConnection(asyncio.Protocol):
    """One open Realtime session's socket: `send` text, `recv` messages, `close`."""

    def __init__(self, protocol: ClientProtocol) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._protocol = protocol
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] = loop.create_future()
        self._lost: asyncio.Future[None] = loop.create_future()
        self._messages: deque[bytes] = deque()
        self._fragments: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._close_timer: asyncio.TimerHandle | None = None
        self.write_paused = False

    # -- what the call uses ------------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        """The code OpenAI closed with (1006 when the socket just went away), or None."""
        return self._protocol.close_code

    def send(self, text: str) -> None:
        """Queue a text message on the socket now. Raises ConnectionClosed once closing;
        when `write_paused` turns true, await `drain()` before sending more."""
        if self._protocol.state is not OPEN or self._transport is None:
            raise self._closed_error()
        self._transport.write(masked_text_frame(text.encode(), _mask_keys.next()))

    async def drain(self) -> None:
        """Wait until the kernel takes our writes again (OpenAI reads slower than we send)."""
        if self.write_paused:
            self._drained = self._loop.create_future()
            await self._drained

    async def recv(self) -> bytes:
        """The next message's payload (text is not decoded: the JSON decoder takes bytes).
        Raises ConnectionClosed once the socket is closed and every message taken."""
        messages = self._messages
        while not messages:
            if self._lost.done():
                raise self._closed_error()
            self._waiter = self._loop.create_future()
            await self._waiter
        if self._reading_paused and len(messages) <= MAX_QUEUED // 4:
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        return messages.popleft()

    async def close(self) -> None:
        """Close the session (1000) and wait at most `CLOSE_TIMEOUT_S` for OpenAI to
        finish the closing handshake; after that, or if cancelled, drop the socket."""
        if self._protocol.state is OPEN:
            self._protocol.send_close(1000)
            self._flush()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(self._lost)
        finally:
            if not self._lost.done() and self._transport is not None:
                self._transport.abort()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's isn't a subclass
        self._flush()  # the handshake request

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame):
                self._frame_received(event)
            elif not self._opened.done():  # the handshake's response
                assert isinstance(event, Response)
                error = protocol.handshake_exc
                if error is None:
                    self._opened.set_result(None)
                else:
                    self._opened.set_exception(error)
        self._flush()
        if protocol.close_expected() and self._close_timer is None:
            assert self._transport is not None
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_S, self._transport.abort)

    def eof_received(self) -> None:
        self._protocol.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.receive_eof()  # idempotent: the protocol's state becomes CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self._opened.done():
            self._opened.set_exception(exc or ConnectionError("closed during the handshake"))
        self._lost.set_result(None)
        for waiter in (self._waiter, self._drained):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- internals ---------------------------------------------------------------------

    def _frame_received(self, frame: Frame) -> None:
        """Whole messages go to the queue; pings, pongs and close are the protocol's."""
        opcode = frame.opcode
        data = cast(bytes, frame.data)  # what Frame.parse reads is bytes
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(data)
            else:
                self._fragments = [data]
        elif opcode is Opcode.CONT:
            self._fragments.append(data)
            if frame.fin:
                self._deliver(b"".join(self._fragments))
                self._fragments = []

    def _deliver(self, message: bytes) -> None:
        self._messages.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._messages) >= MAX_QUEUED and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def _flush(self) -> None:
        """Write what the protocol has for the network; its empty write means EOF."""
        transport = self._transport
        if transport is None:
            return
        for data in self._protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()

    def _closed_error(self) -> ConnectionClosed:
        if self._protocol.state is CLOSED:
            return self._protocol.close_exc
        return ConnectionClosed(self._protocol.close_rcvd, self._protocol.close_sent)

    async def _handshake(self) -> None:
        await self._opened


async def connect_realtime(settings: Settings) -> RealtimeConnection:
    """Open a Realtime session's socket. Raises OSError or TimeoutError when OpenAI can't
    be reached in `CONNECT_TIMEOUT_S`, InvalidHandshake (InvalidStatus for an HTTP
    refusal, with its status code) when it won't take us."""
    uri = parse_uri(settings.realtime_url)
    protocol = ClientProtocol(uri, max_size=MAX_MESSAGE_BYTES)
    request = protocol.connect()
    request.headers["Authorization"] = f"Bearer {settings.openai_api_key.get_secret_value()}"
    request.headers["User-Agent"] = USER_AGENT
    protocol.send_request(request)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        _, connection = await loop.create_connection(
            lambda: RealtimeConnection(protocol),
            uri.host,
            uri.port,
            ssl=_tls() if uri.secure else None,
        )
        try:
            await connection._handshake()
        except BaseException:
            if connection._transport is not None:
                connection._transport.abort()
            raise
    return connection


_tls_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    """The system's trusted CAs, loaded once rather than on every reconnect."""
    global _tls_context
    if _tls_context is None:
        _tls_context = ssl.create_default_context()
    return _tls_context


__all__ = ["ConnectionClosed", "InvalidHandshake", "RealtimeConnection", "connect_realtime"]
