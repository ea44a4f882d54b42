"""The Litestar application: Twilio webhooks, the media-stream WebSocket, health."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from litestar import Litestar, MediaType, Request, Response, get, post, websocket
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ServiceUnavailableException,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from twilio.base.exceptions import TwilioRestException

from app.call.media_socket import MediaStreamSocket
from app.call.stream import CallServices, handle_media_stream
from app.call.tools import Tool, builtin_tools, load_tools
from app.http_limits import CLOSE, MAX_BODY_BYTES, read_body, read_form
from app.logs import RateLimitedLog, call_sid_var
from app.metrics import CONTENT_TYPE, Metrics
from app.settings import Settings, SettingsError, load_settings
from app.storage.base import BackgroundDelivery, TranscriptNotFound, TranscriptStore, check_call_sid
from app.storage.factory import serving_store
from app.telephony import twiml
from app.telephony.control import TwilioCallControl
from app.telephony.outbound import (
    OutboundCall,
    OutboundError,
    check_number,
    place_call,
    signed_payload,
)
from app.telephony.rest import create_client
from app.telephony.signatures import StreamTokens, webhook_signature_valid

log = logging.getLogger("voicebridge.app")

NOT_CONFIGURED = "Sorry, this line is not set up yet. Please try again later. Goodbye."
ALL_LINES_BUSY = "Sorry, all our lines are busy right now. Please call again in a few minutes."
# Twilio's final call statuses; the intermediate ones (initiated, ringing, answered,
# in-progress) say nothing the transcript does not already show, so they are not stored.
FINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
APOLOGY = (
    "Sorry, we're having trouble connecting you to our assistant right now. "
    "Please try again in a moment. Goodbye."
)


def _tools(settings: Settings) -> list[Tool]:
    """AGENT_TOOLS was loaded once already, by `serving_problems`: it loads."""
    custom = load_tools(settings.agent_tools) if settings.agent_tools else []
    return builtin_tools(settings.transfer_number) + custom


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


async def _log_exception(error: Exception, scope: Any) -> None:
    """Unexpected errors reach our logs (Litestar's own logging is switched off)."""
    if not isinstance(error, HTTPException):
        log.error("unhandled error in %s", scope.get("path"), exc_info=error)


def _form_call_sid(form: dict[str, str]) -> str:
    """The webhook's CallSid, refused (400) unless it is safe as a file name and key."""
    try:
        call_sid = check_call_sid(form.get("CallSid", ""))
    except TranscriptNotFound:
        raise ClientException("CallSid is missing or malformed") from None
    call_sid_var.set(call_sid)  # this request's own context: its log lines name the call
    return call_sid


def _twilio_time(value: str) -> str:
    """Twilio's RFC 2822 `Timestamp` as ISO 8601 like the rest of the transcript; now if
    absent, as given if unparseable."""
    if not value:
        return datetime.now(UTC).isoformat()
    try:
        return parsedate_to_datetime(value).astimezone(UTC).isoformat()
    except (TypeError, ValueError):
        return value


def status_facts(form: dict[str, str]) -> dict[str, Any] | None:
    """What a status callback adds to the transcript; None for an intermediate status."""
    status = form.get("CallStatus", "")
    if status not in FINAL_STATUSES:
        return None
    facts: dict[str, Any] = {
        "status": status,
        "duration_s": int(form["CallDuration"]) if form.get("CallDuration", "").isdigit() else 0,
        "at": _twilio_time(form.get("Timestamp", "")),
    }
    if form.get("AnsweredBy"):
        facts["answered_by"] = form["AnsweredBy"]
    if form.get("SipResponseCode"):
        facts["sip_response_code"] = form["SipResponseCode"]
    return facts


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
    refusals = RateLimitedLog(log)
    services = CallServices(
        settings,
        store or serving_store(settings),
        StreamTokens(settings.stream_signing_key(), settings.stream_token_ttl_s),
        Metrics(lambda: len(active)),
        active,
        tools={tool.name: tool for tool in _tools(settings)},
        control=(control := _call_control(settings)),
    )
    if isinstance(services.store, BackgroundDelivery):
        services.metrics.watch_delivery(lambda: services.store.stats)  # type: ignore[attr-defined]

    async def twilio_form(request: Request[Any, Any, Any]) -> dict[str, str]:
        """The webhook's form fields, once `X-Twilio-Signature` proves Twilio sent them.

        The signed URL is rebuilt from PUBLIC_BASE_URL, never from the Host header, which
        proxies and tunnels rewrite. Without a signature the body is not even read; with
        one, the form is bounded (`read_form`) before it is parsed and checked.
        """
        validate = settings.twilio_validate_signatures
        signature = request.headers.get("x-twilio-signature")
        params = await read_form(request) if signature or not validate else {}
        if not validate:
            return params
        assert settings.twilio_auth_token is not None  # serving_problems() guarantees it
        query = f"?{request.url.query}" if request.url.query else ""
        url = f"{settings.public_base_url}{request.url.path}{query}"
        if not webhook_signature_valid(
            settings.twilio_auth_token.get_secret_value(), url, params, signature
        ):
            refusals.warning(
                "rejected a webhook with a %s Twilio signature",
                "bad" if signature else "missing",
                extra={"path": request.url.path},
            )
            raise PermissionDeniedException("invalid Twilio signature", headers=CLOSE)
        return params

    @post("/twilio/voice", media_type=MediaType.XML, status_code=200)
    async def voice_webhook(request: Request[Any, Any, Any]) -> str:
        """Twilio asks what to do with a call: open a bidirectional media stream.

        A call this machine already answered gets no second token: the request is a replay
        (Twilio asks once per call), so the answer is TwiML that hangs up. Not a 4xx: were
        it Twilio asking, an error would make it play its "application error" message and
        try the fallback URL, while `<Hangup/>` simply ends the call.
        """
        form = await twilio_form(request)
        stream_url = settings.stream_url
        if stream_url is None:
            log.error("PUBLIC_BASE_URL is not set: cannot tell Twilio where to stream")
            return twiml.say_and_hang_up(NOT_CONFIGURED)
        if services.draining:
            log.warning("draining: turning a new call away")
            return twiml.say_and_hang_up(ALL_LINES_BUSY)
        if len(services.active) >= settings.max_concurrent_calls:
            log.warning("all lines busy (%d calls): turning a call away", len(services.active))
            return twiml.say_and_hang_up(ALL_LINES_BUSY)
        call_sid = form.get("CallSid", "")
        parameters = {
            "from": form.get("From", ""),
            "to": form.get("To", ""),
            "direction": "outbound"
            if form.get("Direction", "").startswith("outbound")
            else "inbound",
        }
        token = services.tokens.issue_once(call_sid, signed_payload(parameters))
        if token is None:
            refusals.warning("no second stream token for an answered call: hanging up")
            return twiml.hang_up()
        parameters["token"] = token
        action = f"{settings.public_base_url}/twilio/stream-ended"
        return twiml.connect_stream(stream_url, parameters, action_url=action)

    @post("/twilio/stream-ended", media_type=MediaType.XML, status_code=200)
    async def stream_ended(request: Request[Any, Any, Any]) -> str:
        """Our side ended the stream while the caller was still there: never dead air."""
        await twilio_form(request)
        return twiml.say_and_hang_up(APOLOGY)

    @post("/twilio/status", status_code=204)
    async def call_status(request: Request[Any, Any, Any]) -> None:
        """Twilio's status callback: the call's final status and duration go into its
        transcript, whether the stream has ended (here or on another machine) or not;
        the store is where the two meet."""
        form = await twilio_form(request)
        call_sid = _form_call_sid(form)
        facts = status_facts(form)
        if facts is None:
            return
        await asyncio.to_thread(services.store.record_call_status, call_sid, facts)
        log.info("call status recorded", extra=facts)

    @post("/twilio/amd", status_code=204)
    async def machine_detection(request: Request[Any, Any, Any]) -> None:
        """Asynchronous answering-machine detection: on a machine, leave VOICEMAIL_MESSAGE
        after the beep (or hang up without one, and always on a fax) so the agent does
        not talk to a recording; the transcript says what happened."""
        form = await twilio_form(request)
        call_sid = _form_call_sid(form)
        answered_by = form.get("AnsweredBy", "unknown")
        facts: dict[str, Any] = {"answered_by": answered_by}
        if answered_by == "fax" or answered_by.startswith("machine_"):
            facts["voicemail_left"] = False
            if control is None:
                log.warning(
                    "answered by %s, but without Twilio credentials we cannot hang up", answered_by
                )
            elif settings.voicemail_message and answered_by.startswith("machine_end_"):
                facts["voicemail_left"] = await asyncio.to_thread(
                    control.leave_voicemail, call_sid, settings.voicemail_message
                )
            else:
                await asyncio.to_thread(control.hang_up, call_sid)
        await asyncio.to_thread(services.store.record_call_status, call_sid, facts)
        log.info("answering machine detection", extra=facts)

    @post("/calls", status_code=201)
    async def place_outbound_call(request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Have the agent call someone: `{"to": "+1…", "instructions"?, "greeting"?,
        "metadata"?}` with `Authorization: Bearer API_TOKEN`."""
        _authorize(request, settings)
        try:
            body = PlaceCallBody.model_validate_json(await read_body(request))
            to = check_number(body.to, settings.outbound_allowed_prefixes)
        except (ValidationError, OutboundError) as error:
            raise ClientException(_first_error(error)) from None
        if control is None:
            raise ServiceUnavailableException("set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        call = OutboundCall(to, body.instructions, body.greeting, body.metadata)
        try:
            call_sid = await asyncio.to_thread(
                place_call, control.client, call, settings, services.tokens
            )
        except OutboundError as error:
            raise ClientException(str(error)) from None
        except TwilioRestException as error:
            log.warning("Twilio refused the call: %s", error.msg)
            raise HTTPException(status_code=502, detail=f"Twilio: {error.msg}") from None
        log.info("placed an outbound call", extra={"to": to, "placed_call_sid": call_sid})
        return {"call_sid": call_sid, "to": to}

    @websocket("/media-stream", websocket_class=MediaStreamSocket)
    async def media_stream(socket: MediaStreamSocket) -> None:
        await handle_media_stream(socket, services)

    @get("/metrics", media_type=CONTENT_TYPE)
    async def metrics() -> bytes:
        """Prometheus text format."""
        return services.metrics.exposition()

    @get("/healthz", media_type=MediaType.JSON)
    async def healthz() -> Response[dict[str, Any]]:
        """503 while draining, so the proxy sends new calls to other machines."""
        status = "draining" if services.draining else "ok"
        body: dict[str, Any] = {"status": status, "active_calls": len(services.active)}
        if isinstance(services.store, BackgroundDelivery):
            body["transcripts"] = asdict(services.store.stats)
        return Response(body, status_code=503 if services.draining else 200)

    app = Litestar(
        route_handlers=[
            voice_webhook,
            stream_ended,
            call_status,
            machine_detection,
            place_outbound_call,
            media_stream,
            metrics,
            healthz,
        ],
        lifespan=[_transcript_delivery(services.store, settings.transcript_flush_timeout_s)],
        debug=False,
        request_max_body_size=MAX_BODY_BYTES,
        logging_config=None,  # ours (app.logs), with the CallSid on every line
        after_exception=[_log_exception],
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
