"""The Litestar application: settings and shared services, composed with the routers
(Twilio webhooks, the calls API, health and metrics, the media stream) and a lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.exceptions import HTTPException

from voicebridge.api.calls import calls_router
from voicebridge.api.health import health_router
from voicebridge.app_state import app_state
from voicebridge.call.media_route import media_router
from voicebridge.call.stream import CallServices
from voicebridge.call.tools import Tool, builtin_tools, load_tools
from voicebridge.http_limits import MAX_BODY_BYTES
from voicebridge.metrics import Metrics
from voicebridge.settings import Settings, SettingsError, load_settings
from voicebridge.storage.base import BackgroundDelivery, TranscriptStore
from voicebridge.storage.factory import serving_store
from voicebridge.telephony.control import TwilioCallControl
from voicebridge.telephony.rest import create_client
from voicebridge.telephony.signatures import StreamTokens
from voicebridge.telephony.webhooks import TwilioWebhooks

log = logging.getLogger("voicebridge.app")


def _tools(settings: Settings) -> list[Tool]:
    """AGENT_TOOLS was loaded once already, by `serving_problems`: it loads."""
    custom = load_tools(settings.agent_tools) if settings.agent_tools else []
    return builtin_tools(settings.transfer_number) + custom


async def _log_exception(error: Exception, scope: Any) -> None:
    """Unexpected errors reach our logs (Litestar's own logging is switched off)."""
    if not isinstance(error, HTTPException):
        log.error("unhandled error in %s", scope.get("path"), exc_info=error)


def _call_control(settings: Settings) -> TwilioCallControl | None:
    """Hang-ups and transfers need the REST API, i.e. the account SID and auth token."""
    if settings.twilio_account_sid is None or settings.twilio_auth_token is None:
        return None
    client = create_client(
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        api_base_url=settings.twilio_api_base_url,
    )
    return TwilioCallControl(client)


def create_app(settings: Settings | None = None, store: TranscriptStore | None = None) -> Litestar:
    """Build the app; with no arguments, settings come from the environment and `.env`,
    and the transcript store is the one they name (`serving_store`)."""
    settings = settings or load_settings()
    problems = settings.serving_problems()
    if problems:
        raise SettingsError(problems)
    if not settings.twilio_validate_signatures:
        log.warning(
            "TWILIO_VALIDATE_SIGNATURES=false: anyone can call the webhooks and open streams. "
            "Use this for local experiments only."
        )
    active: dict[str, Any] = {}
    control = _call_control(settings)
    services = CallServices(
        settings,
        store or serving_store(settings),
        StreamTokens(settings.stream_signing_key(), settings.stream_token_ttl_s),
        Metrics(lambda: len(active)),
        active,
        tools={tool.name: tool for tool in _tools(settings)},
        control=control,
    )
    if isinstance(services.store, BackgroundDelivery):
        services.metrics.watch_delivery(lambda: services.store.stats)  # type: ignore[attr-defined]
    return Litestar(
        route_handlers=[TwilioWebhooks, calls_router, health_router, media_router],
        state=app_state(services, control),
        lifespan=[_transcript_delivery(services.store, settings.transcript_flush_timeout_s)],
        debug=False,
        request_max_body_size=MAX_BODY_BYTES,
        logging_config=None,  # ours (voicebridge.logs), with the CallSid on every line
        after_exception=[_log_exception],
    )


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
