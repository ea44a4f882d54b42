"""The uvicorn and websockets internals `voicebridge/server.py` builds on, each named: an
upgrade that drops one fails here, by name, not as a broken call under load. pyproject caps
uvicorn at the minor release these were read from; raise the cap once this passes."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any
from unittest.mock import Mock

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

# What MediaStreamProtocol reads, writes, calls or overrides on uvicorn's protocol.
WEBSOCKET_PROTOCOL = (
    "connection_made",
    "connection_lost",
    "data_received",
    "pause_writing",
    "handle_ping",
    "handle_connect",
    "handle_parser_exception",
    "send_receive_event_to_app",
    "transport",  # replaced by `_Transport`: uvicorn must write and close through it
    "loop",
    "close_timeout",
    "disconnected",
    "close_sent",
    "handshake_complete",
    "initial_response",
    "queue",
    "read_paused",
    "conn",
    "curr_msg_data_type",
    "frames",
    "response",  # set by the handshake
    "scope",  # set by the handshake
)
# What it uses of websockets' ServerProtocol (`conn`) beyond its documented API.
WEBSOCKETS_CONNECTION = ("state", "max_message_size", "reader", "fail")
# What RequestTimeoutProtocol uses of uvicorn's HTTP/1.1 protocol.
H11_PROTOCOL = (
    "connection_made",
    "connection_lost",
    "data_received",
    "conn",
    "transport",
    "loop",
)
# What DrainingServer uses of uvicorn.Server.
SERVER = ("serve", "handle_exit", "shutdown", "should_exit", "force_exit")

HANDSHAKE = (
    b"GET /media-stream HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    """Never reached: the handshake is all the fence needs."""


def _config() -> uvicorn.Config:
    config = uvicorn.Config(_app, ws="websockets-sansio", log_config=None)
    config.load()
    return config


def _transport() -> Mock:
    transport = Mock(spec=asyncio.Transport)
    transport.get_extra_info.return_value = None
    return transport


def _assert_has(owner: object, names: tuple[str, ...], what: str) -> None:
    missing = [name for name in names if not hasattr(owner, name)]
    assert not missing, f"{what} no longer has {', '.join(missing)}: see voicebridge/server.py"


async def test_the_websocket_protocol_internals_remain() -> None:
    protocol = WebSocketsSansIOProtocol(_config(), ServerState(), {})
    protocol.connection_made(_transport())
    protocol.data_received(HANDSHAKE)
    try:
        _assert_has(protocol, WEBSOCKET_PROTOCOL, "uvicorn's WebSocket protocol")
        _assert_has(protocol.conn, WEBSOCKETS_CONNECTION, "websockets' ServerProtocol")
        _assert_has(protocol.conn.reader, ("buffer",), "websockets' StreamReader")
    finally:
        for task in protocol.tasks:
            task.cancel()
        await asyncio.gather(*protocol.tasks, return_exceptions=True)


def test_the_http_protocol_internals_remain() -> None:
    protocol = H11Protocol(_config(), ServerState(), {}, _loop=Mock(spec=asyncio.AbstractEventLoop))
    protocol.connection_made(_transport())
    _assert_has(protocol, H11_PROTOCOL, "uvicorn's HTTP/1.1 protocol")


def test_the_server_internals_remain() -> None:
    """`lifespan` exists once `serve` runs; DrainingServer calls its `shutdown`."""
    config = _config()
    _assert_has(uvicorn.Server(config), SERVER, "uvicorn.Server")
    _assert_has(config.lifespan_class, ("shutdown",), "uvicorn's lifespan")
    assert "self.lifespan = " in inspect.getsource(uvicorn.Server), (
        "uvicorn.Server no longer has lifespan: see voicebridge/server.py"
    )
