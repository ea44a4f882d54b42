"""The Litestar application: Twilio webhooks, the media-stream WebSocket, health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict
from typing import Any

from litestar import Litestar, MediaType, Request, Response, WebSocket, get, post, websocket

from app.call.stream import CallServices, handle_media_stream
from app.settings import Settings, load_settings
from app.storage.base import BackgroundDelivery, TranscriptStore
from app.storage.factory import open_store
from app.telephony import twiml

log = logging.getLogger("voicebridge.app")

NOT_CONFIGURED = "Sorry, this line is not set up yet. Please try again later. Goodbye."


def create_app(settings: Settings | None = None, store: TranscriptStore | None = None) -> Litestar:
    """Build the app; with no arguments, settings come from the environment and `.env`,
    and the transcript store is the one they name (`open_store`)."""
    settings = settings or load_settings()
    services = CallServices(settings, store or open_store(settings))

    @post("/twilio/voice", media_type=MediaType.XML, status_code=200)
    async def voice_webhook(request: Request[Any, Any, Any]) -> Response[str]:
        """Twilio asks what to do with a call: open a bidirectional media stream."""
        form = await request.form()
        stream_url = settings.stream_url
        if stream_url is None:
            log.error("PUBLIC_BASE_URL is not set: cannot tell Twilio where to stream")
            return Response(twiml.say_and_hang_up(NOT_CONFIGURED), media_type=MediaType.XML)
        parameters = {
            "callSid": str(form.get("CallSid", "")),
            "from": str(form.get("From", "")),
            "to": str(form.get("To", "")),
            "direction": "outbound"
            if str(form.get("Direction", "")).startswith("outbound")
            else "inbound",
        }
        return Response(twiml.connect_stream(stream_url, parameters), media_type=MediaType.XML)

    @websocket("/media-stream")
    async def media_stream(socket: WebSocket[Any, Any, Any]) -> None:
        await handle_media_stream(socket, services)

    @get("/healthz", media_type=MediaType.JSON)
    async def healthz() -> dict[str, Any]:
        health: dict[str, Any] = {"status": "ok", "active_calls": len(services.active)}
        if isinstance(services.store, BackgroundDelivery):
            health["transcripts"] = asdict(services.store.stats)
        return health

    app = Litestar(
        route_handlers=[voice_webhook, media_stream, healthz],
        lifespan=[_transcript_delivery(services.store, settings.transcript_flush_timeout_s)],
        debug=False,
    )
    app.state.services = services
    return app


def _transcript_delivery(
    store: TranscriptStore, flush_timeout_s: float
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Run a background store for the app's lifetime: start-up delivers what an earlier
    run left in the spool; shutdown flushes the spool for at most `flush_timeout_s`
    (what is left is delivered at the next start)."""

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if not isinstance(store, BackgroundDelivery):
            yield
            return
        await asyncio.to_thread(store.start)
        try:
            yield
        finally:
            await asyncio.to_thread(store.close, flush_timeout_s)

    return lifespan
