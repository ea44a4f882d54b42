"""Twilio REST: a client built from settings, and the number's voice webhook.

`make dev` points the number at its tunnel and puts the old webhook back on exit;
`voicebridge twilio point-number` does the pointing for production; outbound calls and
hang-ups use `create_client`. Mistakes a user can fix (wrong credentials, a number that is
not in the account, an unreachable API) come out as `TwilioAccountError`, one sentence
each. The auth token never appears in a message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from voicebridge.settings import TwilioSettings

API_TIMEOUT_S = 15.0
VOICE_WEBHOOK_PATH = "/twilio/voice"
CONSOLE = "console.twilio.com"
_LISTED_NUMBERS = 20


class TwilioAccountError(Exception):
    """A Twilio problem the user can fix; `str()` is the readable message."""


def voice_webhook_url(url: str) -> str:
    """Our voice webhook at `url`: a bare `https://host` gets the `/twilio/voice` route.

    Raises `ValueError` for anything but an absolute http(s) URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url}")
    if parts.path in ("", "/"):
        return url.rstrip("/") + VOICE_WEBHOOK_PATH
    return url


def create_client(
    account_sid: str,
    auth_token: str,
    *,
    api_base_url: str | None = None,
    http_client: Any = None,
) -> Client:
    """A Twilio client with a request timeout, talking to `api_base_url` when given.

    The base URL override (TWILIO_API_BASE_URL) is how tests and Twilio-compatible
    services are reached; edge and region would rewrite its host, so they are dropped.
    Pass `http_client` (e.g. `AsyncTwilioHttpClient()`) to use the `*_async` methods.
    """
    client = Client(
        account_sid, auth_token, http_client=http_client or TwilioHttpClient(timeout=API_TIMEOUT_S)
    )
    if api_base_url:
        client.edge = None
        client.region = None
        client.api.base_url = api_base_url.rstrip("/")
    return client


def client_from_settings(settings: TwilioSettings, *, http_client: Any = None) -> Client:
    return create_client(
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        api_base_url=settings.twilio_api_base_url,
        http_client=http_client,
    )


@contextmanager
def readable_errors(account_sid: str) -> Iterator[None]:
    """Turn what the SDK raises into `TwilioAccountError` with a message worth reading."""
    try:
        yield
    except TwilioException as error:
        raise TwilioAccountError(describe_error(error, account_sid)) from None
    except OSError as error:  # requests' and aiohttp's connection errors are OSErrors
        raise TwilioAccountError(f"cannot reach the Twilio API ({_root_cause(error)})") from None


def describe_error(error: TwilioException, account_sid: str) -> str:
    """One sentence for an API error; bad credentials get advice instead of Twilio's text."""
    status, code, message = _error_details(error)
    if status == 401 or code == 20003:
        return (
            f"Twilio rejected the credentials of account {account_sid} (error 20003): "
            f"check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN on {CONSOLE}"
        )
    return f"Twilio API error (HTTP {status}{f', code {code}' if code else ''}): {message}"


def _root_cause(error: BaseException) -> str:
    """`Connection refused` rather than requests' three nested wrappers around it."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return (error.strerror if isinstance(error, OSError) else None) or str(error)


def _error_details(error: TwilioException) -> tuple[int | None, int | None, str]:
    """(HTTP status, Twilio code, message) from either kind of SDK error.

    Record requests raise `TwilioRestException`; list pages raise a bare
    `TwilioException("Unable to fetch page", response)` carrying the HTTP response.
    """
    if isinstance(error, TwilioRestException):
        return error.status, error.code, str(error.msg)
    response = error.args[1] if len(error.args) > 1 else None
    status = getattr(response, "status_code", None)
    try:
        body = json.loads(getattr(response, "text", ""))
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    return status, body.get("code"), str(body.get("message") or error.args[0])


@dataclass(frozen=True)
class VoiceWebhook:
    """Where a number sends its calls: what `point_number` replaced and `restore` puts back.

    A TwiML App (`application_sid`) takes precedence over `url` while it is set, so it is
    cleared when pointing and remembered for restoring.
    """

    url: str | None
    method: str = "POST"
    application_sid: str | None = None

    def __str__(self) -> str:
        if self.application_sid:
            return f"TwiML App {self.application_sid}"
        return f"{self.url} ({self.method})" if self.url else "no voice webhook"


class TwilioNumber:
    """One phone number of the account, found by its E.164 form."""

    def __init__(self, client: Client, phone_number: str) -> None:
        self._client = client
        self.phone_number = phone_number
        self._sid: str | None = None

    @classmethod
    def from_settings(cls, settings: TwilioSettings) -> TwilioNumber:
        return cls(client_from_settings(settings), settings.twilio_phone_number)

    @property
    def _account_sid(self) -> str:
        return str(self._client.account_sid)

    def current(self) -> VoiceWebhook:
        """Where the number sends calls now; proves the credentials and the number first."""
        with readable_errors(self._account_sid):
            return _webhook_of(self._lookup())

    def point_number(self, url: str) -> VoiceWebhook:
        """Send the number's calls to `url` (POST); return the webhook it had before."""
        with readable_errors(self._account_sid):
            number = self._lookup()
            previous = _webhook_of(number)
            number.update(voice_url=url, voice_method="POST", voice_application_sid="")
        return previous

    def restore(self, previous: VoiceWebhook) -> None:
        """Put back what `point_number` replaced."""
        with readable_errors(self._account_sid):
            known = self._client.incoming_phone_numbers(self._sid) if self._sid else None
            (known or self._lookup()).update(
                voice_url=previous.url or "",
                voice_method=previous.method,
                voice_application_sid=previous.application_sid or "",
            )

    def _lookup(self) -> Any:
        """The number's resource; its SID is remembered so restoring is one request."""
        numbers = self._client.incoming_phone_numbers
        for number in numbers.list(phone_number=self.phone_number, limit=_LISTED_NUMBERS):
            if number.phone_number == self.phone_number:
                self._sid = str(number.sid)
                return number
        raise TwilioAccountError(self._not_found())

    def _not_found(self) -> str:
        listed = [
            str(n.phone_number)
            for n in self._client.incoming_phone_numbers.list(limit=_LISTED_NUMBERS + 1)
        ]
        where = f"TWILIO_PHONE_NUMBER {self.phone_number} is not a number of account "
        if not listed:
            return f"{where}{self._account_sid}, which has none yet: buy one on {CONSOLE}"
        more = ", …" if len(listed) > _LISTED_NUMBERS else ""
        return (
            f"{where}{self._account_sid}; its numbers: {', '.join(listed[:_LISTED_NUMBERS])}{more}"
        )


def _webhook_of(number: Any) -> VoiceWebhook:
    return VoiceWebhook(
        url=number.voice_url or None,
        method=number.voice_method or "POST",
        application_sid=number.voice_application_sid or None,
    )
