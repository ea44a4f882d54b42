"""A TCP proxy on loopback that makes a healthy server look like the internet on a bad day.

Put it between the app and a test double (the Realtime double): the app connects to the
proxy, the proxy to the double, and the knobs below decide what the bytes meet on the
way. Real sockets both sides, so the app's own TCP and WebSocket code sees exactly what
it would see from a far-away peer.

Knobs (plain attributes, read for every chunk, so a test can flip them mid-call):

- `fin_delay_s`: the server's FIN (its end of the TCP stream) reaches the app this long
  after the server sent it, as over any real round trip (loopback delivers a close
  frame and its FIN together).
- `stalled`: bytes from the server are held, not passed on, until `stalled` is False
  again: the socket stays open and silent.
- `throttle_bps`: bytes per second from the server at most.
- `cut_after_bytes`: after that many more bytes from the server (set it, then they
  count down), both sides are reset mid-stream.
- `blackhole`: new connections are accepted and never connected onward: the handshake
  never gets an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

CHUNK = 64 * 1024


class FaultyLink:
    """`async with FaultyLink(host, port) as link:` then point the app at `link.url(...)`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.fin_delay_s = 0.0
        self.stalled = False
        self.throttle_bps: int | None = None
        self.cut_after_bytes: int | None = None
        self.blackhole = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._unstalled = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, upstream_url: str) -> str:
        """`upstream_url` (the double's) with the proxy's address in its place."""
        parts = urlsplit(upstream_url)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    def resume(self) -> None:
        """End a stall: what was held goes on."""
        self.stalled = False
        self._unstalled.set()

    async def reset_all(self) -> None:
        """Reset every open link now (RST both ways), as a dropped network path would."""
        for writer in list(self._writers):
            _reset(writer)

    async def __aenter__(self) -> FaultyLink:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        for writer in list(self._writers):
            _reset(writer)
        await self._server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        self._writers.add(writer)
        try:
            if self.blackhole:
                await reader.read()  # hold the socket open until the client gives up
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            try:
                await asyncio.gather(
                    self._pump(reader, up_writer, faulty=False),
                    self._pump(up_reader, writer, faulty=True),
                )
            finally:
                self._writers.discard(up_writer)
                _reset(up_writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            self._links.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, faulty: bool
    ) -> None:
        """Copy one direction; the server's (`faulty`) meets the knobs."""
        while True:
            data = await reader.read(CHUNK)
            if not data:
                if faulty and self.fin_delay_s:
                    await asyncio.sleep(self.fin_delay_s)
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            if faulty:
                data = await self._meet_faults(data, writer)
                if data is None:
                    return
            writer.write(data)
            await writer.drain()

    async def _meet_faults(self, data: bytes, writer: asyncio.StreamWriter) -> bytes | None:
        while self.stalled:
            self._unstalled.clear()
            await self._unstalled.wait()
        if self.cut_after_bytes is not None:
            if len(data) >= self.cut_after_bytes:
                writer.write(data[: self.cut_after_bytes])
                await writer.drain()
                self.cut_after_bytes = None
                await self.reset_all()
                return None
            self.cut_after_bytes -= len(data)
        if self.throttle_bps:
            await asyncio.sleep(len(data) / self.throttle_bps)
        return data


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN: the peer sees the connection reset, as on a broken path."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
