"""Running the app under uvicorn, with a drain on SIGTERM/SIGINT.

uvicorn's own shutdown closes every WebSocket at once (1012): every caller would be cut
off by a deploy. So the first signal starts a drain instead — no new calls, live ones run
to their end or the drain timeout — and only then does uvicorn's shutdown begin. A second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from litestar import Litestar
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.call.stream import CallServices, drain
from app.logs import logging_config
from app.settings import Settings

log = logging.getLogger("voicebridge.server")


class MediaStreamProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, minus a syscall pair per message.

    uvicorn stops reading a socket after every message until the app has taken it, then
    starts again: two epoll_ctl calls per 20 ms frame per call, about a seventh of the
    bridge's CPU under load. Here reading stops only when the app falls behind by
    `MAX_QUEUED` messages, which still bounds the memory a fast sender can take.
    """

    MAX_QUEUED = 32

    def send_receive_event_to_app(self) -> None:
        paused = self.read_paused
        self.read_paused = True  # uvicorn pauses unless it believes it already has
        super().send_receive_event_to_app()
        self.read_paused = paused
        if not paused and self.queue.qsize() >= self.MAX_QUEUED:
            self.read_paused = True
            self.transport.pause_reading()


_COMMON: dict[str, Any] = {
    "ws": MediaStreamProtocol,
    "ws_max_size": 64 * 1024,  # Twilio frames are ~300 bytes; a flood is refused early
    "proxy_headers": True,  # Fly's proxy and ngrok forward the client's address
    "forwarded_allow_ips": "*",
}


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, services: CallServices, settings: Settings):
        super().__init__(config)
        self._services = services
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs in the signal handler: hand over to the event loop."""
        if self._loop is None or self._draining is not None:
            self.should_exit = self.force_exit = True
            return
        self._loop.call_soon_threadsafe(self._start_drain)

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
    """Production: one process, drained on SIGTERM/SIGINT."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, **_COMMON)
    services: CallServices = app.state.services
    DrainingServer(config, services, settings).run()


def run_reloading(settings: Settings, host: str, port: int) -> None:
    """Development: restart on code changes (the reloader re-imports the app in a fresh
    process, so it needs an import string and our logging as a config)."""
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        reload=True,
        reload_dirs=[str(Path(__file__).parent)],
        host=host,
        port=port,
        log_config=logging_config(settings.log_level, settings.log_format),
        **_COMMON,
    )
