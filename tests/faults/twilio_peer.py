"""A Twilio media-stream peer that misbehaves: it stops reading, floods pings, sends junk.

A raw socket, not a WebSocket library: a library reads (and answers) on its own, and a
peer that stops reading must really leave the server's bytes unread. Its receive buffer
is made small before it connects, so the server's kernel send buffer fills quickly and
what the server writes next waits in the server's own memory.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from voicebridge.wsframes import FrameWriter

_TCP_CLOSE = 7  # tcpi_state after a reset (a FIN leaves CLOSE_WAIT)
_PING = 0x89  # FIN | ping
_MASK = b"\0\0\0\0"  # clients must mask; an all-zero key leaves the payload as it is


def ping_frame(payload: bytes = b"p" * 125) -> bytes:
    """A client's ping; 125 bytes is the largest payload a control frame may carry."""
    return bytes((_PING, 0x80 | len(payload))) + _MASK + payload


class TwilioPeer:
    """One raw connection to the media-stream endpoint. Use as `async with`."""

    def __init__(self, url: str, *, receive_buffer: int = 4096) -> None:
        self.url = urlsplit(url)
        self.receive_buffer = receive_buffer
        self.sent = 0  # bytes written to the server
        self._sock: socket.socket | None = None
        self._frames = FrameWriter(masked=True)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            self._sock.close()

    async def connect(self) -> None:
        """Upgrade to a WebSocket, read the 101, and from then on read nothing."""
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, (self.url.hostname, self.url.port))
        self._sock = sock
        key = base64.b64encode(os.urandom(16)).decode()
        await self._send(
            f"GET {self.url.path} HTTP/1.1\r\nHost: {self.url.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:  # the server sends nothing more until we do
            chunk = await loop.sock_recv(sock, 1024)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            response += chunk
        if not response.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {response[:40]!r}")

    async def send_text(self, text: str) -> None:
        await self._send(self._frames.frames((text,)))

    async def send_junk(self, data: bytes) -> None:
        """Bytes that are not a WebSocket frame."""
        await self._send(data)

    async def flood_pings(self, *, max_bytes: int, max_seconds: float) -> bool:
        """Send pings (never reading a pong) until the server resets the connection, or
        `max_bytes` were sent, or `max_seconds` passed. True if the server reset it."""
        loop = asyncio.get_running_loop()
        batch = ping_frame() * 256
        until = loop.time() + max_seconds
        try:
            while self.sent < max_bytes and loop.time() < until:
                await self._send(batch)
        except (ConnectionResetError, BrokenPipeError):
            return True
        return self.reset

    @property
    def reset(self) -> bool:
        """Whether the server has reset (aborted) the connection, learned without reading."""
        assert self._sock is not None
        info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
        return info[0] == _TCP_CLOSE

    async def wait_reset(self, timeout: float) -> None:
        """Wait until the server resets the connection (TimeoutError if it does not)."""
        async with asyncio.timeout(timeout):
            while not self.reset:
                await asyncio.sleep(0.02)

    async def _send(self, data: bytes) -> None:
        assert self._sock is not None
        await asyncio.get_running_loop().sock_sendall(self._sock, data)
        self.sent += len(data)
