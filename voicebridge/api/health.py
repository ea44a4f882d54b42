"""Health and metrics: what the proxy and Prometheus poll."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from litestar import MediaType, Response, Router, get
from litestar.datastructures import State

from voicebridge.app_state import call_services
from voicebridge.metrics import CONTENT_TYPE
from voicebridge.storage.base import BackgroundDelivery


@get("/metrics", media_type=CONTENT_TYPE)
async def metrics(state: State) -> bytes:
    """Prometheus text format."""
    return call_services(state).metrics.exposition()


@get("/healthz", media_type=MediaType.JSON)
async def healthz(state: State) -> Response[dict[str, Any]]:
    """503 while draining, so the proxy sends new calls to other machines."""
    services = call_services(state)
    status = "draining" if services.draining else "ok"
    body: dict[str, Any] = {"status": status, "active_calls": len(services.active)}
    if isinstance(services.store, BackgroundDelivery):
        body["transcripts"] = asdict(services.store.stats)
    return Response(body, status_code=503 if services.draining else 200)


health_router = Router("/", route_handlers=[metrics, healthz])
