"""Run the real app in a real uvicorn server on a loopback port, inside the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from litestar import Litestar

from voicebridge.server import uvicorn_options


@dataclass
class RunningServer:
    app: Litestar
    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media-stream"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serve(app: Litestar, **options: Any) -> AsyncIterator[RunningServer]:
    """Serve `app` with uvicorn until the block ends: with production's options (our
    WebSocket protocol and its limits), unless `options` override them."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        **(uvicorn_options(app.state.services.settings) | options),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield RunningServer(app, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@dataclass
class ServerProcess(RunningServer):
    process: asyncio.subprocess.Process


@contextlib.asynccontextmanager
async def serve_process(env: dict[str, str]) -> AsyncIterator[ServerProcess]:
    """`python -m voicebridge serve` as its own process, the way production runs it."""
    import os
    import sys

    import httpx

    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicebridge",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env={"PATH": os.environ["PATH"], **env},
    )
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                if process.returncode is not None:
                    raise RuntimeError(f"server exited with {process.returncode}")
                await asyncio.sleep(0.05)
        yield ServerProcess(app=None, port=port, process=process)  # type: ignore[arg-type]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
