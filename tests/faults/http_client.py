"""A hostile HTTP/1.1 client on raw asyncio streams: floods of body a polite client
library would never send, and requests that never finish."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass


@dataclass
class Answer:
    """What the server said (None: it closed without a response), and how much of the
    body it let us write before it answered or closed."""

    status: int | None
    headers: dict[str, str]
    body_bytes_sent: int


async def flood(
    port: int,
    path: str,
    body: Iterable[bytes],
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 10.0,
) -> Answer:
    """POST `body`'s chunks as fast as the server takes them (chunked unless `headers`
    name a Content-Length), stopping once it answers or closes; bounded by `timeout`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    fields = {"Host": "127.0.0.1", **(headers or {})}
    chunked = not any(name.lower() == "content-length" for name in fields)
    if chunked:
        fields["Transfer-Encoding"] = "chunked"
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    response = asyncio.create_task(reader.read(65536))
    sent = 0
    try:
        async with asyncio.timeout(timeout):
            writer.write(head.encode() + b"\r\n")
            with contextlib.suppress(ConnectionError):
                for chunk in body:
                    if response.done():
                        break
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await writer.drain()
                    sent += len(chunk)
                if chunked and not response.done():
                    writer.write(b"0\r\n\r\n")
            data = await response
    finally:
        response.cancel()
        writer.close()
    return Answer(*_parse(data), body_bytes_sent=sent)


@contextlib.asynccontextmanager
async def unfinished_requests(
    port: int, count: int, start: bytes = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
) -> AsyncIterator[list[asyncio.StreamReader]]:
    """`count` connections that each send the `start` of a request and nothing more
    (slowloris); yields their readers, to see when the server closes them."""
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    try:
        for _, writer in streams:
            writer.write(start)
            await writer.drain()
        yield [reader for reader, _ in streams]
    finally:
        for _, writer in streams:
            writer.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    with contextlib.suppress(ConnectionError):
        return await reader.read()
    return b""


def _parse(data: bytes) -> tuple[int | None, dict[str, str]]:
    if not data.startswith(b"HTTP/1.1 "):
        return None, {}
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in head[1:])
    return int(head[0].split()[1]), {k.strip().lower(): v.strip() for k, _, v in fields}
