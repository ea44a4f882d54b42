"""Twilio's media stream as the call sees it: text in through a callback, text out
at once, and the end of the stream to wait for.

Under VoiceBridge's server (`voicebridge.server`), the socket's protocol hands each text message
straight to the call and writes its frames itself (the `DIRECT_TEXT` ASGI extension):
no queue, no task to wake, no await per frame. Under any other ASGI server, a reader
and a writer task carry the same calls over plain ASGI, one hop slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from litestar import WebSocket
from litestar.types import Receive, Scope, Send

from voicebridge.bad_input import BadInputLog

log = logging.getLogger("voicebridge.call")

DIRECT_TEXT = "voicebridge.direct_text"  # scope["extensions"][DIRECT_TEXT]["socket"]

OnText = Callable[[str], None]


class DirectText(Protocol):
    """What a server offering `DIRECT_TEXT` does for a WebSocket."""

    def listen(self, on_text: OnText) -> None:
        """From now on (and first for those already received) hand text messages to
        `on_text` as they arrive, instead of queueing them for ASGI `receive`."""

    def send_texts(self, texts: Sequence[str]) -> None:
        """Write text messages now, in one write; dropped once the socket is closing."""


class MediaStreamSocket(WebSocket[Any, Any, Any]):
    """Litestar's WebSocket, plus the direct text path for the audio."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(scope, receive, send)
        # The server's own callables: Litestar's wrappers only track state.
        self.asgi_receive = receive
        self.asgi_send = send
        extension = (scope.get("extensions") or {}).get(DIRECT_TEXT) or {}
        self._direct = cast("DirectText | None", extension.get("socket"))
        self._on_text: OnText | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self.bad_input = BadInputLog(log)  # what this connection sent that was dropped
        # Send text messages without waiting (in order; dropped once closed). Messages
        # made at the same moment (an audio frame and its mark) share one write. Bound
        # once: the server's own method on the direct path, one call per frame fewer.
        self.send_now: Callable[[Sequence[str]], None] = (
            self._direct.send_texts if self._direct is not None else self._queue_texts
        )

    async def receive_text_message(self) -> str | None:
        """The next text message, through ASGI; None once the socket has closed. Binary
        frames are skipped. For the messages before the call starts listening."""
        while True:
            message = await self.asgi_receive()
            if message["type"] == "websocket.disconnect":
                self.connection_state = "disconnect"
                return None
            text = message.get("text")
            if text is not None:
                return str(text)
            self.bad_input.drop("Twilio", "binary frame", "Twilio sends only text")

    def listen(self, on_text: OnText) -> None:
        """Hand every text message from now on to `on_text` (which must not raise); the
        messages come in order, while `until_closed` runs."""
        self._on_text = on_text
        if self._direct is not None:
            self._direct.listen(on_text)

    def _queue_texts(self, texts: Sequence[str]) -> None:
        for text in texts:
            self._outbox.put_nowait(text)

    async def until_closed(self) -> None:
        """Serve the stream until it closes. Under the direct path only the close (and a
        binary frame) arrives through ASGI: the server hands every text to `listen`'s
        callback, those it had queued first."""
        writer = None if self._direct else asyncio.create_task(self._write_outbox())
        try:
            while (text := await self.receive_text_message()) is not None:
                if self._on_text is not None:
                    self._on_text(text)
        finally:
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    async def _write_outbox(self) -> None:
        while True:
            text = await self._outbox.get()
            try:
                await self.asgi_send({"type": "websocket.send", "bytes": None, "text": text})
            except Exception:  # the socket is closing: the rest would be dropped too
                return
