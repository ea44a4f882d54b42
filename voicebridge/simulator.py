"""A Twilio caller simulator: a real WebSocket client that behaves like Twilio Media Streams.

It exists for two reasons. Users can try a deployment without a phone
(``voicebridge simulate --wav question.wav``), and the end-to-end tests drive the real server
through the same door Twilio uses, so what passes here is what a phone call would exercise.

Fidelity matters more than convenience, because the bugs worth catching are timing bugs:

* Caller audio is sent the way Twilio sends it: one 20 ms μ-law frame every 20 ms of real
  time, paced against an absolute clock, with silence between utterances (or, optionally,
  timestamp gaps where Twilio omits silence). All numeric-looking fields are strings.
* Agent audio is *played*, not just collected: payloads join a queue drained at 8 bytes/ms.
  A ``mark`` is echoed only when the audio queued before it has played, and a ``clear``
  drops the queue and echoes pending marks at once. This is what lets a test check that a
  barge-in truncates the assistant's item at the ms the caller actually heard.
* Anything Twilio would reject (unknown events, extra fields, binary frames) is recorded in
  :attr:`CallerSimulator.violations` and otherwise ignored, as Twilio ignores it (with
  warning 31951/31950), so a bridge that gets the protocol wrong is silent here too.

Protocol reference: ``PROTOCOL-NOTES.md`` (Twilio messages section).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import secrets
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Data

from voicebridge.audio import write_ulaw_wav
from voicebridge.ulaw import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, SAMPLE_RATE, SILENCE_BYTE

__all__ = [
    "CallEndedError",
    "CallerSimulator",
    "ClearRecord",
    "MarkEcho",
    "SimulationSummary",
    "Utterance",
    "Violation",
    "new_sid",
    "run_simulation",
]

logger = logging.getLogger(__name__)

FRAME_S: Final = FRAME_MS / 1000
#: Twilio warning codes, used as :attr:`Violation.code`.
TWILIO_INVALID_MESSAGE: Final = 31951
TWILIO_BINARY_MESSAGE: Final = 31950

_SILENCE_FRAME: Final = bytes([SILENCE_BYTE]) * FRAME_BYTES
_MEDIA_FORMAT: Final = {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1}
# The only server → Twilio messages, with their exact key sets.
_SERVER_SHAPES: Final[dict[str, tuple[frozenset[str], str | None, frozenset[str]]]] = {
    "media": (frozenset({"event", "streamSid", "media"}), "media", frozenset({"payload"})),
    "mark": (frozenset({"event", "streamSid", "mark"}), "mark", frozenset({"name"})),
    "clear": (frozenset({"event", "streamSid"}), None, frozenset()),
}


def new_sid(prefix: str) -> str:
    """A Twilio-style 34-character SID: two-letter prefix + 32 hex digits (``CA…``, ``MZ…``)."""
    return prefix + secrets.token_hex(16)


class CallEndedError(ConnectionError):
    """The call ended (socket closed) before what was awaited could happen."""


@dataclass(frozen=True, slots=True)
class Violation:
    """A message Twilio would have rejected. ``code`` is Twilio's warning code."""

    time: float
    code: int
    message: str
    raw: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}: {self.raw[:200]}"


@dataclass(frozen=True, slots=True)
class ClearRecord:
    """A ``clear`` from the server, as the caller experienced it.

    ``utterance_played_ms`` is how long the agent had been audible in the current utterance
    when it was cut off (the number a correct ``conversation.item.truncate`` should match).
    ``was_playing`` is False when the clear arrived while nothing was audible, in which case
    it cut nothing off. ``dropped_ms`` is queued audio the caller never heard.
    """

    time: float
    utterance_played_ms: int
    dropped_ms: int
    was_playing: bool
    marks_flushed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MarkEcho:
    """A mark echoed back to the server. ``cleared``: flushed by a ``clear``, not played."""

    time: float
    name: str
    cleared: bool


@dataclass(slots=True)
class Utterance:
    """One stretch of agent speech as heard by the caller (updated live while it plays).

    It starts when audio starts playing after the line was idle, and ends when the queue
    runs dry, is cleared, or the call ends. ``end`` is None while audio is playing; after a
    dry queue it holds the time the last byte played, but is reopened if more audio arrives
    within the simulator's ``utterance_gap_s`` (an underrun is not a new utterance).
    ``interrupted`` means a ``clear`` cut it off while audible; ``ended_by`` says how it ended.
    """

    start: float
    end: float | None = None
    played_bytes: int = 0
    interrupted: bool = False
    ended_by: Literal["drained", "clear", "close"] | None = None

    @property
    def played_ms(self) -> int:
        return self.played_bytes // BYTES_PER_MS

    @property
    def open(self) -> bool:
        return self.end is None


@dataclass(slots=True)
class _Speech:
    """Caller audio waiting to be sent. ``silent`` chunks become gaps if silence is omitted."""

    data: bytes
    silent: bool
    done: asyncio.Future[float]
    pos: int = 0


@dataclass(slots=True)
class _Mark:
    name: str


@dataclass(slots=True)
class _Outgoing:
    """A message for the writer task; ``sequenceNumber`` is added at send time."""

    message: dict[str, Any]
    sequenced: bool = True
    sent: asyncio.Future[None] | None = None


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    """What :func:`run_simulation` observed."""

    heard_ms: int
    utterances: int
    interruptions: int
    greeting_ms: int
    reply_ms: int
    reply_latency_ms: int | None
    close_code: int | None
    closed_by: str | None
    violations: tuple[str, ...] = field(default_factory=tuple)


class CallerSimulator:
    """One simulated phone call over a Twilio Media Streams WebSocket.

    Use as ``async with CallerSimulator(url) as sim:``; entering connects and sends
    ``connected`` + ``start``, leaving hangs up (``stop`` + close) if the call is still up.
    All times are ``time.monotonic()`` seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        account_sid: str | None = None,
        custom_parameters: Mapping[str, str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        tracks: Sequence[str] = ("inbound",),
        send_silence: bool = True,
        utterance_gap_s: float = 0.2,
        open_timeout: float = 10.0,
        proxy: str | Literal[True] | None = None,
    ) -> None:
        """Describe the call; nothing happens until the context is entered.

        ``custom_parameters`` are the ``<Parameter>`` values of the ``<Stream>`` TwiML.
        ``send_silence=False`` omits all-silence frames (timestamp gaps, as Twilio sometimes
        does). ``utterance_gap_s`` is how long the playback queue may run dry without ending
        the current agent utterance: a bridge that forwards audio at exactly real time can
        underrun for a few ms without the agent having stopped talking. ``proxy`` is passed to
        websockets (None = connect directly, as Twilio does).
        """
        self.url = url
        self.call_sid = call_sid or new_sid("CA")
        self.stream_sid = stream_sid or new_sid("MZ")
        self.account_sid = account_sid or new_sid("AC")
        self.custom_parameters: dict[str, str] = dict(custom_parameters or {})
        self.extra_headers: dict[str, str] = dict(extra_headers or {})
        self.tracks: list[str] = list(tracks)
        self.send_silence = send_silence
        self.utterance_gap_s = utterance_gap_s
        self._open_timeout = open_timeout
        self._proxy = proxy

        # --- records (public, read by tests) ---
        #: All agent audio actually played, in order (μ-law).
        self.heard = bytearray()
        #: Every text message from the server, parsed, with its arrival time.
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.clears: list[ClearRecord] = []
        self.marks_echoed: list[MarkEcho] = []
        self.utterances: list[Utterance] = []
        self.violations: list[Violation] = []
        #: When agent audio first started playing.
        self.first_audio_at: float | None = None
        #: When ``start`` was sent (timestamp 0 of the media stream).
        self.started_at: float | None = None
        #: When the last frame of the most recent ``say()`` was sent.
        self.last_speech_sent_at: float | None = None
        #: Media frames sent / speech frames among them.
        self.frames_sent = 0
        self.speech_frames_sent = 0
        #: Agent audio still queued when the socket closed (Twilio ends the stream with it).
        self.dropped_at_close_ms = 0
        #: Set when the socket is closed (by either side); see close_code / closed_by.
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: Literal["caller", "server"] | None = None

        # --- connection / tasks ---
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sender: asyncio.Task[None] | None = None
        self._playback: asyncio.Task[None] | None = None
        self._out: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._seq = 0
        self._chunk = 0
        self._hanging_up = False
        self._task_error: BaseException | None = None

        # --- caller speech queue ---
        self._speech: deque[_Speech] = deque()

        # --- agent playback model ---
        self._queue: deque[bytes | _Mark] = deque()
        self._queued_bytes = 0
        self._seg_origin: float | None = None  # start of the current continuous playback
        self._seg_played = 0  # bytes played since _seg_origin
        self._idle_since = time.monotonic()
        self._utt: Utterance | None = None  # current utterance (playing or within the gap)
        self._audio_arrived = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self.closed.is_set():
                await self.hang_up()
        finally:
            await self._cancel_tasks()
            if self._ws is not None:
                await self._ws.close()  # no-op if already closed; covers a failed task
        if self._task_error is not None and exc is None:
            raise RuntimeError("caller simulator task failed") from self._task_error

    async def connect(self) -> None:
        """Open the WebSocket, send ``connected`` and ``start``, start the media clock."""
        if self._ws is not None:
            raise RuntimeError("already connected")
        self._ws = await connect(
            self.url,
            additional_headers=self.extra_headers or None,
            open_timeout=self._open_timeout,
            proxy=self._proxy,
        )
        logger.info("simulated call %s connected to %s", self.call_sid, self.url)
        self._idle_since = time.monotonic()
        self._spawn(self._writer_loop(), "writer")
        self._spawn(self._receive_loop(), "receiver")
        self._enqueue({"event": "connected", "protocol": "Call", "version": "1.0.0"}, seq=False)
        self.started_at = time.monotonic()
        self._enqueue(
            {
                "event": "start",
                "streamSid": self.stream_sid,
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": list(self.tracks),
                    "customParameters": dict(self.custom_parameters),
                    "mediaFormat": dict(_MEDIA_FORMAT),
                },
            }
        )
        self._sender = self._spawn(self._send_loop(self.started_at), "sender")
        self._playback = self._spawn(self._playback_loop(), "playback")

    async def hang_up(self) -> None:
        """The caller hangs up: stop sending media, send ``stop``, close the socket.

        Idempotent; does nothing if the server already closed the call.
        """
        if self._ws is None or self.closed.is_set() or self._hanging_up:
            return
        self._hanging_up = True
        for task in (self._sender, self._playback):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._end_playback(time.monotonic(), reason="close")
        self._fail_speech()
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(
            {
                "event": "stop",
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            },
            sent=sent,
        )
        with contextlib.suppress(ConnectionClosed, CallEndedError):
            await asyncio.wait_for(sent, timeout=5)
        await self._ws.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout=5)
        logger.info("simulated call %s hung up", self.call_sid)

    async def wait_closed(self, timeout: float | None = None) -> int | None:
        """Wait until the socket is closed (typically by the server); return the close code."""
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return self.close_code

    # ------------------------------------------------------------------ caller side

    def enqueue_speech(self, audio: bytes | bytearray) -> asyncio.Future[float]:
        """Queue caller audio (μ-law 8 kHz) behind anything already queued; don't wait.

        The future resolves with the time its last frame was sent. Use this when a test must
        react to the server while the caller is still talking (barge-in).
        """
        return self._queue_speech(bytes(audio), silent=False)

    async def say(self, audio: bytes | bytearray) -> float:
        """Speak ``audio`` (μ-law 8 kHz) in real time; return when its last frame was sent.

        Returns the send time of the last frame (the natural start for measuring latency).
        """
        return await self.enqueue_speech(audio)

    async def pause(self, seconds: float) -> None:
        """Stay silent for ``seconds`` (after anything already queued)."""
        nbytes = round(seconds * SAMPLE_RATE)
        await self._queue_speech(bytes([SILENCE_BYTE]) * nbytes, silent=True)

    async def send_dtmf(self, digit: str) -> None:
        """Send a keypress as Twilio does (``dtmf`` event on the inbound track)."""
        self._require_open()
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "dtmf": {"track": "inbound_track", "digit": digit},
            },
            sent=sent,
        )
        await sent

    # ------------------------------------------------------------------ waiting

    @property
    def is_playing(self) -> bool:
        """Agent audio is audible right now."""
        return self._seg_origin is not None

    @property
    def queued_ms(self) -> int:
        """Agent audio received but not yet played."""
        return self._queued_bytes // BYTES_PER_MS

    @property
    def heard_ms(self) -> int:
        return len(self.heard) // BYTES_PER_MS

    async def wait_for_agent_audio(self, timeout: float | None = None) -> Utterance:
        """Wait until agent audio is playing (returns at once if it already is).

        Returns the utterance being played. Raises TimeoutError, or CallEndedError if the
        call ends first.
        """
        count = len(self.utterances)
        await self._wait_until(lambda: self.is_playing or len(self.utterances) > count, timeout)
        return self.utterances[-1]

    async def wait_until_agent_quiet(
        self, timeout: float | None = None, *, quiet_s: float = 0.5
    ) -> None:
        """Wait until nothing has played for ``quiet_s`` seconds (or the call has ended)."""
        async with asyncio.timeout(timeout):
            while not self.closed.is_set():
                if self.is_playing:
                    await self._wait_change(None)
                    continue
                remaining = quiet_s - (time.monotonic() - self._idle_since)
                if remaining <= 0:
                    return
                await self._wait_change(remaining)

    async def wait_for_clear(self, timeout: float | None = None) -> ClearRecord:
        """Wait for the next ``clear`` from the server and return its record."""
        count = len(self.clears)
        await self._wait_until(lambda: len(self.clears) > count, timeout)
        return self.clears[count]

    async def wait_for_utterances(self, count: int, timeout: float | None = None) -> None:
        """Wait until ``count`` agent utterances have started."""
        await self._wait_until(lambda: len(self.utterances) >= count, timeout)

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.closed.is_set():
                    raise CallEndedError(
                        f"call ended (code {self.close_code}, by {self.closed_by})"
                    )
                await self._wait_change(None)

    async def _wait_change(self, timeout: float | None) -> None:
        """Sleep until the state changes (or ``timeout`` passes)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------------ tasks

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"sim-{name}-{self.call_sid}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._task_error is None:
            # A bug in the simulator itself, not in the server: surface it, don't hang.
            logger.error("caller simulator task %s failed", task.get_name(), exc_info=exc)
            self._task_error = exc
            self._mark_closed(None, f"simulator error: {exc!r}")

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _require_open(self) -> None:
        if self._ws is None:
            raise RuntimeError("not connected")
        if self.closed.is_set() or self._hanging_up:
            raise CallEndedError("call has ended")

    def _enqueue(
        self,
        message: dict[str, Any],
        *,
        seq: bool = True,
        sent: asyncio.Future[None] | None = None,
    ) -> None:
        self._out.put_nowait(_Outgoing(message, seq, sent))

    async def _writer_loop(self) -> None:
        """Single writer, so sequence numbers go out in order whoever produced the message."""
        assert self._ws is not None
        pending: _Outgoing | None = None
        try:
            while True:
                pending = await self._out.get()
                msg = pending.message
                if pending.sequenced:
                    self._seq += 1
                    # Twilio puts sequenceNumber right after event; key order is cosmetic.
                    msg = {"event": msg["event"], "sequenceNumber": str(self._seq)} | msg
                await self._ws.send(json.dumps(msg, separators=(",", ":")))
                if pending.sent is not None and not pending.sent.done():
                    pending.sent.set_result(None)
                pending = None
        except ConnectionClosed:
            exc = CallEndedError("socket closed")
            if pending is not None and pending.sent is not None and not pending.sent.done():
                pending.sent.set_exception(exc)
            while not self._out.empty():
                item = self._out.get_nowait()
                if item.sent is not None and not item.sent.done():
                    item.sent.set_exception(exc)

    async def _send_loop(self, t0: float) -> None:
        """Send one 20 ms frame per 20 ms, against the absolute clock started at ``t0``.

        Frame k covers [20k, 20k+20) ms of the stream and, like a real capture, is sent once
        it is complete (at t0 + 20(k+1) ms). A late loop catches up instead of drifting.
        """
        k = 0
        while True:
            delay = t0 + (k + 1) * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            payload, has_speech, finished = self._next_frame()
            if has_speech or self.send_silence:
                self._chunk += 1
                self.frames_sent += 1
                self.speech_frames_sent += has_speech
                self._enqueue(
                    {
                        "event": "media",
                        "streamSid": self.stream_sid,
                        "media": {
                            "track": "inbound",
                            "chunk": str(self._chunk),
                            "timestamp": str(k * FRAME_MS),
                            "payload": base64.b64encode(payload).decode("ascii"),
                        },
                    }
                )
            if finished:
                now = time.monotonic()
                for item in finished:
                    if not item.silent:
                        self.last_speech_sent_at = now
                    if not item.done.done():
                        item.done.set_result(now)
            k += 1

    def _queue_speech(self, data: bytes, *, silent: bool) -> asyncio.Future[float]:
        self._require_open()
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._speech.append(_Speech(data, silent, fut))
        return fut

    def _next_frame(self) -> tuple[bytes, bool, list[_Speech]]:
        """Take the next 160 bytes of queued caller audio, padding with silence."""
        if not self._speech:
            return _SILENCE_FRAME, False, []
        parts: list[bytes] = []
        need = FRAME_BYTES
        has_speech = False
        finished: list[_Speech] = []
        while need and self._speech:
            item = self._speech[0]
            take = item.data[item.pos : item.pos + need]
            item.pos += len(take)
            need -= len(take)
            parts.append(take)
            has_speech = has_speech or not item.silent
            if item.pos >= len(item.data):
                finished.append(self._speech.popleft())
        if need:
            parts.append(_SILENCE_FRAME[:need])
        return b"".join(parts), has_speech, finished

    def _fail_speech(self) -> None:
        while self._speech:
            item = self._speech.popleft()
            if not item.done.done():
                item.done.set_exception(CallEndedError("call ended before the audio was sent"))

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                self._on_message(raw)
        except ConnectionClosed:
            pass
        self._mark_closed(self._ws.close_code, self._ws.close_reason)

    def _mark_closed(self, code: int | None, reason: str | None) -> None:
        if self.closed.is_set():
            return
        now = time.monotonic()
        self.close_code = code
        self.close_reason = reason
        self.closed_by = "caller" if self._hanging_up else "server"
        if self._sender is not None:
            self._sender.cancel()
        if self._playback is not None:
            self._playback.cancel()
        # Twilio ends <Connect><Stream> when the socket closes; unplayed audio is lost.
        self._end_playback(now, reason="close")
        self._fail_speech()
        self.closed.set()
        self._notify()
        logger.info("simulated call %s closed by %s (code %s)", self.call_sid, self.closed_by, code)

    async def _playback_loop(self) -> None:
        """Drive playback in real time: wake every 20 ms, or exactly when a mark is due."""
        while True:
            if self._seg_origin is None:
                self._audio_arrived.clear()
                await self._audio_arrived.wait()
                continue
            now = time.monotonic()
            wake = self._next_wakeup(now)
            await asyncio.sleep(max(wake - now, 0.001))
            self._advance(time.monotonic())
            self._notify()

    def _next_wakeup(self, now: float) -> float:
        origin = self._seg_origin
        assert origin is not None
        ticks = math.floor((now - origin) / FRAME_S) + 1
        wake = origin + ticks * FRAME_S
        ahead = 0
        for entry in self._queue:
            if isinstance(entry, _Mark):
                wake = min(wake, origin + (self._seg_played + ahead) / SAMPLE_RATE)
                break
            ahead += len(entry)
        return wake

    # ------------------------------------------------------------------ playback model

    def _advance(self, now: float) -> None:
        """Play queued agent audio up to ``now``; echo marks reached; notice a dry queue."""
        while self._seg_origin is not None:
            due = int((now - self._seg_origin) * SAMPLE_RATE) - self._seg_played
            head = self._queue[0] if self._queue else None
            if isinstance(head, _Mark):
                self._queue.popleft()
                self._echo_mark(head.name, now, cleared=False)
                continue
            if head is None:
                # Ran dry: the last byte finished playing at origin + played / rate.
                dry_at = self._seg_origin + self._seg_played / SAMPLE_RATE
                self._seg_origin = None
                self._idle_since = dry_at
                if self._utt is not None:
                    self._utt.end = dry_at
                    self._utt.ended_by = "drained"
                break
            if due <= 0:
                break
            take = head[:due]
            if len(take) < len(head):
                self._queue[0] = head[len(take) :]
            else:
                self._queue.popleft()
            self._queued_bytes -= len(take)
            self._seg_played += len(take)
            self.heard += take
            if self._utt is not None:
                self._utt.played_bytes += len(take)

    def _on_agent_audio(self, audio: bytes, now: float) -> None:
        self._advance(now)
        if not audio:
            return
        self._queue.append(audio)
        self._queued_bytes += len(audio)
        if self._seg_origin is not None:
            return
        self._seg_origin = now
        self._seg_played = 0
        utt = self._utt
        if utt is not None and utt.end is not None and now - utt.end <= self.utterance_gap_s:
            utt.end = None  # a brief underrun, not a new utterance
            utt.ended_by = None
        else:
            self._utt = Utterance(start=now)
            self.utterances.append(self._utt)
            if self.first_audio_at is None:
                self.first_audio_at = now
        self._audio_arrived.set()

    def _on_mark(self, name: str, now: float) -> None:
        self._advance(now)
        if self._seg_origin is None:
            self._echo_mark(name, now, cleared=False)  # nothing queued before it
        else:
            self._queue.append(_Mark(name))

    def _on_clear(self, now: float) -> None:
        self._advance(now)
        was_playing = self._seg_origin is not None
        # An utterance still within its gap counts: the clear landed in a brief underrun.
        utt = self._utt
        in_utterance = utt is not None and (
            utt.end is None or now - utt.end <= self.utterance_gap_s
        )
        played_ms = utt.played_ms if utt is not None and in_utterance else 0
        dropped = self._queued_bytes
        flushed = self._end_playback(now, reason="clear")
        self.clears.append(
            ClearRecord(
                time=now,
                utterance_played_ms=played_ms,
                dropped_ms=dropped // BYTES_PER_MS,
                was_playing=was_playing,
                marks_flushed=tuple(flushed),
            )
        )

    def _end_playback(self, now: float, *, reason: Literal["clear", "close"]) -> list[str]:
        """Drop queued audio; echo pending marks (on clear); close the current utterance."""
        self._advance(now)
        flushed: list[str] = []
        while self._queue:
            entry = self._queue.popleft()
            if isinstance(entry, _Mark):
                flushed.append(entry.name)
                if reason == "clear":
                    self._echo_mark(entry.name, now, cleared=True)
        if reason == "close":
            self.dropped_at_close_ms += self._queued_bytes // BYTES_PER_MS
        was_playing = self._seg_origin is not None
        self._queued_bytes = 0
        if was_playing:
            self._idle_since = now
        self._seg_origin = None
        utt = self._utt
        if utt is not None and utt.end is None:
            utt.end = now
            utt.interrupted = was_playing and reason == "clear"
            utt.ended_by = reason
        self._utt = None  # whatever plays next is a new utterance
        return flushed

    def _echo_mark(self, name: str, now: float, *, cleared: bool) -> None:
        self.marks_echoed.append(MarkEcho(now, name, cleared))
        if self.closed.is_set() or self._hanging_up:
            return
        self._enqueue({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    # ------------------------------------------------------------------ inbound messages

    def _on_message(self, raw: Data) -> None:
        now = time.monotonic()
        if isinstance(raw, bytes | bytearray | memoryview):
            self._violation(now, TWILIO_BINARY_MESSAGE, "binary frame", repr(bytes(raw)[:64]))
            return
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError:
            self._violation(now, TWILIO_INVALID_MESSAGE, "not JSON", raw)
            return
        if not isinstance(msg, dict):
            self._violation(now, TWILIO_INVALID_MESSAGE, "not a JSON object", raw)
            return
        self.received.append((now, msg))
        problem = self._check_shape(msg)
        if problem is not None:
            self._violation(now, TWILIO_INVALID_MESSAGE, problem, raw)
            return
        event = msg["event"]
        if event == "media":
            try:
                audio = base64.b64decode(msg["media"]["payload"], validate=True)
            except (binascii.Error, ValueError):
                self._violation(now, TWILIO_INVALID_MESSAGE, "payload is not base64", raw)
                return
            self._on_agent_audio(audio, now)
        elif event == "mark":
            self._on_mark(msg["mark"]["name"], now)
        else:
            self._on_clear(now)
        self._notify()

    def _check_shape(self, msg: dict[str, Any]) -> str | None:
        """Why Twilio would reject ``msg``, or None if it is a valid server message."""
        event = msg.get("event")
        if not isinstance(event, str) or event not in _SERVER_SHAPES:
            return f"unknown event {event!r}"
        keys, inner_key, inner_keys = _SERVER_SHAPES[event]
        if set(msg) != keys:
            extra = sorted(set(msg) - keys)
            missing = sorted(keys - set(msg))
            return f"{event}: unexpected fields {extra}, missing {missing}"
        if msg["streamSid"] != self.stream_sid:
            return f"{event}: streamSid {msg['streamSid']!r} is not {self.stream_sid!r}"
        if inner_key is not None:
            inner = msg[inner_key]
            if not isinstance(inner, dict) or set(inner) != inner_keys:
                got = sorted(inner) if isinstance(inner, dict) else type(inner).__name__
                return f"{event}.{inner_key}: expected fields {sorted(inner_keys)}, got {got}"
            for key in inner_keys:
                if not isinstance(inner[key], str):
                    return f"{event}.{inner_key}.{key} must be a string"
        return None

    def _violation(self, now: float, code: int, message: str, raw: str) -> None:
        logger.warning("protocol violation (Twilio %d): %s", code, message)
        self.violations.append(Violation(now, code, message, raw))


async def run_simulation(
    url: str,
    audio: bytes,
    wav_out: str | Path | None = None,
    *,
    parameters: Mapping[str, str] | None = None,
    call_sid: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    greeting_timeout: float = 5.0,
    reply_timeout: float = 30.0,
    quiet_s: float = 1.5,
    watch: Callable[[CallerSimulator], Coroutine[Any, Any, None]] | None = None,
) -> SimulationSummary:
    """Place one simulated call: hear the greeting, say ``audio`` (μ-law 8 kHz, e.g. from
    :func:`voicebridge.audio.read_audio_as_ulaw`), hear the reply, hang up.

    Backs ``voicebridge simulate``. Waits up to ``greeting_timeout`` for a greeting (none is
    fine), lets it finish, speaks the file, then waits up to ``reply_timeout`` for the agent
    to start answering and until it has been quiet for ``quiet_s`` (so a reply in several
    parts, e.g. around a tool call, is heard whole). Everything the agent said is written to
    ``wav_out`` as a 16-bit PCM 8 kHz WAV. ``watch`` runs beside the call (e.g. to show
    its progress) and is cancelled when it ends.
    """
    greeting_ms = 0
    reply_ms = 0
    latency_ms: int | None = None
    async with CallerSimulator(
        url, call_sid=call_sid, custom_parameters=parameters, extra_headers=extra_headers
    ) as sim:
        watcher = asyncio.create_task(watch(sim)) if watch is not None else None
        try:
            try:
                greeting = await sim.wait_for_agent_audio(greeting_timeout)
            except TimeoutError:
                logger.info("no greeting within %.1f s", greeting_timeout)
            else:
                await sim.wait_until_agent_quiet(reply_timeout, quiet_s=quiet_s)
                greeting_ms = greeting.played_ms
            heard_before = len(sim.heard)
            spoke_at = await sim.say(audio)
            try:
                reply = await sim.wait_for_agent_audio(reply_timeout)
            except TimeoutError:
                logger.warning("no reply within %.1f s", reply_timeout)
            else:
                latency_ms = round((reply.start - spoke_at) * 1000)
                await sim.wait_until_agent_quiet(reply_timeout, quiet_s=quiet_s)
            reply_ms = (len(sim.heard) - heard_before) // BYTES_PER_MS
        except CallEndedError:
            logger.info("the server ended the call")
        except TimeoutError:
            logger.warning("the agent was still talking after %.1f s", reply_timeout)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
    if wav_out is not None:
        write_ulaw_wav(wav_out, sim.heard)
    return SimulationSummary(
        heard_ms=sim.heard_ms,
        utterances=len(sim.utterances),
        interruptions=sum(1 for u in sim.utterances if u.interrupted),
        greeting_ms=greeting_ms,
        reply_ms=reply_ms,
        reply_latency_ms=latency_ms,
        close_code=sim.close_code,
        closed_by=sim.closed_by,
        violations=tuple(str(v) for v in sim.violations),
    )


def ring(
    server_url: str,
    *,
    call_sid: str,
    caller: str,
    called: str,
    auth_token: str | None = None,
    public_base_url: str | None = None,
) -> dict[str, str]:
    """Do what Twilio does when a call comes in: POST the voice webhook, signed as Twilio
    signs it (over the public URL, with the auth token), and return the `<Parameter>`s of
    the stream its TwiML opens. Blocking; raises `ValueError` if no stream is opened."""
    path = "/twilio/voice"
    form = {"CallSid": call_sid, "From": caller, "To": called, "Direction": "inbound"}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth_token:
        signed_url = f"{(public_base_url or server_url).rstrip('/')}{path}"
        validator = RequestValidator(auth_token)
        headers["X-Twilio-Signature"] = validator.compute_signature(signed_url, form)
    request = urllib.request.Request(  # noqa: S310 - the user's own server, http(s) only
        f"{server_url.rstrip('/')}{path}",
        data=urllib.parse.urlencode(form).encode(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        document = response.read().decode()
    try:
        twiml = ET.fromstring(document)  # noqa: S314 - the user's own server
    except ET.ParseError:
        raise ValueError("its voice webhook answered with something other than TwiML") from None
    stream = twiml.find("Connect/Stream")
    if stream is None:
        said = " ".join(say.text or "" for say in twiml.iter("Say")).strip()
        raise ValueError(f"it hung up instead of opening a stream, saying {said!r}")
    return {str(p.get("name")): str(p.get("value")) for p in stream.findall("Parameter")}
