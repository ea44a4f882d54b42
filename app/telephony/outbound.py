"""Outbound calls: validated numbers, and inline TwiML that carries the call's own agent
settings in signed `<Parameter>`s, so whichever machine gets the stream can serve it."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twilio.rest import Client

from app.settings import Settings
from app.telephony import twiml
from app.telephony.signatures import StreamTokens

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
TWIML_LIMIT = 4000  # characters of inline TwiML Twilio accepts
SIGNED_PARAMETERS = ("from", "to", "direction", "instructions", "greeting", "metadata")
_COMPRESSED = "z:"


class OutboundError(ValueError):
    """A call we will not place; `str()` says why, for the API's 400 and the CLI."""


@dataclass(frozen=True)
class OutboundCall:
    to: str
    instructions: str | None = None
    greeting: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


def check_number(number: str, allowed_prefixes: list[str]) -> str:
    """E.164, and inside the allow-list: the guard against toll fraud."""
    number = number.strip().replace(" ", "")
    if not E164.match(number):
        raise OutboundError(f"{number!r} is not an E.164 phone number such as +15551234567")
    if not allowed_prefixes:
        raise OutboundError(
            "outbound calls are disabled: set OUTBOUND_ALLOWED_PREFIXES (e.g. +1,+44)"
        )
    if not any(number.startswith(prefix) for prefix in allowed_prefixes):
        allowed = ", ".join(allowed_prefixes)
        raise OutboundError(f"{number} is outside OUTBOUND_ALLOWED_PREFIXES ({allowed})")
    return number


def signed_payload(parameters: Mapping[str, str]) -> str:
    """What a stream token vouches for beside its subject: the call's own settings."""
    return "\n".join(parameters.get(name, "") for name in SIGNED_PARAMETERS)


def stream_parameters(call: OutboundCall, from_number: str, tokens: StreamTokens) -> dict[str, str]:
    parameters = {"from": from_number, "to": call.to, "direction": "outbound"}
    if call.instructions:
        parameters["instructions"] = _pack(call.instructions)
    if call.greeting is not None:
        parameters["greeting"] = call.greeting
    if call.metadata:
        parameters["metadata"] = json.dumps(dict(call.metadata), sort_keys=True)
    parameters["ref"] = "out_" + secrets.token_hex(8)
    parameters["token"] = tokens.issue(parameters["ref"], signed_payload(parameters))
    return parameters


def outbound_twiml(parameters: Mapping[str, str], settings: Settings) -> str:
    assert settings.stream_url is not None
    action = f"{settings.public_base_url}/twilio/stream-ended"
    document = twiml.connect_stream(settings.stream_url, parameters, action_url=action)
    if len(document) > TWIML_LIMIT:
        raise OutboundError(
            f"the call's instructions are too long for Twilio's inline TwiML "
            f"({len(document)} of {TWIML_LIMIT} characters, after compression): shorten them"
        )
    return document


def place_call(client: Client, call: OutboundCall, settings: Settings, tokens: StreamTokens) -> str:
    """Dial `call.to` (blocking; run it off the event loop). Returns the CallSid."""
    missing = [
        name
        for name, value in (
            ("PUBLIC_BASE_URL", settings.public_base_url),
            ("TWILIO_PHONE_NUMBER", settings.twilio_phone_number),
        )
        if not value
    ]
    if missing:
        raise OutboundError(f"set {' and '.join(missing)} to place calls")
    assert settings.twilio_phone_number is not None
    parameters = stream_parameters(call, settings.twilio_phone_number, tokens)
    options: dict[str, Any] = {
        "to": call.to,
        "from_": settings.twilio_phone_number,
        "twiml": outbound_twiml(parameters, settings),
        "status_callback": f"{settings.public_base_url}/twilio/status",
        "status_callback_event": ["initiated", "ringing", "answered", "completed"],
        "status_callback_method": "POST",
    }
    if settings.machine_detection:
        # A message can only be left once the greeting has ended (machine_end_*); without
        # one, the first sign of a machine (machine_start) is enough to hang up sooner.
        options["machine_detection"] = (
            "DetectMessageEnd" if settings.voicemail_message else "Enable"
        )
        options["async_amd"] = "true"
        options["async_amd_status_callback"] = f"{settings.public_base_url}/twilio/amd"
        options["async_amd_status_callback_method"] = "POST"
    created = client.calls.create(**options)
    call_sid = str(created.sid)
    tokens.placed(parameters["ref"], call_sid)  # no other CallSid may use its token
    return call_sid


def call_instructions(parameters: Mapping[str, str]) -> str | None:
    packed = parameters.get("instructions")
    return _unpack(packed) if packed else None


def instructions_digest(instructions: str) -> str:
    """Names per-call instructions in a transcript without copying them in: the whole
    SHA-256 (64 hex digits), as the transcript schema calls it, so `sha256sum` of the
    instructions file matches it."""
    return hashlib.sha256(instructions.encode()).hexdigest()


def _pack(text: str) -> str:
    """Long instructions travel compressed (TwiML is capped at 4000 characters)."""
    if len(text) < 500:
        return text
    return _COMPRESSED + base64.b64encode(zlib.compress(text.encode(), 9)).decode()


def _unpack(value: str) -> str:
    if not value.startswith(_COMPRESSED):
        return value
    try:
        return zlib.decompress(base64.b64decode(value[len(_COMPRESSED) :])).decode()
    except (ValueError, zlib.error) as error:
        raise ValueError(f"instructions parameter is not valid: {error}") from None
