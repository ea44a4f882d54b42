"""Opening the Realtime WebSocket (GA: bearer auth, no `OpenAI-Beta` header)."""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection, connect

from app.settings import Settings

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 1.0  # a hung-up call must release its OpenAI session within a second


def connect_realtime(settings: Settings) -> connect:
    """An awaitable / async context manager yielding the open Realtime connection."""
    return connect(
        settings.realtime_url,
        additional_headers={
            "Authorization": f"Bearer {settings.openai_api_key.get_secret_value()}"
        },
        open_timeout=CONNECT_TIMEOUT_S,
        close_timeout=CLOSE_TIMEOUT_S,
        max_size=16 * 1024 * 1024,
        compression=None,  # audio doesn't compress; deflate would only cost CPU
        user_agent_header="voicebridge",
    )


__all__ = ["ClientConnection", "connect_realtime"]
