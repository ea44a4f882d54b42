"""`POST /calls`: have the agent call someone."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from litestar import Request, Router, post
from litestar.datastructures import State
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotAuthorizedException,
    ServiceUnavailableException,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from twilio.base.exceptions import TwilioRestException

from voicebridge.app_state import call_services, twilio_control
from voicebridge.http_limits import read_body
from voicebridge.settings import Settings
from voicebridge.telephony.outbound import OutboundCall, OutboundError, check_number, place_call

log = logging.getLogger("voicebridge.app")


class PlaceCallBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str
    instructions: str | None = None
    greeting: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


def _authorize(request: Request[Any, Any, Any], settings: Settings) -> None:
    if settings.api_token is None:
        raise ServiceUnavailableException("set API_TOKEN to enable POST /calls")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = settings.api_token.get_secret_value()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise NotAuthorizedException("a valid Authorization: Bearer API_TOKEN is required")


def _first_error(error: ValidationError | OutboundError) -> str:
    if isinstance(error, OutboundError):
        return str(error)
    first = error.errors(include_url=False)[0]
    return f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}"


@post("/calls", status_code=201)
async def place_outbound_call(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    """Have the agent call someone: `{"to": "+1…", "instructions"?, "greeting"?,
    "metadata"?}` with `Authorization: Bearer API_TOKEN`."""
    services = call_services(state)
    settings = services.settings
    _authorize(request, settings)
    try:
        body = PlaceCallBody.model_validate_json(await read_body(request))
        to = check_number(body.to, settings.outbound_allowed_prefixes)
    except (ValidationError, OutboundError) as error:
        raise ClientException(_first_error(error)) from None
    twilio = twilio_control(state)
    if twilio is None:
        raise ServiceUnavailableException("set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
    call = OutboundCall(to, body.instructions, body.greeting, body.metadata)
    try:
        call_sid = await asyncio.to_thread(
            place_call, twilio.client, call, settings, services.tokens
        )
    except OutboundError as error:
        raise ClientException(str(error)) from None
    except TwilioRestException as error:
        log.warning("Twilio refused the call: %s", error.msg)
        raise HTTPException(status_code=502, detail=f"Twilio: {error.msg}") from None
    log.info("placed an outbound call", extra={"to": to, "placed_call_sid": call_sid})
    return {"call_sid": call_sid, "to": to}


calls_router = Router("/", route_handlers=[place_outbound_call])
