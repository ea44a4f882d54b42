"""The Litestar application: Twilio webhooks, the media-stream WebSocket, health."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar, MediaType, Request, Response, WebSocket, get, post, websocket

from app.call.stream import CallServices, handle_media_stream
from app.settings import Settings, load_settings
from app.storage.base import TranscriptStore
from app.storage.local import LocalTranscriptStore
from app.telephony import twiml

log = logging.getLogger("voicebridge.app")

NOT_CONFIGURED = "Sorry, this line is not set up yet. Please try again later. Goodbye."


def create_app(settings: Settings | None = None, store: TranscriptStore | None = None) -> Litestar:
    """Build the app; with no arguments, settings come from the environment and `.env`."""
    settings = settings or load_settings()
    services = CallServices(settings, store or LocalTranscriptStore(settings.transcripts_dir))

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
        return {"status": "ok", "active_calls": len(services.active)}

    app = Litestar(route_handlers=[voice_webhook, media_stream, healthz], debug=False)
    app.state.services = services
    return app
