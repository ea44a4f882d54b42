"""The Realtime socket against a real websockets server on loopback: what OpenAI may do
on the wire (fragments, pings, refusals, closing) and what our lean sender writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from voicebridge.realtime import connection as connection_module
from voicebridge.realtime.connection import RealtimeConnection, connect_realtime
from voicebridge.settings import Settings

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def openai_at(
    handler: Handler,
    make_settings: Callable[..., Settings],
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
) -> AsyncIterator[Settings]:
    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        yield make_settings(openai_realtime_url=f"ws://127.0.0.1:{port}/v1/realtime")


def inbox(connection: RealtimeConnection) -> asyncio.Queue[bytes]:
    """What the connection hands its listener, in order."""
    messages: asyncio.Queue[bytes] = asyncio.Queue()
    connection.listen(messages.put_nowait)
    return messages


async def test_headers_messages_both_ways_and_a_clean_close(
    make_settings: Callable[..., Settings],
) -> None:
    seen: dict[str, Any] = {}

    async def echo(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen["auth"] = ws.request.headers["Authorization"]
        seen["beta"] = ws.request.headers.get("OpenAI-Beta")
        async for message in ws:
            await ws.send(message)
        seen["code"] = ws.close_code

    async with openai_at(echo, make_settings) as settings:
        connection = await connect_realtime(settings)
        messages = inbox(connection)
        big = "a" * 100_000
        for text in ("hello", big):
            connection.send(text)
            assert await messages.get() == text.encode()
        await connection.close()
        assert connection.close_code == 1000
        with pytest.raises(ConnectionClosed):
            connection.send("after close")
    assert seen["auth"] == f"Bearer {settings.openai_api_key.get_secret_value()}"
    assert seen["beta"] is None
    assert seen["code"] == 1000


async def test_fragments_are_joined_pings_answered_and_the_close_code_kept(
    make_settings: Callable[..., Settings],
) -> None:
    pong = asyncio.Event()

    async def chatty(ws: ServerConnection) -> None:
        await ws.send(["part one, ", "part two"])  # one message in three frames
        await asyncio.wait_for(await ws.ping(), 5)
        pong.set()
        await ws.send("last")
        await ws.close(4000, "session expired")

    async with openai_at(chatty, make_settings) as settings:
        connection = await connect_realtime(settings)
        await asyncio.wait_for(pong.wait(), 5)
        messages = inbox(connection)  # what came before listening is handed over first
        assert await messages.get() == b"part one, part two"
        assert await messages.get() == b"last"
        await asyncio.wait_for(connection.closed, 5)
        assert messages.empty()
        assert connection.close_code == 4000
        assert pong.is_set()


async def test_a_refusal_carries_its_http_status(make_settings: Callable[..., Settings]) -> None:
    def refuse(ws: ServerConnection, request: Request) -> Response:
        return ws.respond(401, "invalid api key\n")

    async def never(ws: ServerConnection) -> None:
        raise AssertionError("no session without a key")

    async with openai_at(never, make_settings, refuse) as settings:
        with pytest.raises(InvalidStatus) as refused:
            await connect_realtime(settings)
    assert refused.value.response.status_code == 401


async def test_a_server_that_vanishes_closes_the_connection(
    make_settings: Callable[..., Settings],
) -> None:
    async def vanish(ws: ServerConnection) -> None:
        await ws.send("one")
        ws.transport.abort()

    async with openai_at(vanish, make_settings) as settings:
        connection = await connect_realtime(settings)
        messages = inbox(connection)
        assert await messages.get() == b"one"
        await asyncio.wait_for(connection.closed, 5)
        assert connection.close_code == 1006
        await connection.close()  # closing what is already gone returns at once


async def test_a_socket_gone_silent_is_pinged_then_dropped(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "KEEPALIVE_S", 0.1)
    frozen, released = asyncio.Event(), asyncio.Event()

    async def freeze(ws: ServerConnection) -> None:
        await ws.send("hello")
        ws.transport.pause_reading()  # a peer that hears nothing: our ping goes unanswered
        frozen.set()
        await released.wait()
        ws.transport.abort()

    async with openai_at(freeze, make_settings) as settings:
        connection = await connect_realtime(settings)
        assert await inbox(connection).get() == b"hello"
        await frozen.wait()
        await asyncio.wait_for(connection.closed, 5)
        assert connection.close_code == 1006
        released.set()


async def test_closing_a_peer_that_never_answers_gives_up_after_the_timeout(
    make_settings: Callable[..., Settings],
) -> None:
    released = asyncio.Event()

    async def deaf(ws: ServerConnection) -> None:
        ws.transport.pause_reading()  # our close frame is never read, never answered
        await released.wait()
        ws.transport.abort()

    async with openai_at(deaf, make_settings) as settings:
        connection = await connect_realtime(settings)
        await connection.close()  # returns, without raising, once it gives up
        released.set()
    assert connection.close_code == 1006  # dropped, not closed by handshake


async def test_a_quiet_but_live_socket_is_kept(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "KEEPALIVE_S", 0.05)

    async def quiet(ws: ServerConnection) -> None:
        await ws.wait_closed()  # says nothing, but answers pings (the library does)

    async with openai_at(quiet, make_settings) as settings:
        connection = await connect_realtime(settings)
        await asyncio.sleep(0.6)  # twelve keepalive intervals
        assert not connection.closed.done()
        connection.send("still there")
        await connection.close()
        assert connection.close_code == 1000


async def test_a_peer_that_stops_reading_is_dropped_once_our_writes_pile_up(
    make_settings: Callable[..., Settings],
) -> None:
    released = asyncio.Event()

    async def stops_reading(ws: ServerConnection) -> None:
        ws.transport.pause_reading()  # alive, but takes none of our audio
        await released.wait()
        ws.transport.abort()

    async with openai_at(stops_reading, make_settings) as settings:
        connection = await connect_realtime(settings)
        chunk = "a" * 64_000
        try:
            for _ in range(1000):  # 64 MB at most: past the kernel's buffers and our limit
                try:
                    connection.send(chunk)
                except ConnectionClosed:  # dropped
                    break
                await asyncio.sleep(0)  # the transport reports it is backed up
            await asyncio.wait_for(asyncio.shield(connection.closed), 5)
            assert connection.close_code == 1006
        finally:
            released.set()
            await connection.close()
