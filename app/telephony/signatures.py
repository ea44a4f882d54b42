"""Proof that a request comes from Twilio, for a call we answered.

- Webhooks carry `X-Twilio-Signature`, checked with the twilio package's validator over
  the URL rebuilt from PUBLIC_BASE_URL (never the Host header: proxies and tunnels change
  it) plus every form field.
- The media stream gets a short-lived token in a `<Parameter>`: an HMAC over the CallSid
  and an expiry, with a server secret. It is stateless, so whichever machine receives the
  stream can check it, and it is checked against `start`'s callSid before any OpenAI
  session is opened.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from twilio.request_validator import RequestValidator


class InvalidToken(Exception):
    """A stream token that is missing, forged, expired or for another call."""


def webhook_signature_valid(
    auth_token: str, url: str, params: Mapping[str, str], signature: str | None
) -> bool:
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))


class StreamTokens:
    """Issues and checks the tokens that tie a media stream to a call we answered."""

    def __init__(self, secret: bytes, ttl_s: float = 600.0) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, subject: str, now: float | None = None) -> str:
        """A token for `subject` (the CallSid, or an outbound call's reference)."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        return f"{expires}.{self._mac(subject, expires)}"

    def verify(self, token: str | None, subject: str, now: float | None = None) -> None:
        """Raise `InvalidToken` with the reason unless `token` was issued for `subject`."""
        if not token:
            raise InvalidToken("missing stream token")
        expires_text, _, mac = token.partition(".")
        if not expires_text.isdigit() or not mac:
            raise InvalidToken("malformed stream token")
        expires = int(expires_text)
        if not hmac.compare_digest(mac, self._mac(subject, expires)):
            raise InvalidToken("stream token does not match this call")
        if (time.time() if now is None else now) > expires:
            raise InvalidToken("stream token expired")

    def _mac(self, subject: str, expires: int) -> str:
        message = f"{subject}|{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]
