"""The Realtime WebSocket, kept as lean as an audio path can be.

websockets' sans-I/O `ClientProtocol` does the protocol work: the opening handshake
(GA: bearer auth, no `OpenAI-Beta` header), pings, fragments, closing, refusals. The I/O
around it is one asyncio protocol with nothing else to do. Whole text messages are cut
from the stream by `voicebridge.wsframes` and handed to the call's callback as they arrive (no
queue, no task to wake), and text frames are written straight to the transport (no
lock, task or await), with mask keys from a pool of OS randomness instead of one
getrandom() call per frame. Profiling the bridge
at 50 calls put websockets' general asyncio client send path at 40 % of the server's
busy time (README, "Performance").

A socket that has gone quiet is pinged; one that stays quiet is dropped, so the call
opens a new session instead of talking into a dead connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections import deque
from collections.abc import Callable
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import CLOSED, OPEN
from websockets.uri import parse_uri

from voicebridge.settings import Settings
from voicebridge.wsframes import FrameSplitter, FrameWriter

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 1.0  # a hung-up call must release its OpenAI session within a second
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_RESPONSE_HEAD_BYTES = 64 * 1024
KEEPALIVE_S = 20.0  # quiet this long: ping; quiet as long again: the socket is dead
USER_AGENT = "voicebridge"
# Messages received before the call listens; past this many, stop reading the socket.
MAX_QUEUED = 64
# Our writes OpenAI has not read: past this, it has stopped reading and the session is dead.
MAX_UNSENT_BYTES = 1024 * 1024

_frames = FrameWriter(masked=True)  # one event loop thread uses it; keys are never reused


class RealtimeConnection(asyncio.Protocol):
    """One open Realtime session's socket: `send` text, `listen` for messages, `close`."""

    # A fixed layout: attribute reads on the audio path stay fast.
    __slots__ = (
        "_alive_timer",
        "_close_timer",
        "_fragments",
        "_head",
        "_heard",
        "_listener",
        "_loop",
        "_lost",
        "_messages",
        "_open",
        "_opened",
        "_pinged",
        "_protocol",
        "_reading_paused",
        "_splitter",
        "_transport",
        "_write_paused",
    )

    def __init__(self, protocol: ClientProtocol) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._protocol = protocol
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] = loop.create_future()
        self._lost: asyncio.Future[None] = loop.create_future()
        self._messages: deque[bytes] = deque()  # until someone listens
        self._listener: Callable[[bytes], None] | None = None
        self._fragments: list[bytes] = []
        self._head = b""  # the handshake response, until its head is whole
        self._splitter: FrameSplitter | None = None  # from the end of the handshake on
        self._reading_paused = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._alive_timer: asyncio.TimerHandle | None = None
        self._heard = False  # since the last keepalive check
        self._pinged = False
        self._write_paused = False
        self._open = False  # the protocol's state is OPEN (read per frame: kept, not asked)

    # -- what the call uses ------------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        """The code OpenAI closed with (1006 when the socket just went away), or None."""
        return self._protocol.close_code

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done once the socket is gone (closed by either side, or dropped)."""
        return self._lost

    def send(self, *texts: str) -> None:
        """Write text messages to the socket now, in one write. Raises ConnectionClosed
        once closing.

        The transport buffers what the kernel will not take yet; the audio comes in real
        time, so that stays small unless OpenAI stops reading, and then the session is
        dropped (`closed`) for the call to open a new one."""
        transport = self._transport
        if not self._open or transport is None:
            raise self._closed_error()
        transport.write(_frames.frames(texts))
        if self._write_paused and transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self._drop()

    def listen(self, on_message: Callable[[bytes], None]) -> None:
        """Hand every message's payload to `on_message` as it arrives, starting with any
        received before now (text is not decoded: the JSON decoder takes bytes).
        `on_message` runs inside the protocol's callback: it must not raise or block."""
        self._listener = on_message
        while self._messages:
            on_message(self._messages.popleft())
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    async def close(self) -> None:
        """Close the session (1000) and wait at most `CLOSE_TIMEOUT_S` for OpenAI to
        finish the closing handshake; after that, or if cancelled, drop the socket."""
        if self._open:
            self._protocol.send_close(1000)
            self._open = False
            self._flush()
        try:
            with contextlib.suppress(TimeoutError):  # the finally drops the socket
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
        self._heard = True
        splitter = self._splitter
        if splitter is None:
            self._received_head(data)
        elif not self._open:  # closing: the rest is the library's
            self._to_library(splitter.hand_over() + data)
        elif (payload := splitter.whole_text(data)) is not None:
            if self._listener is not None:
                self._listener(payload)  # the usual read: no call between
            else:
                self._deliver(payload)
        else:
            for whole, chunk in splitter.feed(data):
                if not whole:
                    self._to_library(chunk)
                elif self._open:  # messages after a close are dropped
                    self._deliver(chunk)

    def eof_received(self) -> None:
        self._protocol.receive_eof()
        self._open = False
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.receive_eof()  # idempotent: the protocol's state becomes CLOSED
        self._open = False
        for timer in (self._close_timer, self._alive_timer):
            if timer is not None:
                timer.cancel()
        if not self._opened.done():
            self._opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self._lost.done():  # `closed` is shared: a waiter may have cancelled it
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False

    # -- internals ---------------------------------------------------------------------

    def _received_head(self, data: bytes) -> None:
        """Hold the handshake response until its head is whole; the library then gets
        exactly the head, and frames that came along with it are split like any others."""
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0 and len(head) <= MAX_RESPONSE_HEAD_BYTES:
            self._head = head
            return
        cut = len(head) if end < 0 else end + 4
        self._head = b""
        self._splitter = FrameSplitter(masked=False, max_size=MAX_MESSAGE_BYTES)
        self._to_library(head[:cut])
        if len(head) > cut:
            self.data_received(head[cut:])

    def _to_library(self, data: bytes) -> None:
        """Bytes for websockets' protocol: the handshake, control frames, fragments."""
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
                    self._alive_timer = self._loop.call_later(KEEPALIVE_S, self._check_alive)
                else:
                    self._opened.set_exception(error)
        self._open = protocol.state is OPEN
        self._flush()
        if protocol.close_expected() and self._close_timer is None:
            assert self._transport is not None
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_S, self._transport.abort)

    def _frame_received(self, frame: Frame) -> None:
        """Whole messages go to the listener; pings, pongs and close are the protocol's."""
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
        listener = self._listener
        if listener is not None:
            listener(message)
            return
        self._messages.append(message)
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

    def _drop(self) -> None:
        """Abort the socket: `closed` is then done, with code 1006, and `send` raises."""
        assert self._transport is not None
        self._open = False
        self._transport.abort()

    def _closed_error(self) -> ConnectionClosed:
        if self._protocol.state is CLOSED:
            return self._protocol.close_exc
        protocol = self._protocol  # closing: the FIN may follow the close frames late
        return ConnectionClosed(
            protocol.close_rcvd, protocol.close_sent, protocol.close_rcvd_then_sent
        )

    def _check_alive(self) -> None:
        if not self._open or self._transport is None:
            return
        if self._heard:
            self._heard = self._pinged = False
        elif self._pinged:
            self._drop()
            return
        else:
            self._protocol.send_ping(os.urandom(4))
            self._flush()
            self._pinged = True
        self._alive_timer = self._loop.call_later(KEEPALIVE_S, self._check_alive)

    async def wait_open(self) -> None:
        """Until the opening handshake is done; raises what made it fail."""
        await self._opened


async def connect_realtime(
    settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S
) -> RealtimeConnection:
    """Open a Realtime session's socket. Raises OSError or TimeoutError when OpenAI can't
    be reached and answer the handshake in `timeout_s`, InvalidHandshake (InvalidStatus
    for an HTTP refusal, with its status code) when it won't take us."""
    uri = parse_uri(settings.realtime_url)
    protocol = ClientProtocol(uri, max_size=MAX_MESSAGE_BYTES)
    request = protocol.connect()
    request.headers["Authorization"] = f"Bearer {settings.openai_api_key.get_secret_value()}"
    request.headers["User-Agent"] = USER_AGENT
    protocol.send_request(request)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        _, connection = await loop.create_connection(
            lambda: RealtimeConnection(protocol),
            uri.host,
            uri.port,
            ssl=_tls() if uri.secure else None,
        )
        try:
            await connection.wait_open()
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
