"""A minimal WebSocket client on a raw asyncio Protocol, for the load generator.

Why not the `websockets` client: the generator must drive hundreds of calls (tens of
thousands of messages a second) from one core without becoming the bottleneck. A full
client costs a coroutine switch, a frame object and a queue per message; here a message
costs one `transport.write` going out and one callback coming in, and received frames are
handed over as raw bytes (no UTF-8 decode) with the time the chunk arrived.

Only what the benchmark needs: text frames, unfragmented or fragmented, ping/pong and
close; no extensions (permessage-deflate is not offered, so frames are never compressed).
Client frames are masked as RFC 6455 requires (the C `apply_mask` from `websockets`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import struct
import time
from collections.abc import Callable

from websockets.speedups import apply_mask

OnMessage = Callable[[bytes, float], None]

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


class HandshakeError(ConnectionError):
    """The server did not upgrade the connection (status line included)."""


def encode_frame(payload: bytes, opcode: int = _OP_TEXT) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + _U16.pack(n)
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + _U64.pack(n)
    mask = random.getrandbits(32).to_bytes(4, "big")
    return header + mask + apply_mask(payload, mask)


class WsClient(asyncio.Protocol):
    """One client connection; `on_message(data, arrived_at)` runs for every text message.

    `arrived_at` is `time.perf_counter()` when the TCP chunk holding the message arrived,
    so messages parsed later from the same chunk are not charged for the parsing before them.
    """

    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._handshake_done = False

    # asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self._buf
        buf += data
        if not self._handshake_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status + b" ":
                self._fail(HandshakeError(status.decode("latin-1")))
                return
            self._handshake_done = True
            self.upgraded.set_result(None)
        self._parse(now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # sending ------------------------------------------------------------------------

    def send(self, text: bytes) -> None:
        """Queue one text message (no await: the transport buffers)."""
        assert self.transport is not None
        self.transport.write(encode_frame(text))

    def send_many(self, texts: list[bytes]) -> None:
        """Several messages in one write: one syscall instead of one per message."""
        assert self.transport is not None
        self.transport.write(b"".join(encode_frame(t) for t in texts))

    def close(self, code: int = 1000) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_frame(_U16.pack(code), _OP_CLOSE))
            transport.close()

    # internals ----------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def _parse(self, now: float) -> None:
        buf = self._buf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = _U16.unpack_from(buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = _U64.unpack_from(buf, pos + 2)[0]
                head = 10
            if b1 & 0x80:
                head += 4  # servers must not mask; tolerate it anyway
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buf[pos + head : end])
            if b1 & 0x80:
                payload = apply_mask(payload, bytes(buf[end - length - 4 : end - length]))
            pos = end
            self._frame(b0 & 0x0F, bool(b0 & 0x80), payload, now)
        if pos:
            del buf[:pos]

    def _frame(self, opcode: int, fin: bool, payload: bytes, now: float) -> None:
        if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
            if opcode != _OP_CONT:
                self._fragments = []
            if not fin:
                self._fragments.append(payload)
                return
            if self._fragments:
                payload = b"".join([*self._fragments, payload])
                self._fragments = []
            self.on_message(payload, now)
        elif opcode == _OP_PING and self.transport is not None:
            self.transport.write(encode_frame(payload, _OP_PONG))
        elif opcode == _OP_CLOSE:
            self.close_code = _U16.unpack_from(payload)[0] if len(payload) >= 2 else 1005
            self.close(1000)


async def connect(
    host: str, port: int, path: str, on_message: OnMessage, headers: dict[str, str] | None = None
) -> WsClient:
    """Open a WebSocket to ws://host:port/path; returns once the server has upgraded it."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: WsClient(on_message), host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    assert client.transport is not None
    client.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await client.upgraded
    return client
