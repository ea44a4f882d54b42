"""Running the app under uvicorn, with a drain on SIGTERM/SIGINT.

uvicorn's own shutdown closes every WebSocket at once (1012): every caller would be cut
off by a deploy. So the first signal starts a drain instead — no new calls, live ones run
to their end or the drain timeout — and only then does uvicorn's shutdown begin. A second
signal stops at once; the same signal again within `REPEAT_WINDOW_S` is the first one
delivered twice (`make run`: to the process group, and forwarded by `uv run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, cast

import h11
import uvicorn
from litestar import Litestar
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import OPEN

from voicebridge.call.media_socket import DIRECT_TEXT, OnText
from voicebridge.call.stream import CallServices, drain
from voicebridge.logs import RateLimitedLog, logging_config
from voicebridge.settings import Settings
from voicebridge.wsframes import FrameSplitter, FrameWriter

log = logging.getLogger("voicebridge.server")
_slow_requests = RateLimitedLog(log)
_frames = FrameWriter(masked=False)

MAX_WRITE_BUFFER = 512 * 1024  # ~45 s of agent audio; a peer that reads never nears it
CLOSE_TIMEOUT_S = 2.0  # for the peer's close frame, then again for it to read the rest
SHUTDOWN_TIMEOUT_S = 5  # after the drain (its calls are over, their sockets closing)
REPEAT_WINDOW_S = 1.0  # a signal repeated sooner is a duplicate, not a second request
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets, the kernel keeps nothing


class _Transport:
    """A connection's transport that tells its protocol when it is asked to close:
    asyncio's close waits until the peer has read everything, which a peer that doesn't
    read never does. The rest is the transport's own (`write` bound once: no extra call
    per frame)."""

    def __init__(self, transport: asyncio.Transport, on_close: Callable[[], None]) -> None:
        self._transport = transport
        self._on_close = on_close
        self.write = transport.write

    def close(self) -> None:
        self._transport.close()
        self._on_close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class MediaStreamProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with a short path for the audio.

    - It offers the `DIRECT_TEXT` extension (`voicebridge.call.media_socket`): once the call
      listens, text messages go straight to it from `data_received`, and its frames
      are written at once, with no queue, task or await in between.
    - Reading stops only when the app falls behind by `MAX_QUEUED` messages (uvicorn
      stops and restarts reading around every message: two epoll_ctl calls per 20 ms
      frame per call, about a seventh of the bridge's CPU under load). That still
      bounds what a fast sender can make us hold.
    - Whole single-frame text messages (all of Twilio's) are cut from the stream and
      written by `voicebridge.wsframes`; everything else is uvicorn's and websockets' as before.
    - What a peer doesn't read is bounded: past `MAX_WRITE_BUFFER` (our audio, pongs,
      close frames: every write), and `CLOSE_TIMEOUT_S` after a close it doesn't finish,
      the peer is reset. Before `start` a socket thus holds at most that write buffer,
      `MAX_QUEUED` messages of `ws_max_size` and one read (256 KiB): under 3 MiB.
    """

    MAX_QUEUED = 32
    _splitter: FrameSplitter | None = None
    _on_text: OnText | None = None
    _drop_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.close_timeout = CLOSE_TIMEOUT_S  # uvicorn's wait for the peer's close frame
        # Writes are never paused: going over the mark drops the peer (`pause_writing`).
        self.transport.set_write_buffer_limits(high=MAX_WRITE_BUFFER)
        self.transport = cast("asyncio.Transport", _Transport(self.transport, self._closing))

    def pause_writing(self) -> None:
        """More than `MAX_WRITE_BUFFER` waits for a peer that doesn't read."""
        log.warning("dropping a WebSocket peer that does not read what we send")
        self._drop()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drop_timer is not None:
            self._drop_timer.cancel()
        super().connection_lost(exc)

    def handle_ping(self) -> None:
        if not self.disconnected:  # (the rest of a flood that got the peer dropped)
            super().handle_ping()

    def _closing(self) -> None:
        if self._drop_timer is None and not self.disconnected:
            self._drop_timer = self.loop.call_later(CLOSE_TIMEOUT_S, self._drop)

    def _drop(self) -> None:
        """Reset the connection: neither we nor the kernel keep what the peer left unread."""
        self.disconnected = True  # nothing more is written; `connection_lost` follows
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self.transport.abort()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # the app's task has not run yet
            self.scope["extensions"][DIRECT_TEXT] = {"socket": self}

    def listen(self, on_text: OnText) -> None:
        """`DirectText.listen`: the queue keeps what is not text (the disconnect)."""
        queued = [self.queue.get_nowait() for _ in range(self.queue.qsize())]
        self._on_text = on_text
        for message in queued:
            text = message.get("text") if message["type"] == "websocket.receive" else None
            if text is not None:
                on_text(text)
            else:
                self.queue.put_nowait(message)
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self.transport.resume_reading()

    def send_texts(self, texts: Sequence[str]) -> None:
        """`DirectText.send_texts`: buffered by the transport, up to `MAX_WRITE_BUFFER`."""
        if self.conn.state is OPEN and not self.close_sent and not self.disconnected:
            self.transport.write(_frames.frames(texts))

    def data_received(self, data: bytes) -> None:
        splitter = self._splitter
        if splitter is None:
            if not self._frames_only():
                super().data_received(data)
                return
            limit = self.conn.max_message_size or 1 << 20
            splitter = self._splitter = FrameSplitter(masked=True, max_size=limit)
        if self.conn.state is not OPEN or self.close_sent:
            super().data_received(splitter.hand_over() + data)
            return
        payload = splitter.whole_text(data)
        if payload is not None:
            self._text_received(payload)
            return
        open_ = True
        for whole, chunk in splitter.feed(data):
            if not whole:
                super().data_received(chunk)  # a control frame may start the closing
                open_ = self.conn.state is OPEN and not self.close_sent
            elif open_:  # else: dropped, closing
                self._text_received(chunk)

    def send_receive_event_to_app(self) -> None:
        if self._on_text is not None and self.curr_msg_data_type == "text":
            data, self.frames = b"".join(self.frames), []  # a fragmented message, joined
            if not self.close_sent:
                self._text_received(data)
            return
        paused = self.read_paused
        self.read_paused = True  # uvicorn pauses unless it believes it already has
        super().send_receive_event_to_app()
        self.read_paused = paused
        self._bound_queue()

    def _frames_only(self) -> bool:
        """From the handshake's end on, with nothing of a frame held by the library (a
        client may not send frames before our 101), every byte is a frame."""
        return (
            self.handshake_complete
            and self.initial_response is None
            and self.conn.state is OPEN
            and not self.conn.reader.buffer
        )

    def _text_received(self, payload: bytes) -> None:
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            self.conn.fail(1007, "invalid UTF-8 in a text frame")
            self.handle_parser_exception()
            return
        if self._on_text is not None:
            self._on_text(text)
        else:
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
            self._bound_queue()

    def _bound_queue(self) -> None:
        if not self.read_paused and self.queue.qsize() >= self.MAX_QUEUED:
            self.read_paused = True
            self.transport.pause_reading()


class RequestTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request (head and body) has
    not arrived in full `REQUEST_TIMEOUT_S` after its first byte, or after the connection
    opened: uvicorn only times idle keep-alive connections, so a client that never finishes
    a request (slowloris) would hold its connection, and a slot of `max_concurrent_calls`'
    worth of file descriptors, forever. WebSocket upgrades are timed until the switch.
    """

    REQUEST_TIMEOUT_S = 10.0
    _request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._time_request()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._time_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _time_request(self) -> None:
        """Time a request while it is being received; not while the app answers it, nor
        while the connection idles between requests (uvicorn's keep-alive timer's job)."""
        receiving = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
        upgraded = self.transport.get_protocol() is not self  # a WebSocket's now
        if not receiving or upgraded or self.transport.is_closing():
            self._stop_timer()
        elif self._request_timer is None:
            self._request_timer = self.loop.call_later(self.REQUEST_TIMEOUT_S, self._too_slow)

    def _too_slow(self) -> None:
        self._request_timer = None
        if not self.transport.is_closing():
            _slow_requests.warning(
                "closed a connection whose request took over %g s", self.REQUEST_TIMEOUT_S
            )
            self.transport.close()

    def _stop_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None


UVICORN_OPTIONS: dict[str, Any] = {  # production's, which the tests' servers use too
    "http": RequestTimeoutProtocol,
    "h11_max_incomplete_event_size": 16 * 1024,  # a request head over 16 KiB: 400
    "timeout_keep_alive": 5,  # seconds an idle keep-alive connection stays open
    "ws": MediaStreamProtocol,
    "ws_max_size": 64 * 1024,  # Twilio frames are ~300 bytes; a flood is refused early
    "ws_per_message_deflate": False,  # base64 audio barely compresses; deflate only costs
    "proxy_headers": True,  # Fly's proxy and ngrok forward the client's address…
}


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """…which is believed only from the proxies in FORWARDED_ALLOW_IPS."""
    return UVICORN_OPTIONS | {"forwarded_allow_ips": settings.forwarded_allow_ips}


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, services: CallServices, settings: Settings):
        super().__init__(config)
        self._services = services
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._first_signal: tuple[int, float] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs in the signal handler: hand over to the event loop."""
        now = time.monotonic()
        if self._first_signal is None:
            self._first_signal = (sig, now)
        elif self._first_signal[0] == sig and now - self._first_signal[1] < REPEAT_WINDOW_S:
            return
        if self._loop is None or self._draining is not None:
            self.should_exit = self.force_exit = True
            return
        self._loop.call_soon_threadsafe(self._start_drain)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn skips the app's shutdown on a forced exit, and the app's lifespan task
        is then cancelled as the loop closes, which Litestar logs as a traceback: it runs
        anyway (the transcript store closes, within TRANSCRIPT_FLUSH_TIMEOUT_S)."""
        await super().shutdown(sockets)
        if self.force_exit:
            await self.lifespan.shutdown()

    def _start_drain(self) -> None:
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        timeout = self._settings.drain_timeout
        try:
            await drain(self._services, timeout, wrap_up_s=min(20.0, timeout / 2))
        finally:
            self.should_exit = True


def run(app: Litestar, settings: Settings, host: str, port: int) -> None:
    """Production: one process, drained on SIGTERM/SIGINT; after the drain, uvicorn's
    own shutdown gets `SHUTDOWN_TIMEOUT_S` for what is left."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_S,
        **uvicorn_options(settings),
    )
    services: CallServices = app.state.services
    DrainingServer(config, services, settings).run()


def run_reloading(settings: Settings, host: str, port: int) -> None:
    """Development: restart on code changes (the reloader re-imports the app in a fresh
    process, so it needs an import string and our logging as a config)."""
    uvicorn.run(
        "voicebridge.main:create_app",
        factory=True,
        reload=True,
        reload_dirs=[str(Path(__file__).parent)],
        host=host,
        port=port,
        log_config=logging_config(settings.log_level, settings.log_format),
        **uvicorn_options(settings),
    )
