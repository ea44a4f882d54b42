"""`WS /media-stream`: where Twilio streams a call's audio."""

from __future__ import annotations

from litestar import Router, websocket
from litestar.datastructures import State

from voicebridge.app_state import call_services
from voicebridge.call.media_socket import MediaStreamSocket
from voicebridge.call.stream import handle_media_stream


@websocket("/media-stream", websocket_class=MediaStreamSocket)
async def media_stream(socket: MediaStreamSocket, state: State) -> None:
    await handle_media_stream(socket, call_services(state))


media_router = Router("/", route_handlers=[media_stream])
