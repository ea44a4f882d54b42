"""The Twilio edge over HTTP: the webhooks Twilio calls while a call is set up and ends."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from litestar import Controller, MediaType, Request, post
from litestar.datastructures import State
from litestar.exceptions import ClientException, PermissionDeniedException

from voicebridge.app_state import call_services, twilio_control
from voicebridge.call.stream import CallServices
from voicebridge.http_limits import CLOSE, read_form
from voicebridge.logs import call_sid_var
from voicebridge.storage.base import TranscriptNotFound, check_call_sid
from voicebridge.telephony import twiml
from voicebridge.telephony.outbound import signed_payload
from voicebridge.telephony.signatures import webhook_signature_valid

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


class TwilioWebhooks(Controller):
    """Twilio's webhooks under `/twilio`; refusals are rate-limited by the app's own
    limiter (`CallServices.refusals`), so one app's flood doesn't mute another's."""

    path = "/twilio"

    async def _form(
        self, request: Request[Any, Any, Any], services: CallServices
    ) -> dict[str, str]:
        """The webhook's form fields, once `X-Twilio-Signature` proves Twilio sent them.

        The signed URL is rebuilt from PUBLIC_BASE_URL, never from the Host header, which
        proxies and tunnels rewrite. Without a signature the body is not even read; with
        one, the form is bounded (`read_form`) before it is parsed and checked.
        """
        settings = services.settings
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
            services.refusals.warning(
                "rejected a webhook with a %s Twilio signature",
                "bad" if signature else "missing",
                extra={"path": request.url.path},
            )
            raise PermissionDeniedException("invalid Twilio signature", headers=CLOSE)
        return params

    @post("/voice", media_type=MediaType.XML, status_code=200)
    async def voice_webhook(self, request: Request[Any, Any, Any], state: State) -> str:
        """Twilio asks what to do with a call: open a bidirectional media stream.

        A call this machine already answered gets no second token: the request is a replay
        (Twilio asks once per call), so the answer is TwiML that hangs up. Not a 4xx: were
        it Twilio asking, an error would make it play its "application error" message and
        try the fallback URL, while `<Hangup/>` simply ends the call.
        """
        services = call_services(state)
        form = await self._form(request, services)
        settings = services.settings
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
            services.refusals.warning("no second stream token for an answered call: hanging up")
            return twiml.hang_up()
        parameters["token"] = token
        action = f"{settings.public_base_url}/twilio/stream-ended"
        return twiml.connect_stream(stream_url, parameters, action_url=action)

    @post("/stream-ended", media_type=MediaType.XML, status_code=200)
    async def stream_ended(self, request: Request[Any, Any, Any], state: State) -> str:
        """Our side ended the stream while the caller was still there: never dead air."""
        await self._form(request, call_services(state))
        return twiml.say_and_hang_up(APOLOGY)

    @post("/status", status_code=204)
    async def call_status(self, request: Request[Any, Any, Any], state: State) -> None:
        """Twilio's status callback: the call's final status and duration go into its
        transcript, whether the stream has ended (here or on another machine) or not;
        the store is where the two meet."""
        services = call_services(state)
        form = await self._form(request, services)
        call_sid = _form_call_sid(form)
        facts = status_facts(form)
        if facts is None:
            return
        await asyncio.to_thread(services.store.record_call_status, call_sid, facts)
        log.info("call status recorded", extra=facts)

    @post("/amd", status_code=204)
    async def machine_detection(
        self,
        request: Request[Any, Any, Any],
        state: State,
    ) -> None:
        """Asynchronous answering-machine detection: on a machine, leave VOICEMAIL_MESSAGE
        after the beep (or hang up without one, and always on a fax) so the agent does
        not talk to a recording; the transcript says what happened."""
        services = call_services(state)
        form = await self._form(request, services)
        call_sid = _form_call_sid(form)
        twilio = twilio_control(state)
        answered_by = form.get("AnsweredBy", "unknown")
        facts: dict[str, Any] = {"answered_by": answered_by}
        voicemail = services.settings.voicemail_message
        if answered_by == "fax" or answered_by.startswith("machine_"):
            facts["voicemail_left"] = False
            if twilio is None:
                log.warning(
                    "answered by %s, but without Twilio credentials we cannot hang up", answered_by
                )
            elif voicemail and answered_by.startswith("machine_end_"):
                facts["voicemail_left"] = await asyncio.to_thread(
                    twilio.leave_voicemail, call_sid, voicemail
                )
            else:
                await asyncio.to_thread(twilio.hang_up, call_sid)
        await asyncio.to_thread(services.store.record_call_status, call_sid, facts)
        log.info("answering machine detection", extra=facts)
