"""Bounds on what a client may make us read: Twilio's webhook bodies are a few KB, and
`POST /calls` bodies are smaller than the 4000-character TwiML they become.

Every body is capped (`MAX_BODY_BYTES`, also for chunked bodies without Content-Length:
Litestar counts what it streams) and a form's fields are counted before any is parsed, so
whatever a client sends costs at most a few milliseconds of the event loop the calls'
audio runs on. Refusals close the connection, so the rest of a flood is not even read.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

from litestar import Request
from litestar.exceptions import ClientException, HTTPException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from voicebridge.logs import RateLimitedLog

MAX_BODY_BYTES = 32 * 1024  # the worst such form (all %-escapes): ~3 ms to parse and check
MAX_FORM_FIELDS = 256  # Twilio's webhooks carry about 30
FORM = "application/x-www-form-urlencoded"  # all Twilio ever sends
CLOSE = {"connection": "close"}

log = RateLimitedLog(logging.getLogger("voicebridge.http"))


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    """The body, or 413 once it passes `MAX_BODY_BYTES` (the app's `request_max_body_size`)."""
    try:
        return await request.body()
    except RequestEntityTooLarge:
        log.warning("refused a body over %d bytes", MAX_BODY_BYTES, extra=_where(request))
        raise RequestEntityTooLarge(
            f"the body is larger than {MAX_BODY_BYTES} bytes", headers=CLOSE
        ) from None


async def read_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """A url-encoded form of at most `MAX_FORM_FIELDS` fields (400) in a bounded body."""
    content_type, _ = request.content_type
    if content_type != FORM:
        log.warning("refused a form of type %r", content_type[:64], extra=_where(request))
        raise HTTPException(status_code=415, detail=f"send {FORM}", headers=CLOSE)
    text = (await read_body(request)).decode("utf-8", "replace")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:  # counted from the separators, before anything is parsed
        log.warning("refused a form of over %d fields", MAX_FORM_FIELDS, extra=_where(request))
        raise ClientException(
            f"a form may have at most {MAX_FORM_FIELDS} fields", headers=CLOSE
        ) from None
    return dict(pairs)


def _where(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"path": request.url.path, "client": request.client.host if request.client else "-"}
