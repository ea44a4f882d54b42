"""A fake Twilio REST API on loopback, for the real twilio SDK to talk to.

Point a client at it with `create_client(sid, token, api_base_url=fake.base_url)` (or
`fake.client()`); every request is checked for the account's credentials and recorded in
`fake.requests`. It implements what VoiceBridge uses of the 2010-04-01 API:

- `GET  …/IncomingPhoneNumbers.json` (PhoneNumber filter, paging), `POST …/{PN}.json` (update)
- `POST …/Calls.json` (create) and `POST …/Calls/{CA}.json` (redirect, hang up);
  `forget_call(sid)` makes a call answer 404 / code 20404, as an ended call does.

Responses have the shape of Twilio's (the SDK is picky about list pages) and errors the
legacy `{code, message, more_info, status}` body the SDK turns into `TwilioRestException`.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from twilio.rest import Client

from tests.doubles.json_http import json_handler
from voicebridge.telephony.rest import create_client

API = "/2010-04-01"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "fake-twilio-auth-token"

_NUMBERS = re.compile(
    r"/Accounts/(?P<account>AC\w+)/IncomingPhoneNumbers(?:/(?P<sid>PN\w+))?\.json"
)
_CALLS = re.compile(r"/Accounts/(?P<account>AC\w+)/Calls(?:/(?P<sid>CA\w+))?\.json")


class TwilioError(Exception):
    """An error response: HTTP status, Twilio error code, message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    params: list[tuple[str, str]]
    """The form body in order; repeated keys (e.g. StatusCallbackEvent) appear repeatedly."""
    authorized: bool
    at: float = field(default_factory=time.monotonic)

    @property
    def form(self) -> dict[str, str]:
        return dict(self.params)

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.params if key == name]


def _new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _now() -> str:
    return format_datetime(datetime.now(UTC), usegmt=True)


def _snake(name: str) -> str:
    """Twilio's form names are the JSON field names in CamelCase: VoiceUrl → voice_url."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _formatted(number: str) -> str:
    digits = number.removeprefix("+1")
    if len(digits) == 10 and digits.isdigit():
        return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    return number


class FakeTwilioRest:
    """The fake API and its state; use as a context manager to run it."""

    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.numbers: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        """Exceptions the fake itself raised (answered as 500s); a test can assert none."""
        self._gone: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeTwilioRest:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def client(self, auth_token: str | None = None) -> Client:
        """A real SDK client pointed at this fake (with another token to test rejection)."""
        return create_client(
            self.account_sid, auth_token or self.auth_token, api_base_url=self.base_url
        )

    # --- state ---

    def add_number(self, phone_number: str, **fields: Any) -> dict[str, Any]:
        """Add a number to the account; `fields` override the resource's JSON fields."""
        sid = _new_sid("PN")
        resource: dict[str, Any] = {
            "account_sid": self.account_sid,
            "address_requirements": "none",
            "address_sid": None,
            "api_version": "2010-04-01",
            "beta": False,
            "bundle_sid": None,
            "capabilities": {"fax": False, "mms": True, "sms": True, "voice": True},
            "date_created": _now(),
            "date_updated": _now(),
            "emergency_address_sid": None,
            "emergency_address_status": "unregistered",
            "emergency_status": "Active",
            "friendly_name": _formatted(phone_number),
            "identity_sid": None,
            "origin": "twilio",
            "phone_number": phone_number,
            "sid": sid,
            "sms_application_sid": "",
            "sms_fallback_method": "POST",
            "sms_fallback_url": "",
            "sms_method": "POST",
            "sms_url": "https://demo.twilio.com/welcome/sms/reply",
            "status": "in-use",
            "status_callback": "",
            "status_callback_method": "POST",
            "subresource_uris": {"assigned_add_ons": self._number_uri(sid, "/AssignedAddOns")},
            "trunk_sid": None,
            "uri": self._number_uri(sid),
            "voice_application_sid": "",
            "voice_caller_id_lookup": False,
            "voice_fallback_method": "POST",
            "voice_fallback_url": "",
            "voice_method": "POST",
            "voice_receive_mode": "voice",
            "voice_url": "https://demo.twilio.com/welcome/voice/",
        }
        resource.update(fields)
        with self._lock:
            self.numbers[sid] = resource
        return resource

    def number(self, phone_number: str) -> dict[str, Any]:
        with self._lock:
            return next(n for n in self.numbers.values() if n["phone_number"] == phone_number)

    def add_call(self, call_sid: str, **fields: Any) -> None:
        """A call Twilio knows about that did not start through this API (an inbound one)."""
        with self._lock:
            self.calls[call_sid] = {"sid": call_sid, "status": "in-progress", **fields}

    def forget_call(self, call_sid: str) -> None:
        """From now on, requests about this call answer 404 / 20404 (it has ended)."""
        with self._lock:
            self._gone.add(call_sid)

    def requests_to(self, method: str, fragment: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and fragment in r.path]

    # --- the API ---

    def handle(
        self, method: str, target: str, authorization: str | None, body: str
    ) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        params = parse_qsl(body, keep_blank_values=True)
        authorized = authorization == self._expected_authorization()
        with self._lock:
            self.requests.append(RecordedRequest(method, parts.path, query, params, authorized))
            try:
                if not authorized:
                    raise TwilioError(401, 20003, "Authenticate")
                return self._route(method, parts.path, query, dict(params))
            except TwilioError as error:
                return error.status, error.body()
            except Exception as error:  # a bug in the fake: answer 500, keep it for the test
                self.errors.append(repr(error))
                return 500, TwilioError(500, 20500, "Internal Server Error").body()

    def _expected_authorization(self) -> str:
        pair = f"{self.account_sid}:{self.auth_token}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _route(
        self, method: str, path: str, query: dict[str, str], form: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        relative = path.removeprefix(API)
        for pattern, handlers in (
            (_NUMBERS, {("GET", False): self._list_numbers, ("POST", True): self._update_number}),
            (_CALLS, {("POST", False): self._create_call, ("POST", True): self._update_call}),
        ):
            match = pattern.fullmatch(relative) if path.startswith(API) else None
            if match is None:
                continue
            handler = handlers.get((method, match["sid"] is not None))
            if handler is None:
                raise TwilioError(405, 20004, "Method not allowed")
            if match["account"] != self.account_sid:
                raise TwilioError(404, 20404, f"The requested resource {path} was not found")
            return handler(match["sid"], query, form)
        raise TwilioError(404, 20404, f"The requested resource {path} was not found")

    def _numbers_uri(self) -> str:
        return f"{API}/Accounts/{self.account_sid}/IncomingPhoneNumbers.json"

    def _number_uri(self, sid: str, sub: str = "") -> str:
        return f"{API}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{sid}{sub}.json"

    def _list_numbers(
        self, _sid: str | None, query: dict[str, str], _form: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        wanted = query.get("PhoneNumber", "")
        found = [n for n in self.numbers.values() if wanted in n["phone_number"]]
        size = int(query.get("PageSize", "50"))
        page = int(query.get("Page", "0"))
        rows = found[page * size : (page + 1) * size]
        uri = self._numbers_uri()

        def page_uri(number: int) -> str:
            filters = {"PhoneNumber": wanted} if wanted else {}
            return f"{uri}?{urlencode({**filters, 'PageSize': size, 'Page': number})}"

        more = (page + 1) * size < len(found)
        return 200, {
            "end": page * size + max(len(rows) - 1, 0),
            "first_page_uri": page_uri(0),
            "incoming_phone_numbers": rows,
            "next_page_uri": page_uri(page + 1) if more else None,
            "page": page,
            "page_size": size,
            "previous_page_uri": page_uri(page - 1) if page else None,
            "start": page * size,
            "uri": page_uri(page),
        }

    def _update_number(
        self, sid: str | None, _query: dict[str, str], form: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        number = self.numbers.get(sid or "")
        if number is None:
            raise TwilioError(404, 20404, f"The requested resource {sid} was not found")
        for name, value in form.items():
            field = _snake(name)
            if field.endswith("_url") and value and urlsplit(value).scheme not in ("http", "https"):
                raise TwilioError(400, 21502, f"{name} is not valid: {value}")
            if field.endswith("_method") and value not in ("GET", "POST"):
                raise TwilioError(400, 21610, f"{name} must be GET or POST")
            if field in number:
                number[field] = value
        number["date_updated"] = _now()
        return 200, number

    def _create_call(
        self, _sid: str | None, _query: dict[str, str], form: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        if not form.get("To"):
            raise TwilioError(400, 21201, "No 'To' number is specified")
        if not form.get("From"):
            raise TwilioError(400, 21603, "A 'From' phone number is required.")
        if not (form.get("Url") or form.get("Twiml") or form.get("ApplicationSid")):
            raise TwilioError(400, 21205, "Url parameter is required.")
        sid = _new_sid("CA")
        uri = f"{API}/Accounts/{self.account_sid}/Calls/{sid}"
        call: dict[str, Any] = {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": None,
            "api_version": "2010-04-01",
            "caller_name": None,
            "date_created": None,
            "date_updated": None,
            "direction": "outbound-api",
            "duration": None,
            "end_time": None,
            "forwarded_from": None,
            "from": form["From"],
            "from_formatted": _formatted(form["From"]),
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": next(
                (n["sid"] for n in self.numbers.values() if n["phone_number"] == form["From"]),
                None,
            ),
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": sid,
            "start_time": None,
            "status": "queued",
            "subresource_uris": {
                "notifications": f"{uri}/Notifications.json",
                "recordings": f"{uri}/Recordings.json",
                "payments": f"{uri}/Payments.json",
                "events": f"{uri}/Events.json",
                "siprec": f"{uri}/Siprec.json",
                "streams": f"{uri}/Streams.json",
                "transcriptions": f"{uri}/Transcriptions.json",
                "user_defined_message_subscriptions": f"{uri}/UserDefinedMessageSubscriptions.json",
                "user_defined_messages": f"{uri}/UserDefinedMessages.json",
            },
            "to": form["To"],
            "to_formatted": _formatted(form["To"]),
            "trunk_sid": None,
            "uri": f"{uri}.json",
        }
        self.calls[sid] = call
        return 201, call

    def _update_call(
        self, sid: str | None, _query: dict[str, str], form: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        call = self.calls.get(sid or "")
        if call is None or sid in self._gone:
            raise TwilioError(404, 20404, f"The requested resource /Calls/{sid}.json was not found")
        status = form.get("Status")
        if status is not None:
            if status not in ("completed", "canceled"):
                raise TwilioError(400, 21218, f"Invalid Status: {status}")
            call["status"] = status
            call["end_time"] = _now()
        call["date_updated"] = _now()
        return 200, call


def _handler(fake: FakeTwilioRest) -> type[BaseHTTPRequestHandler]:
    """JSON over keep-alive HTTP/1.1, as the SDK's requests session expects."""
    return json_handler(
        lambda method, path, headers, body: fake.handle(
            method, path, headers.get("Authorization"), body
        ),
        keep_alive=True,
    )
