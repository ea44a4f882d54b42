"""Proof that a request comes from Twilio, for a call we answered.

- Webhooks carry `X-Twilio-Signature`, checked with the twilio package's validator over
  the URL rebuilt from PUBLIC_BASE_URL (never the Host header: proxies and tunnels change
  it) plus every form field.
- The media stream gets a short-lived token in a `<Parameter>`: an HMAC over the CallSid
  and an expiry, with a server secret. It is stateless, so whichever machine receives the
  stream can check it, and it is checked against `start`'s callSid before any OpenAI
  session is opened.
- On top of that, each machine remembers (in bounded memory) the tokens it has seen used,
  the CallSids it has answered, and the CallSid Twilio gave each outbound call it placed:
  a token opens one stream, ever, and only for its own call.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import threading
import time
from collections.abc import Mapping
from typing import Generic, TypeVar

from twilio.request_validator import RequestValidator

T = TypeVar("T")

TOKEN_MEMORY = 10_000  # entries per memory: 3 MB each at most (README, "Security and limits")
ANSWERED_MEMORY_S = 24 * 3600  # a replayed voice webhook gets no token for this long
_EXPIRY = re.compile(r"[0-9]{1,12}")  # seconds since 1970: 12 digits last until year 33658


class InvalidToken(Exception):
    """A stream token that is missing, forged, expired, used or for another call."""


def webhook_signature_valid(
    auth_token: str, url: str, params: Mapping[str, str], signature: str | None
) -> bool:
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))


class ExpiringMemory(Generic[T]):
    """Keys remembered until they expire, at most `capacity` of them (then the soonest to
    expire goes first). Thread-safe: outbound calls are placed from a worker thread."""

    def __init__(self, capacity: int = TOKEN_MEMORY) -> None:
        self.capacity = capacity
        self._items: dict[str, tuple[float, T]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> T | None:
        with self._lock:
            self._prune(now)
            item = self._items.get(key)
        return None if item is None else item[1]

    def knows(self, key: str, now: float) -> bool:
        with self._lock:
            self._prune(now)
            return key in self._items

    def full(self, now: float) -> bool:
        with self._lock:
            self._prune(now)
            return len(self._items) >= self.capacity

    def add(self, key: str, value: T, expires: float, now: float) -> None:
        """Remember `key` until `expires`; a key already remembered keeps its first entry."""
        with self._lock:
            self._prune(now)
            if key in self._items:
                return
            while len(self._items) >= self.capacity:
                _, oldest = heapq.heappop(self._expiries)
                del self._items[oldest]
            self._items[key] = (expires, value)
            heapq.heappush(self._expiries, (expires, key))

    def _prune(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, key = heapq.heappop(self._expiries)
            del self._items[key]


class StreamTokens:
    """Issues and checks the tokens that tie a media stream to a call we answered."""

    def __init__(self, secret: bytes, ttl_s: float = 600.0, memory: int = TOKEN_MEMORY) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._used: ExpiringMemory[None] = ExpiringMemory(memory)  # MACs
        self._placed: ExpiringMemory[str] = ExpiringMemory(memory)  # outbound ref → CallSid
        self._answered: ExpiringMemory[None] = ExpiringMemory(memory)  # CallSids

    def issue(self, subject: str, payload: str = "", now: float | None = None) -> str:
        """A token for `subject` (the CallSid, or an outbound call's reference), also
        vouching for `payload` (per-call settings that travel beside it)."""
        expires = int(_now(now) + self.ttl_s)
        return f"{expires}.{self._mac(subject, expires, payload)}"

    def issue_once(self, call_sid: str, payload: str = "", now: float | None = None) -> str | None:
        """`issue` for an inbound call, or None if this machine already answered the call
        (its voice webhook, or a stream for it, was seen here in the last day): a replayed
        webhook must not mint a second token for a call that is live or over."""
        moment = _now(now)
        if self._answered.knows(call_sid, moment):
            return None
        self._answered.add(call_sid, None, moment + ANSWERED_MEMORY_S, moment)
        return self.issue(call_sid, payload, moment)

    def placed(self, reference: str, call_sid: str, now: float | None = None) -> None:
        """Twilio gave the outbound call `reference` this CallSid: only it may use the token."""
        moment = _now(now)
        self._placed.add(reference, call_sid, moment + self.ttl_s, moment)

    def verify(
        self, token: str | None, subject: str, payload: str = "", now: float | None = None
    ) -> str:
        """Raise `InvalidToken` with the reason unless `token` was issued for `subject`
        and `payload`; return its MAC. Stateless: any machine of the deployment can."""
        if not token:
            raise InvalidToken("missing stream token")
        expires_text, _, mac = token.partition(".")
        if not _EXPIRY.fullmatch(expires_text) or not mac:
            raise InvalidToken("malformed stream token")
        expires = int(expires_text)
        if not hmac.compare_digest(mac, self._mac(subject, expires, payload)):
            raise InvalidToken("stream token does not match this call")
        if _now(now) > expires:
            raise InvalidToken("stream token expired")
        return mac

    def redeem(
        self,
        token: str | None,
        subject: str,
        call_sid: str,
        payload: str = "",
        now: float | None = None,
    ) -> None:
        """`verify`, then spend the token on `call_sid`'s stream: it opens one stream, ever
        (remembered on this machine until it expires), and an outbound call's token only
        for the CallSid Twilio gave that call."""
        moment = _now(now)
        mac = self.verify(token, subject, payload, moment)
        placed = self._placed.get(subject, moment)
        if placed is not None and placed != call_sid:
            raise InvalidToken("stream token belongs to another call")
        if self._used.knows(mac, moment):
            raise InvalidToken("stream token already used")
        if self._used.full(moment):  # never forget a live token: refuse instead
            raise InvalidToken("too many streams started recently")
        self._used.add(mac, None, moment + self.ttl_s, moment)
        self._answered.add(call_sid, None, moment + ANSWERED_MEMORY_S, moment)

    def _mac(self, subject: str, expires: int, payload: str) -> str:
        message = f"{subject}|{expires}|{payload}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]


def _now(now: float | None) -> float:
    return time.time() if now is None else now
